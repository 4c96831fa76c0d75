"""Data-parallel runs on CPU: 2 processes (torchrun, gloo) against 1 on a tiny random Llama with the real tokenizer."""

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from workbench.distill import distributed
from workbench.distill.checkpoint import save_json
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import iter_events
from workbench.distill.run import Run
from workbench.distill.run_dir import RunDir

# batch 3 over 2 ranks: slices of 2 and 1 rows, so per-token averaging across unequal slices is exercised
STAGES = [StageConfig("layerwise", losses={"matrix": 1.0, "hidden": 1.0}, tokens=2 * 3 * 32, batch_size=3,
                      seq_len=32, lr=1e-2),
          StageConfig("kd", losses={"kl": 1.0, "ce": 0.1}, train="all", tokens=4 * 3 * 32, batch_size=3, seq_len=32,
                      lr=1e-3, weight_decay=0.01)]
TOTAL_STEPS = 6


def tiny_config(teacher_dir, **kw) -> RunConfig:
    settings = dict(eval_every=4, eval_tokens=256, eval_window=64, checkpoint_every=2) | kw
    return RunConfig(teacher=teacher_dir, mixer="mamba2", keep_attention=[0], device="cpu", stages=STAGES, **settings)


def steps(out) -> list[dict]:
    return list(iter_events(out / "events.jsonl", "step"))


def run_two_processes(config: RunConfig, out, tmp_path, *flags: str) -> None:
    config_file = tmp_path / f"{out.name}.json"
    config_file.write_text(json.dumps(config.to_dict()))
    proc = subprocess.run([sys.executable, "-m", "workbench", "distill", "--config", str(config_file), "--out",
                           str(out), "--final-eval-tokens", "300", "--nproc", "2", *flags],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run" in proc.stdout and "--nproc-per-node=2" in proc.stdout
    assert proc.stdout.count('"ppl_ratio"') == 1, "only rank 0 prints the summary"


@pytest.fixture(scope="module")
def one_process(tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    summary = Run(tiny_config(tiny_teacher_dir), out, progress=False, final_eval_tokens=300).execute()
    assert not dist.is_initialized(), "a run outside torchrun must not create a process group"
    return out, summary


def assert_same_curve(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    assert [e["step"] for e in a] == [e["step"] for e in b]
    for x, y in zip(a, b):
        for key in [k for k in x if k.startswith("loss")]:
            assert y[key] == pytest.approx(x[key], rel=tol, abs=tol), (x["step"], key, x[key], y[key])
        assert x["tokens"] == y["tokens"] == 3 * 32


def assert_same_tensors(a: dict, b: dict, rtol=1e-4, atol=1e-4) -> None:
    """Equal up to reduction order: the all-reduce sums gradients in another order than one process does, and
    Adam divides by sqrt(v), so entries with tiny gradients move by up to ~1e-5..3e-5 differently in 6 steps at
    lr 1e-2 (measured); a wrong averaging of rows or ranks moves them by ~lr."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_follow_one_and_resume_on_one(mode, one_process, tiny_teacher_dir, tmp_path):
    single_out, single_summary = one_process
    out = tmp_path / mode
    run_two_processes(tiny_config(tiny_teacher_dir), out, tmp_path, *(["--fsdp"] if mode == "fsdp" else []))

    # same data per step, per-token averaging across ranks: the loss curve of one process
    two = steps(out)
    assert_same_curve(steps(single_out), two)
    # rank 0 alone writes: every event once, one lock holder, full checkpoints in the single-process layout
    events = [e["type"] for e in iter_events(out / "events.jsonl")]
    assert events.count("run_start") == events.count("run_end") == 1 and len(two) == TOTAL_STEPS
    start = next(iter_events(out / "events.jsonl", "run_start"))
    assert start["world_size"] == 2
    # fsdp shards the frozen teacher too (rank 0 holds about half of it); DDP replicates it
    share = start["teacher_parameters_on_rank"] / start["teacher_parameters"]
    assert share == 1.0 if mode == "ddp" else 0.45 < share < 0.55
    assert len(list(iter_events(out / "events.jsonl", "eval"))) == len(list(iter_events(single_out / "events.jsonl",
                                                                                          "eval")))
    assert not (out / "LOCK").exists()
    summary = RunDir.open(out).summary
    assert summary["ppl_student"] == pytest.approx(single_summary["ppl_student"], rel=1e-4)
    final_two, state = RunDir.open(out).latest_checkpoint()
    assert state["global_step"] == TOTAL_STEPS
    assert_same_tensors(RunDir.open(single_out).latest_checkpoint()[0], final_two)

    # as if killed after the step-4 checkpoint (mid-stage: AdamW moments saved): resume with 1 process
    run = RunDir.open(out)
    save_json(run.checkpoint_dir / "latest.json", {"step": 4, "name": "step-000000004"})
    Run.resume(out, progress=False).execute()
    resumed = next(iter_events(out / "events.jsonl", "resume"))
    assert resumed["step"] == 4 and resumed["world_size"] == 1
    after = steps(out)[TOTAL_STEPS:]
    assert [e["step"] for e in after] == [5, 6]
    assert_same_curve(steps(single_out)[4:], after)
    assert_same_tensors(RunDir.open(single_out).latest_checkpoint()[0], RunDir.open(out).latest_checkpoint()[0])

    # and back onto 2 processes from the same checkpoint (optimizer state sharded / replicated again)
    save_json(run.checkpoint_dir / "latest.json", {"step": 4, "name": "step-000000004"})
    proc = subprocess.run([sys.executable, "-m", "workbench", "distill", "--resume", str(out), "--nproc", "2",
                           *(["--fsdp"] if mode == "fsdp" else [])], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [e["step"] for e in steps(out)[TOTAL_STEPS + 2:]] == [5, 6]
    assert_same_curve(steps(single_out)[4:], steps(out)[TOTAL_STEPS + 2:])
    assert_same_tensors(RunDir.open(single_out).latest_checkpoint()[0], RunDir.open(out).latest_checkpoint()[0])


def test_split_rows_without_process_group_is_the_whole_batch():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.split_rows(5) == (0, 5)
    assert distributed.rank_device("cuda:3") == "cuda:3"  # one process: the device as given
