"""Where a distillation step's time goes: its forward and loss (teacher and student), the backward and
the optimiser, each timed with CUDA events, and the top GPU kernels from ``torch.profiler``; against it, in the same
process, a plain transformers training step of the teacher's architecture (the baseline row).

    python benchmarks/distill_profile.py --teacher smollm2-135m --mixer mamba2 --batch-size 16 --seq-len 512 \\
        --steps 10 --json profile.json [--compile]

The run is set up as ``workbench distill --recipe kd`` sets it up (``Run._setup``: teacher, attention-initialised
student, bf16 autocast on CUDA), then ``--steps`` training steps of logit KD (the run's own loss terms and AdamW,
phases: forward and loss, backward, optimizer) on the run's training blocks are timed
after ``--warmup`` untimed ones (CUDA events on a GPU, the wall clock on a CPU). The JSON holds the per-phase medians
(ms), tokens/s, the FLOPs per token and MFU (``workbench.distill.throughput``: 6·N_student + 2·N_teacher; MFU null
on a device without a known peak), the peak GPU memory of the timed steps and the kernel table.

``baseline``: what users run today, timed the same way on the same (B, L) tokens: the teacher's architecture with
fresh weights (``AutoModelForCausalLM.from_config``, SDPA attention where the model has it, not compiled), its own
cross-entropy loss (``labels=``), bf16 autocast over fp32 weights on CUDA (transformers ``Trainer`` with
``bf16=True``), gradient clipping and AdamW (fused on CUDA: the Trainer's default). Its MFU counts 6·N_teacher per
token; ``mfu_vs_baseline`` is the KD step's MFU over it (the ratio of the two FLOP rates, so it is defined on a CPU
too). Its peak memory leaves out what the KD step's models still hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from workbench.data import PackedBlocks
from workbench.device import device_name
from workbench.distill import throughput
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.run import Run
from workbench.distill.step import stage_losses
from workbench.teachers.load import supported_attention


class Marks:
    """Time points of one step: CUDA events on a CUDA device (read after one synchronisation at the end), else the
    wall clock."""

    def __init__(self, device: torch.device):
        self.device = device
        self.points: list = []

    def mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.points.append(event)
        else:
            self.points.append(time.perf_counter())

    def phases(self, names: tuple[str, ...]) -> dict[str, float]:
        """Milliseconds between consecutive marks, one per name."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {n: self.points[i].elapsed_time(self.points[i + 1]) for i, n in enumerate(names)}
        return {n: (self.points[i + 1] - self.points[i]) * 1e3 for i, n in enumerate(names)}


def timed_step(run: Run, stage: StageConfig, batch: torch.Tensor, opt: torch.optim.Optimizer) -> dict[str, float]:
    """One KD step as the run takes it (``stage_losses``: the teacher's capture of its last hidden state, the
    student's forward and the fused LM head + KL; then backward, clipping, the run's AdamW); milliseconds of each
    phase."""
    marks = Marks(run.device)
    params = [p for p in run.student.parameters() if p.requires_grad]
    marks.mark()
    terms = stage_losses(stage, run.teacher, run.student, run.blocks, run.mixers, batch, run.autocast)
    loss = sum(stage.losses[k] * v for k, v in terms.items())
    marks.mark()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, run.config.grad_clip)
    marks.mark()
    opt.step()
    marks.mark()
    return marks.phases(("forward_loss", "backward", "optimizer"))


def trainer_autocast(device: torch.device):
    """The dtype policy of transformers' Trainer with bf16=True: bf16 autocast over fp32 weights (CUDA only here)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def baseline_step(model: torch.nn.Module, batch: torch.Tensor, opt: torch.optim.Optimizer,
                  grad_clip: float) -> dict[str, float]:
    """One plain training step of ``model`` on ``batch`` (B, L + 1): its own cross-entropy on the next tokens,
    backward, clipping, AdamW; milliseconds of each phase."""
    device = batch.device
    marks = Marks(device)
    x, y = batch[:, :-1], batch[:, 1:].contiguous()              # (B, L) inputs and their next tokens
    marks.mark()
    with trainer_autocast(device):
        loss = model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
    marks.mark()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    marks.mark()
    opt.step()
    marks.mark()
    return marks.phases(("forward_loss", "backward", "optimizer"))


def medians(phases: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(t[k] for t in phases) for k in phases[0]} if phases else {}


def timed(step, batches, warmup: int, device: torch.device, other: int = 0) -> tuple[dict[str, float], float | None]:
    """Per-phase medians (ms) of ``step(batch)`` over ``batches`` after the first ``warmup``, and the peak GPU
    memory of the timed steps less ``other`` bytes allocated for something else (GiB; None off CUDA)."""
    phases = []
    for i, batch in enumerate(batches):
        if i == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = step(batch)
        if i >= warmup:
            phases.append(times)
    peak = (torch.cuda.max_memory_allocated(device) - other) / 2**30 if device.type == "cuda" else None
    return medians(phases), peak


def baseline(run: Run, blocks: PackedBlocks, args) -> dict:
    """The baseline row (module docstring): a plain transformers training step of the teacher's architecture. Its
    peak memory leaves out what the KD step's models still hold (allocated before it)."""
    other = torch.cuda.memory_allocated(run.device) if run.device.type == "cuda" else 0
    config = run.teacher.model.config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation=supported_attention(config, "sdpa"))
    model = model.to(run.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=run.device.type == "cuda")
    batches = (blocks.batch(step, args.batch_size).to(run.device) for step in range(args.warmup + args.steps))
    median, peak = timed(lambda b: baseline_step(model, b, opt, run.config.grad_clip), batches, args.warmup,
                         run.device, other)
    step_ms = sum(median.values())
    rate = args.batch_size * args.seq_len / (step_ms / 1e3) if step_ms else None
    n = sum(p.numel() for p in model.parameters())
    flops = throughput.train_flops_per_token(n)
    name = device_name(run.device)
    return {"model": f"AutoModelForCausalLM.from_config({type(model).__name__} config), fresh weights",
            "parameters": n, "dtype": "bf16 autocast, fp32 weights" if run.device.type == "cuda" else "fp32",
            "optimizer": f"AdamW (fused={run.device.type == 'cuda'})", "compile": False, "median_ms": median,
            "step_ms": step_ms, "tokens_per_s": rate, "flops_per_token": flops,
            "mfu": throughput.mfu(rate, flops, throughput.peak_flops(name)), "peak_gpu_mem_gb": peak}


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
    p.add_argument("--no-baseline", action="store_true", help="leave out the plain transformers training step")
    p.add_argument("--json", required=True)
    args = p.parse_args()

    stage = StageConfig("kd", losses={"kl": 1.0}, train="all", tokens=args.batch_size * args.seq_len,
                        batch_size=args.batch_size, seq_len=args.seq_len)
    config = RunConfig(teacher=args.teacher, mixer=args.mixer, stages=[stage], device=args.device,
                       compile=args.compile)
    run = Run(config, tempfile.mkdtemp(), progress=False)
    run._setup(args.device)
    blocks = PackedBlocks(run.train_ids, args.seq_len, seed=0)
    opt = run.make_optimizer(stage, list(run.student.parameters()))
    batches = (blocks.batch(step, args.batch_size).to(run.device) for step in range(args.warmup + args.steps))
    median, peak = timed(lambda b: timed_step(run, stage, b, opt), batches, args.warmup, run.device)
    kernels = []
    if run.device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for step in range(3):
                timed_step(run, stage, blocks.batch(step, args.batch_size).to(run.device), opt)
        events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
        total = sum(e.self_device_time_total for e in events) or 1.0
        kernels = [{"name": e.key[:120], "calls": e.count // 3, "ms_per_step": e.self_device_time_total / 3e3,
                    "share": e.self_device_time_total / total} for e in events[:args.top]]
    step_ms = sum(median.values())
    tokens = args.batch_size * args.seq_len
    flops = throughput.stage_flops_per_token(run.student, run.teacher.model, run.student.parameters())
    rate = tokens / (step_ms / 1e3) if step_ms else None
    name = device_name(run.device)
    result = {"device_name": name, "mixer": args.mixer, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "compile": args.compile, "median_ms": median, "step_ms": step_ms,
              "tokens_per_s": rate, "flops_per_token": flops,
              "mfu": throughput.mfu(rate, flops, throughput.peak_flops(name)), "peak_gpu_mem_gb": peak,
              "kernels": kernels}
    if not args.no_baseline:
        base = result["baseline"] = baseline(run, blocks, args)
        result["mfu_vs_baseline"] = (rate * flops / (base["tokens_per_s"] * base["flops_per_token"])
                                     if rate and base["tokens_per_s"] else None)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "kernels"}, indent=1))
    for k in kernels:
        print(f"{k['share'] * 100:5.1f}%  {k['ms_per_step']:7.2f} ms  x{k['calls']:<5} {k['name']}")


if __name__ == "__main__":
    main()
