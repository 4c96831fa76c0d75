"""Data-parallel scaling of ``workbench distill``: the same run on one GPU and on N GPUs of this host, tokens/s of
each and the scaling efficiency (tokens/s on N GPUs / (N x tokens/s on one GPU)).

    python benchmarks/scaling.py --nproc 2 --batch-size 64 --json scaling.json -- \\
        --teacher smollm2-135m --mixer mamba2 --recipe kd --seq-len 512 --lr 1e-4 --compile --steps 24

Two ways to scale, both measured unless ``--only`` picks one:
- weak: every GPU keeps ``--batch-size`` rows per step (the global batch grows N-fold). This is data parallelism's
  usual use: more GPUs, more tokens per step, same per-GPU work.
- strong: the global batch stays ``--batch-size`` rows, split over the N GPUs. Its loss curve is the one-GPU run's
  (within bf16 noise), but each GPU does 1/N of the work per step, so launch-bound small batches scale poorly.

Each run is ``python -m workbench distill ARGS`` (one GPU, ``--device cuda``) or the same under
``python -m torch.distributed.run --standalone --nproc-per-node N``; ``--steps S`` sets the token budget so
that every run takes S steps. Its tokens/s is the median of the step events' ``tokens_per_s`` after ``--skip``
steps (compilation and warm-up). The JSON holds every run's command, step count, median tokens/s and loss curve.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from workbench.distill.events import Step, iter_typed


def distill_command(nproc: int, args: list[str], device: str) -> list[str]:
    """One process on ``device``, or ``nproc`` processes under torchrun (each on GPU LOCAL_RANK for cuda)."""
    command = [sys.executable, "-m", "workbench", "distill", *args, "--device", device]
    if nproc == 1:
        return command
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *command[1:]]


def measure(name: str, nproc: int, batch: int, seq_len: int, steps: int, skip: int, args: list[str],
            out: Path, device: str) -> dict:
    """Run one distillation; its median tokens/s after ``skip`` steps and its losses."""
    folder = out / name
    run_args = [*args, "--batch-size", str(batch), "--seq-len", str(seq_len), "--tokens", str(batch * seq_len * steps),
                "--out", str(folder)]
    command = distill_command(nproc, run_args, device)
    print(f"[{name}] {' '.join(command)}", flush=True)
    subprocess.run(command, check=True)
    steps = list(iter_typed(folder / "events.jsonl", Step))
    if len(steps) <= skip:
        raise RuntimeError(f"{name}: {len(steps)} steps logged, fewer than --skip {skip}; raise --steps")
    rate = statistics.median(e.tokens_per_s for e in steps[skip:])
    print(f"[{name}] {len(steps)} steps, median {rate:,.0f} tokens/s", flush=True)
    return {"name": name, "nproc": nproc, "global_batch": batch, "seq_len": seq_len, "command": command,
            "steps": len(steps), "tokens_per_s": rate, "losses": [round(e.loss, 5) for e in steps]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="GPUs of the multi-GPU runs")
    p.add_argument("--batch-size", type=int, default=64, help="rows per step on one GPU")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=24, help="training steps of every run")
    p.add_argument("--skip", type=int, default=8, help="first steps left out of the median (compilation, warm-up)")
    p.add_argument("--only", choices=("weak", "strong"), help="measure one way of scaling")
    p.add_argument("--device", default="cuda", help="cuda (GPU LOCAL_RANK per process), or cpu (gloo) to try it")
    p.add_argument("--out", help="folder for the run folders (default: a temporary one)")
    p.add_argument("--json", required=True)
    p.add_argument("distill_args", nargs=argparse.REMAINDER, help="after --: arguments of workbench distill")
    args = p.parse_args()
    extra = [a for a in args.distill_args if a != "--"]
    for flag in ("--batch-size", "--seq-len", "--tokens", "--out", "--device", "--nproc"):
        if flag in extra:
            raise SystemExit(f"{flag} is set by this script; leave it out of the distill arguments")
    if args.steps <= args.skip:
        raise SystemExit(f"--steps ({args.steps}) must exceed --skip ({args.skip})")
    out = Path(args.out or tempfile.mkdtemp(prefix="scaling-"))
    n, b = args.nproc, args.batch_size
    common = dict(seq_len=args.seq_len, steps=args.steps, skip=args.skip, args=extra, out=out,
                  device=args.device)
    one = measure("1gpu", 1, b, **common)
    result = {"nproc": n, "per_gpu_batch_one_gpu": b, "seq_len": args.seq_len, "one_gpu": one,
              "environment": {k: os.environ[k] for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")
                              if k in os.environ}}
    for way, global_batch in (("weak", n * b), ("strong", b)):
        if args.only not in (None, way):
            continue
        run = measure(f"{n}gpu_{way}", n, global_batch, **common)
        run["efficiency"] = run["tokens_per_s"] / (n * one["tokens_per_s"])
        result[way] = run
        print(f"{way} scaling: {run['tokens_per_s']:,.0f} tokens/s on {n} GPUs, efficiency {run['efficiency']:.3f}",
              flush=True)
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
