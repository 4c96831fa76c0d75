"""Training-step throughput of each recipe's steps, run exactly as ``workbench distill`` runs them
(``Run._train_step``: the stage's loss terms, backward, gradient clipping, AdamW step, one read of the step's numbers
off the device), over a sweep of batch sizes: tokens/s, MFU and peak memory per (row, batch).

    python benchmarks/distill_speed.py --teacher TEACHER --rows kd-0,kd-25,hyena-0,mohawk-1,mohawk-2 \\
        --batch-sizes 64,128,256 --seq-len 512 --steps 10 --json speed.json

Rows (what each times; the mixer and layers as ``benchmarks/results_table.py`` uses them):
  kd-0       logit KD, every parameter trained, all layers Mamba-2
  kd-25      the same with 25% attention kept (every 4th layer from 0)
  hyena-0    logit KD, all layers Hyena
  mohawk-1   MOHAWK stage 1 (matrix orientation), mixers trained, all layers discrete Mamba-2
  mohawk-2   MOHAWK stage 2 (hidden-state alignment), same student
  hyena-1    Scavenging Hyena's first progressive stage (hidden alignment of the first third of the layers)
Batches of one row run in ascending order; the first that does not fit ends the row (recorded with ``oom``). Each
(row, batch) times ``--steps`` steps after ``--warmup`` untimed ones (compilation happens there); tokens/s is the
batch's tokens over the median step time. The weights move (real AdamW steps at a small learning rate); speed does
not depend on them, so a teacher folder with random weights of the real architecture measures the same speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from workbench.data import PackedBlocks
from workbench.device import device_name, sync
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.run import Run
from workbench.distill.step import trainable_parameters
from workbench.distill.throughput import mfu, peak_flops, stage_flops_per_token
from workbench.teachers.load import teacher_config


@dataclass(frozen=True)
class Row:
    mixer: str
    attention_share: float                # fraction of layers kept as attention, every (1/share)-th from 0
    losses: dict[str, float]
    train: str                            # StageConfig.train
    layer_group: list[int] | None = None  # StageConfig.layer_group


ROWS = {
    "kd-0": Row("mamba2", 0.0, {"kl": 1.0}, "all"),
    "kd-25": Row("mamba2", 0.25, {"kl": 1.0}, "all"),
    "hyena-0": Row("hyena", 0.0, {"kl": 1.0}, "all"),
    "mohawk-1": Row("mamba2-discrete", 0.0, {"matrix": 1.0}, "mixers"),
    "mohawk-2": Row("mamba2-discrete", 0.0, {"hidden": 1.0}, "mixers"),
    "hyena-1": Row("hyena", 0.0, {"hidden": 1.0}, "mixers", layer_group=[0, 3]),
}


def make_run(row: Row, teacher: str, compile: bool, device: str, stage: StageConfig) -> Run:
    """The run's teacher and student for ``row``, set up as ``Run._setup`` does (``stage`` only passes validation:
    every timed batch gets its own)."""
    n = teacher_config(teacher).num_hidden_layers
    keep = list(range(0, n, round(1 / row.attention_share))) if row.attention_share > 0 else []
    config = RunConfig(teacher=teacher, mixer=row.mixer, keep_attention=keep, stages=[stage], device=device,
                       compile=compile)
    run = Run(config, tempfile.mkdtemp(), progress=False)
    run._setup(device)
    return run


def stage_of(name: str, row: Row, batch_size: int, seq_len: int) -> StageConfig:
    return StageConfig(name, row.train, row.losses, tokens=batch_size * seq_len, batch_size=batch_size,
                       seq_len=seq_len, lr=1e-5, layer_group=row.layer_group)


def time_batch(run: Run, stage: StageConfig, batch_size: int, steps: int, warmup: int) -> dict:
    """Median step time of ``steps`` real training steps at ``batch_size`` after ``warmup`` ones."""
    train_params = trainable_parameters(run.student, run.blocks, run.mixers, stage.train)
    for p in run.student.parameters():
        p.requires_grad_(False)
    for p in train_params:
        p.requires_grad_(True)
    opt = run.make_optimizer(stage, train_params)
    blocks = PackedBlocks(run.train_ids, stage.seq_len, seed=0)
    cuda = run.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    seconds = []
    for step in range(warmup + steps):
        batch = blocks.batch(step, batch_size).to(run.device)
        t0 = time.perf_counter()
        tensors = run._train_step(stage, None, opt, train_params, batch)
        tensors.loss.detach().item()                          # the run reads each step's numbers once
        sync(run.device)
        if step >= warmup:
            seconds.append(time.perf_counter() - t0)
    step_s = statistics.median(seconds)
    return {"step_ms": step_s * 1e3, "tokens_per_s": batch_size * stage.seq_len / step_s,
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(run.device) / 2**30 if cuda else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="leave RunConfig.compile off")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    batches = sorted(int(b) for b in args.batch_sizes.split(","))
    results = []
    for name in names:
        row = ROWS[name]
        run = make_run(row, args.teacher, not args.no_compile, args.device,
                       stage_of(name, row, batches[0], args.seq_len))
        for batch_size in batches:
            stage = stage_of(name, row, batch_size, args.seq_len)
            result = {"row": name, "mixer": row.mixer, "attention_share": row.attention_share, "losses": row.losses,
                      "train": row.train, "batch": batch_size, "seq_len": args.seq_len,
                      "compile": not args.no_compile, "device_name": device_name(run.device),
                      "replaced": sorted(run.mixers)}
            try:
                result |= time_batch(run, stage, batch_size, args.steps, args.warmup)
            except torch.OutOfMemoryError as err:
                result |= {"oom": True, "error": str(err).splitlines()[0]}
                results.append(result)
                print(json.dumps(result))
                break
            flops = stage_flops_per_token(run.student, run.teacher.model,
                                          trainable_parameters(run.student, run.blocks, run.mixers, row.train))
            result |= {"flops_per_token": flops,
                       "mfu": mfu(result["tokens_per_s"], flops, peak_flops(result["device_name"]))}
            results.append(result)
            print(json.dumps(result))
        del run
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
