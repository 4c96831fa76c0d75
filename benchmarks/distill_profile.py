"""Where a distillation step's time goes: the teacher's forward, the student's forward and loss, the backward and
the optimiser, each timed with CUDA events, and the top GPU kernels from ``torch.profiler``.

    python benchmarks/distill_profile.py --teacher smollm2-135m --mixer mamba2 --batch-size 16 --seq-len 512 \\
        --steps 10 --json profile.json [--compile]

The run is set up as ``workbench distill --recipe kd`` sets it up (``Run._setup``: teacher, attention-initialised
student, bf16 autocast on CUDA), then ``--steps`` training steps of logit KD on the run's training blocks are timed
after ``--warmup`` untimed ones. The JSON holds the per-phase medians (ms), tokens/s, the MFU (the convention of
``results_table.py``: 6N FLOPs per token for the student, 2N for the teacher) and the kernel table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

from workbench.data import PackedBlocks
from workbench.device import device_name
from workbench.distill import losses as L
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.run import Run

PEAK_TFLOPS = 989.0  # dense bf16 of an H100 / H200 SXM (vendor data sheets), as in results_table.py


def timed_step(run: Run, batch: torch.Tensor, opt: torch.optim.Optimizer, temperature: float) -> dict[str, float]:
    """One KD step; milliseconds of each phase (CUDA events on a CUDA device, else wall clock through them too)."""
    cuda = run.device.type == "cuda"
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(5)] if cuda else None
    x = batch[:, :-1]
    if cuda:
        marks[0].record()
    with torch.no_grad(), run.autocast():
        teacher_logits = run.teacher.model(input_ids=x, use_cache=False).logits
    if cuda:
        marks[1].record()
    with run.autocast():
        logits = run.student(input_ids=x, use_cache=False).logits
        loss = L.kl_divergence(logits, teacher_logits, temperature=temperature)
    if cuda:
        marks[2].record()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.student.parameters(), run.config.grad_clip)
    if cuda:
        marks[3].record()
    opt.step()
    if not cuda:
        return {}
    marks[4].record()
    torch.cuda.synchronize(run.device)
    names = ("teacher_forward", "student_forward_loss", "backward", "optimizer")
    return {n: marks[i].elapsed_time(marks[i + 1]) for i, n in enumerate(names)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--mixer", default="mamba2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="RunConfig.compile: fused MLPs and norms")
    p.add_argument("--device", default="auto")
    p.add_argument("--top", type=int, default=25, help="kernels in the table")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    stage = StageConfig("kd", losses={"kl": 1.0}, train="all", tokens=args.batch_size * args.seq_len,
                        batch_size=args.batch_size, seq_len=args.seq_len)
    config = RunConfig(teacher=args.teacher, mixer=args.mixer, stages=[stage], device=args.device,
                       compile=args.compile)
    run = Run(config, tempfile.mkdtemp(), progress=False)
    run._setup(args.device)
    blocks = PackedBlocks(run.train_ids, args.seq_len, seed=0)
    opt = torch.optim.AdamW(run.student.parameters(), lr=1e-5, betas=(0.9, 0.95))
    phases: list[dict[str, float]] = []
    for step in range(args.warmup + args.steps):
        batch = blocks.batch(step, args.batch_size).to(run.device)
        times = timed_step(run, batch, opt, stage.temperature)
        if step >= args.warmup:
            phases.append(times)
    kernels = []
    if run.device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for step in range(3):
                timed_step(run, blocks.batch(step, args.batch_size).to(run.device), opt, stage.temperature)
        events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
        total = sum(e.self_device_time_total for e in events) or 1.0
        kernels = [{"name": e.key[:120], "calls": e.count // 3, "ms_per_step": e.self_device_time_total / 3e3,
                    "share": e.self_device_time_total / total} for e in events[:args.top]]
    median = {k: statistics.median(t[k] for t in phases) for k in phases[0]} if phases and phases[0] else {}
    step_ms = sum(median.values())
    tokens = args.batch_size * args.seq_len
    n_student = sum(p.numel() for p in run.student.parameters())
    n_teacher = sum(p.numel() for p in run.teacher.model.parameters())
    rate = tokens / (step_ms / 1e3) if step_ms else None
    result = {"device_name": device_name(run.device), "mixer": args.mixer, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "compile": args.compile, "median_ms": median, "step_ms": step_ms,
              "tokens_per_s": rate,
              "mfu": rate * (6 * n_student + 2 * n_teacher) / (PEAK_TFLOPS * 1e12) if rate else None,
              "kernels": kernels}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "kernels"}, indent=1))
    for k in kernels:
        print(f"{k['share'] * 100:5.1f}%  {k['ms_per_step']:7.2f} ms  x{k['calls']:<5} {k['name']}")


if __name__ == "__main__":
    main()
