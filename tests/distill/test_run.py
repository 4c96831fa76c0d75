"""The distillation engine on a tiny random Llama teacher that uses the real tokenizer and the real corpus."""

import json
import subprocess
import sys
import time

import pytest
import torch

from workbench.distill import run as run_module
from workbench.distill.config import RunConfig, StageConfig, layer_group, parse_tokens
from workbench.distill.events import iter_events
from workbench.distill.run import NonFiniteLoss, Run
from workbench.distill.run_dir import RunDir


def tiny_config(teacher_dir, stages, **kw):
    settings = dict(eval_every=3, eval_tokens=512, eval_window=64, checkpoint_every=2, device="cpu") | kw
    return RunConfig(teacher=teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, **settings)


def test_parse_tokens():
    assert parse_tokens("20M") == 20_000_000 and parse_tokens("1.5k") == 1500 and parse_tokens("3B") == 3 * 10**9
    assert parse_tokens(77) == 77
    with pytest.raises(ValueError, match="k/M/B"):
        parse_tokens("lots")


def test_stage_validation_names_the_fix():
    with pytest.raises(ValueError, match="unknown loss terms"):
        StageConfig(losses={"kll": 1.0}).validate()
    with pytest.raises(ValueError, match="less than one step"):
        StageConfig(tokens=10).validate()


def test_the_layer_choice_is_said_once_and_old_configs_still_load():
    config = RunConfig(keep_attention=[0, 3])
    assert config.replaced_layers(5) == [1, 2, 4] and config.kept_layers(5) == [0, 3]
    assert RunConfig(replace=[4, 1]).replaced_layers(5) == [1, 4]
    assert RunConfig().replaced_layers(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="not both"):
        RunConfig(keep_attention=[0], replace=[1]).validate()
    with pytest.raises(ValueError, match=r"replace \[7\] out of range"):
        RunConfig(replace=[7]).replaced_layers(4)
    # config.json files hold both fields; written before they were exclusive, a file may set both: replace won then
    assert RunConfig.from_dict(RunConfig(keep_attention=[2]).to_dict()).replaced_layers(4) == [0, 1, 3]
    assert RunConfig.from_dict(RunConfig(replace=[2]).to_dict()).replaced_layers(4) == [2]
    both = RunConfig.from_dict(RunConfig().to_dict() | {"keep_attention": [0, 2], "replace": [1]})
    both.validate()
    assert both.replaced_layers(4) == [1]


def test_recipes_refuse_unknown_dials_and_name_layer_groups():
    from workbench.distill.recipes import recipe

    with pytest.raises(ValueError, match="recipe 'kd' has no dial 'seqlen'"):
        recipe("kd", tokens=1000, seqlen=64)
    with pytest.raises(ValueError, match="come from the run config"):
        recipe("mohawk", tokens=10**6, layers=[1, 2])
    stages = recipe("scavenging-hyena", tokens=10**6, seq_len=32, batch_size=2)
    assert [s.layer_group for s in stages] == [[0, 3], [1, 3], [2, 3], None]
    replaced = list(range(1, 30, 2))
    assert [s.layers_of(replaced) for s in stages] == [replaced[:5], replaced[5:10], replaced[10:], replaced]
    # fewer replaced layers than groups: one layer per group, first layers first
    assert [s.layers_of([10, 20]) for s in stages[:3]] == [[10], [10], [20]]
    assert [layer_group(list(range(4)), k, 3) for k in range(3)] == [[0], [1], [2, 3]]
    with pytest.raises(ValueError, match="not both"):
        StageConfig(layers=[1], layer_group=[0, 2]).validate()
    with pytest.raises(ValueError, match="0 <= k < n"):
        StageConfig(layer_group=[2, 2]).validate()


def test_three_stage_run_writes_events_checkpoints_and_summary(tiny_teacher_dir, tmp_path):
    stages = [StageConfig("matrix", losses={"matrix": 1.0}, tokens=4 * 2 * 32, batch_size=2, seq_len=32, lr=1e-2),
              StageConfig("hidden", losses={"hidden": 1.0}, tokens=4 * 2 * 32, batch_size=2, seq_len=32, lr=1e-2),
              StageConfig("kd", losses={"kl": 1.0, "ce": 0.1}, train="all", tokens=4 * 2 * 32, batch_size=2,
                          seq_len=32, lr=1e-3)]
    executed = Run(tiny_config(tiny_teacher_dir, stages), tmp_path / "run", progress=False, final_eval_tokens=600)
    summary = executed.execute()
    run = RunDir.open(tmp_path / "run")
    steps = list(iter_events(run.events_path, "step"))
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert [e["stage"] for e in steps] == ["matrix"] * 4 + ["hidden"] * 4 + ["kd"] * 4
    assert all("loss_matrix" in e for e in steps[:4]) and all({"loss_kl", "loss_ce"} <= set(e) for e in steps[8:])
    assert all(e["tokens"] == 64 and e["tokens_per_s"] > 0 and e["lr"] > 0 for e in steps)
    evals = list(iter_events(run.events_path, "eval"))
    assert evals and all(0 <= e["agreement"] <= 1 and e["kl"] >= 0 for e in evals)
    # the frozen teacher's side of the valid split, computed at the first evaluation and kept: the same every time
    kept = executed._valid_teacher
    assert len(evals) > 2 and len({e["ppl_teacher"] for e in evals}) == 1
    assert kept.hidden and kept.hits == (len(evals) - 1) * len(kept.hidden)
    assert run.summary == summary and summary["replaced"] == [1, 2, 3] and summary["steps"] == 12
    assert summary["ppl_ratio"] == pytest.approx(summary["ppl_student"] / summary["ppl_teacher"])
    # the run's last checkpoint, at the end of its last stage: the trained parameters without AdamW state (a resume
    # there starts a new optimizer), checkpoints inside a stage with it
    tensors, state = run.latest_checkpoint()
    assert state["global_step"] == 12 and state["stage_step"] == 0 and any(k.startswith("param/") for k in tensors)
    assert not any(k.startswith("opt/") for k in tensors)
    inside, inside_state, _ = run._read_checkpoint("step-000000010", "cpu")     # kept beside it: step 2 of stage 3
    assert inside_state["stage_step"] == 2 and any(k.startswith("opt/") for k in inside)
    # each stage's throughput and memory, in its stage_end event and in summary.json: the median rate of its steps
    # after the warm-up ones (4 steps: the 4th alone), FLOPs per token of what it trains, no MFU and the process's
    # RSS on a CPU
    (start,) = iter_events(run.events_path, "run_start")
    n_student, n_teacher = start["student_parameters"], start["teacher_parameters"]
    ends = list(iter_events(run.events_path, "stage_end"))
    assert [e["stage"] for e in ends] == ["matrix", "hidden", "kd"]
    for i, end in enumerate(ends):
        assert end["steps_timed"] == 1 and end["tokens_per_s"] == steps[4 * i + 3]["tokens_per_s"]
        assert end["mfu"] is None and end["peak_flops"] is None and end["peak_rss_gb"] > 0
        assert "peak_gpu_mem_gb" not in end
    assert ends[2]["flops_per_token"] == 6 * n_student + 2 * n_teacher                       # every parameter trained
    trained_mixers = (ends[0]["flops_per_token"] - 4 * n_student - 2 * n_teacher) / 2       # the mixers alone
    assert ends[1]["flops_per_token"] == ends[0]["flops_per_token"] and 0 < trained_mixers < n_student
    assert [s["stage"] for s in summary["stages"]] == ["matrix", "hidden", "kd"]
    for entry, end in zip(summary["stages"], ends):
        assert (entry["batch_size"], entry["seq_len"], entry["steps"]) == (2, 32, 4)
        assert {k: entry[k] for k in ("tokens_per_s", "flops_per_token", "peak_rss_gb", "mfu")} == \
               {k: end[k] for k in ("tokens_per_s", "flops_per_token", "peak_rss_gb", "mfu")}
    # the matrix stage moved the mixers towards the attention matrices
    first, last = steps[0]["loss_matrix"], steps[3]["loss_matrix"]
    assert last < first


def test_a_layer_group_is_resolved_on_the_built_student(tiny_teacher_dir, tmp_path, monkeypatch):
    from workbench.distill import step

    chosen = []
    stage_losses = step.stage_losses
    monkeypatch.setattr("workbench.distill.run.stage_losses",
                        lambda stage, teacher, student, blocks, mixers, *rest: chosen.append(
                            stage.layers_of(sorted(mixers))) or stage_losses(stage, teacher, student, blocks, mixers,
                                                                             *rest))
    stages = [StageConfig("group", losses={"hidden": 1.0}, layer_group=[1, 2], tokens=2 * 32, batch_size=2,
                          seq_len=32)]
    Run(tiny_config(tiny_teacher_dir, stages, eval_every=0), tmp_path / "run", progress=False,
        final_eval_tokens=64).execute()
    assert chosen == [[2, 3]]                                 # replaced 1, 2, 3: the second of two groups
    assert "loss_hidden" in next(iter_events(tmp_path / "run" / "events.jsonl", "step"))


def test_killed_run_resumes_without_lost_or_repeated_steps(tiny_teacher_dir, tmp_path):
    """Kill a CLI run right after its first checkpoint, resume it, compare with an uninterrupted run."""
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=8 * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    cfg = tiny_config(tiny_teacher_dir, stages, eval_every=0)
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "distill", "--config", str(config_file),
                             "--out", str(out), "--final-eval-tokens", "300"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "latest.json").exists():
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (out / "checkpoints" / "latest.json").exists(), "the run never wrote a checkpoint"
    Run.resume(out, progress=False).execute()
    steps = [e["step"] for e in iter_events(out / "events.jsonl", "step")]
    resumed_at = next(iter_events(out / "events.jsonl", "resume"))["step"]
    # steps after the checkpoint may have been logged before the kill; the resumed run repeats none it had saved
    assert sorted(set(steps)) == list(range(1, 9)) and steps[-1] == 8
    assert steps.count(resumed_at) == 1
    # same result as a run that was never interrupted
    Run(cfg, tmp_path / "straight", progress=False, final_eval_tokens=300).execute()
    a = RunDir.open(out).latest_checkpoint()[0]
    b = RunDir.open(tmp_path / "straight").latest_checkpoint()[0]
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_teacher_dir, tmp_path):
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=6 * 2 * 32, batch_size=2, seq_len=32, lr=1e9)]
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        Run(tiny_config(tiny_teacher_dir, stages, grad_clip=1e12), tmp_path / "nan", progress=False).execute()
    errors = list(iter_events(tmp_path / "nan" / "events.jsonl", "error"))
    assert errors and "lower the learning rate" in errors[0]["message"]


def test_compiled_layers_train_like_eager_ones(tiny_teacher_dir, tmp_path):
    """``RunConfig.compile`` fuses the MLPs and norms with inductor; the run's numbers stay those of the eager run."""
    from workbench.distill.step import compile_layers
    from workbench.teachers import load_teacher

    teacher = load_teacher(tiny_teacher_dir, device="cpu", progress=False)
    names = compile_layers(teacher.model)
    assert names == [f"{i}.{n}" for i in range(4) for n in ("mlp", "input_layernorm", "post_attention_layernorm")]
    stages = [StageConfig("kd", losses={"kl": 1.0}, train="all", tokens=2 * 2 * 32, batch_size=2, seq_len=32,
                          lr=1e-3)]
    runs = {}
    for compiled in (False, True):
        run = Run(tiny_config(tiny_teacher_dir, stages, compile=compiled, eval_every=0), tmp_path / str(compiled),
                  progress=False, final_eval_tokens=256)
        run.execute()
        runs[compiled] = [e["loss"] for e in iter_events(RunDir.open(tmp_path / str(compiled)).events_path, "step")]
    assert len(runs[True]) == 2
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)

    # evaluations run eagerly: a new evaluation shape compiles nothing (it would recompile every compiled layer)
    from torch._dynamo.utils import counters

    frames = counters["frames"]["total"]
    run._compare(run.valid_ids, 40, 80)
    assert counters["frames"]["total"] == frames


def test_device_auto_is_resolved(tiny_teacher_dir, tmp_path):
    """``device="auto"`` (the notebooks' and the CLI's default) picks the GPU when there is one, else the CPU."""
    stages = [StageConfig("kd", losses={"kl": 1.0}, train="all", tokens=2 * 32, batch_size=2, seq_len=32)]
    Run(tiny_config(tiny_teacher_dir, stages, device="auto", eval_every=0), tmp_path, progress=False,
        final_eval_tokens=64).execute()
    start = next(iter_events(RunDir.open(tmp_path).events_path, "run_start"))
    assert start["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_default_learning_rate_is_lower_only_for_mamba_in_llama_without_attention():
    from workbench.distill.recipes import default_lr

    assert default_lr("mamba-in-llama", 0) == 3e-4
    assert default_lr("mamba-in-llama", 8) == 1e-3
    assert default_lr("mohawk", 0) == default_lr("kd", 0) == 1e-3


def test_default_dials_raise_the_end_to_end_rate_where_it_was_measured(tmp_path, monkeypatch):
    from workbench.cli import main
    from workbench.distill.recipes import default_dials, full_dials

    assert default_dials("mamba-in-llama") == default_dials("mohawk") == {"e2e_lr_ratio": 1.0}
    assert default_dials("scavenging-hyena") == {"e2e_lr_ratio": 0.3}
    assert default_dials("kd") == default_dials("draft") == {}
    assert full_dials("mamba-in-llama") == {"align": 0.0, "e2e_lr_ratio": 0.1}
    assert full_dials("mamba-in-llama", e2e_lr_ratio=1.0) == {"align": 0.0, "e2e_lr_ratio": 1.0}
    with pytest.raises(KeyError, match="unknown recipe 'mamba'"):
        full_dials("mamba")
    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    common = ["--tokens", "4k", "--seq-len", "64", "--batch-size", "2"]
    for keep, flags, lrs in (([], [], [3e-4, 3e-4]), ([], ["--e2e-lr-ratio", "0.1"], [3e-4, 3e-5]),
                             (["--keep-attention", "0,2"], [], [1e-3, 1e-3]),
                             (["--keep-attention", "0,2"], ["--e2e-lr-ratio", "0.1"], [1e-3, 1e-4])):
        assert main(["distill", "--recipe", "mamba-in-llama", *keep, *flags, *common,
                     "--out", str(tmp_path / f"run{len(started)}")]) == 0
        assert [s.lr for s in started[-1].stages] == pytest.approx(lrs)


def test_the_end_to_end_stage_learning_rate_is_a_dial_of_the_staged_recipes(tmp_path, monkeypatch):
    from workbench.cli import main
    from workbench.distill.recipes import recipe

    for name in ("mohawk", "mamba-in-llama", "scavenging-hyena"):
        default = recipe(name, tokens=10**6, lr=3e-4)
        higher = recipe(name, tokens=10**6, lr=3e-4, e2e_lr_ratio=0.5)
        assert default[-1].train == "all" and default[-1].lr == pytest.approx(3e-5)
        assert higher[-1].lr == pytest.approx(1.5e-4)
        assert [s.lr for s in higher[:-1]] == [s.lr for s in default[:-1]] == [3e-4] * (len(default) - 1)
        with pytest.raises(ValueError, match="e2e_lr_ratio=0: must be a number > 0"):
            recipe(name, tokens=10**6, e2e_lr_ratio=0)
    with pytest.raises(ValueError, match="recipe 'kd' has no dial 'e2e_lr_ratio'"):
        recipe("kd", tokens=10**6, e2e_lr_ratio=0.5)
    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    assert main(["distill", "--recipe", "mamba-in-llama", "--lr", "1e-3", "--e2e-lr-ratio", "0.3", "--tokens", "4k",
                 "--seq-len", "64", "--batch-size", "2", "--out", str(tmp_path / "run")]) == 0
    assert [s.lr for s in started[0].stages] == pytest.approx([1e-3, 3e-4])
    assert main(["distill", "--e2e-lr-ratio", "-1", "--out", str(tmp_path / "neg")]) == 2
    assert len(started) == 1


def test_a_folder_holding_another_runs_config_is_refused(tiny_teacher_dir, tmp_path):
    """Run(config, out) on a folder of a run with another config is refused before anything is loaded or written;
    the same config continues the run there (what Run.resume does)."""
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 64, batch_size=2, seq_len=64)]
    first = Run(tiny_config(tiny_teacher_dir, stages), tmp_path / "run", progress=False)
    first.prepare()
    before = (tmp_path / "run" / "config.json").read_text()
    other = tiny_config(tiny_teacher_dir, stages, grad_clip=0.5)
    with pytest.raises(ValueError, match=r"another config \(differs in grad_clip\).*Run.resume"):
        Run(other, tmp_path / "run", progress=False).prepare()
    assert (tmp_path / "run" / "config.json").read_text() == before
    assert Run(tiny_config(tiny_teacher_dir, stages), tmp_path / "run", progress=False).prepare().path.exists()


def weights_never_load(monkeypatch) -> None:
    """Make loading the teacher's weights fail the test: a refusal must come from its config alone."""
    monkeypatch.setattr(run_module, "load_teacher", lambda *a, **k: pytest.fail("the teacher's weights loaded"))


def test_a_seq_len_past_the_teachers_positions_is_refused(tiny_teacher_dir, tmp_path, monkeypatch):
    """The tiny teacher has 512 positions: a stage of 513-token sequences stops before the teacher's weights load,
    naming the stage, the value and the limit."""
    weights_never_load(monkeypatch)
    stages = [StageConfig("long", losses={"kl": 1.0}, tokens=2 * 513, batch_size=2, seq_len=513)]
    with pytest.raises(ValueError, match=r"stage 'long' seq_len 513 .*512"):
        Run(tiny_config(tiny_teacher_dir, stages), tmp_path / "run", progress=False).execute()
    assert not list(iter_events(tmp_path / "run" / "events.jsonl", "step"))


def test_keeping_every_layer_is_refused_before_anything_is_evaluated(tiny_teacher_dir, tmp_path, monkeypatch):
    weights_never_load(monkeypatch)
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 64, batch_size=2, seq_len=64)]
    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0, 1, 2, 3], stages=stages,
                       device="cpu", eval_every=1)
    with pytest.raises(ValueError, match=r"keep_attention \[0, 1, 2, 3\] keeps every layer .*0\.\.3"):
        Run(config, tmp_path / "run", progress=False).execute()
    assert not list(iter_events(tmp_path / "run" / "events.jsonl", "eval"))


def test_a_run_never_writes_into_a_folder_of_other_files_nor_onto_a_file(tiny_teacher_dir, tmp_path):
    """The Python API refuses what the CLI refuses: a folder of the user's files stays as it was, a file is not
    taken for a folder; an empty folder, or one the dashboard prepared, is used."""
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 64, batch_size=2, seq_len=64)]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "draft.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holding other files \\(draft.txt\\)"):
        Run(tiny_config(tiny_teacher_dir, stages), notes, progress=False).prepare()
    assert sorted(p.name for p in notes.iterdir()) == ["draft.txt"]
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is a file"):
        Run(tiny_config(tiny_teacher_dir, stages), tmp_path / "file.txt", progress=False).prepare()
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "worker.log").write_text("")
    for folder in (tmp_path / "empty", prepared):
        folder.mkdir(exist_ok=True)
        run_dir = Run(tiny_config(tiny_teacher_dir, stages), folder, progress=False).prepare()
        assert (run_dir.path / "config.json").exists()


def test_a_step_in_micro_batches_is_the_whole_batch_step(tmp_path, teacher):
    """StageConfig.micro_batch: the rows of a step go forward and backward a part at a time, their gradients added up
    with each part's share of the rows; the reference twin is the step over the whole batch at once. The two runs'
    losses, gradient norms and trained weights agree to float32 rounding."""
    from tests.helpers.tiny_models import tiny_hyena_run
    from workbench.distill.config import StageConfig
    from workbench.distill.load import load_run_student

    def stages(micro):
        return [StageConfig("kd", losses={"kl": 1.0, "ce": 0.1}, tokens=3 * 4 * 32, batch_size=4, seq_len=32,
                            lr=1e-3, micro_batch=micro)]

    whole = tiny_hyena_run(tmp_path / "whole", teacher, stages=stages(None))
    parts = tiny_hyena_run(tmp_path / "parts", teacher, stages=stages(1))
    steps = [[e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if e["type"] == "step"]
             for run in (whole, parts)]
    assert len(steps[0]) == len(steps[1]) == 3
    for a, b in zip(*steps):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["loss_ce"] == pytest.approx(a["loss_ce"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    trained = [dict(load_run_student(run, device="cpu").student.named_parameters()) for run in (whole, parts)]
    for name, value in trained[0].items():
        torch.testing.assert_close(trained[1][name], value, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch=3 does not divide batch_size=4"):
        stages(3)[0].validate()


def test_distill_micro_batch_flag(tmp_path, monkeypatch, capsys):
    from workbench.cli import main

    started = []
    monkeypatch.setattr(Run, "execute", lambda run: started.append(run.config) or {})
    common = ["--recipe", "mohawk", "--tokens", "40k", "--seq-len", "64", "--batch-size", "8"]
    assert main(["distill", *common, "--micro-batch", "4", "--out", str(tmp_path / "a")]) == 0
    assert [s.micro_batch for s in started[0].stages] == [4, 4, 4]
    assert main(["distill", *common, "--micro-batch", "3", "--out", str(tmp_path / "b")]) == 2
    assert "--micro-batch 3: must be a count of rows >= 1 that divides --batch-size (8)" in capsys.readouterr().err
