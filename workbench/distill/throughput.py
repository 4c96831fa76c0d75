"""How fast a distillation step runs and what it holds in memory: the FLOPs one token costs, the device's peak, a
stage's tokens/s, MFU and peak memory, and what to say when a batch does not fit the GPU.

FLOPs per token (the one convention of the run, ``benchmarks/distill_profile.py`` and ``benchmarks/results_table.py``;
docs/results.md, "FLOPs per token"), N counting parameters, embeddings included:
  1. the frozen teacher's forward: 2·N_teacher (one multiply and one add per parameter);
  2. the student's forward: 2·N_student;
  3. the student's backward: 2·N_student for the activation gradients, carried back through the whole student
     whatever the stage trains, + 2·N_trained for the weight gradients of the parameters the stage trains.
A stage that trains every parameter counts 6·N_student + 2·N_teacher (the 6N of Kaplan et al. 2020, arXiv
2001.08361, with the teacher's forward added); one that trains only the mixers counts 4·N_student + 2·N_mixers +
2·N_teacher. The count is the model's, not the loss's: attention's and the scans' own FLOPs (which grow with the
sequence length) are left out, and the layer-wise stages (matrix orientation, hidden alignment), which run less than
a full student forward and backward, are counted as end-to-end ones, so their MFU reads as throughput in the same
units, not as the GPU's utilisation.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, arXiv 2204.02311, appendix B) = tokens/s · FLOPs per token /
(peak FLOP/s · devices), with the dense bf16 peak of the vendor's data sheet (``peak_flops``); on a device not in the
table (a CPU, another GPU) it is None, never a guess.

A stage's tokens/s is the median of its steps' rates after the first ``WARMUP_STEPS`` (``steady_rate``): those
allocate memory, build the AdamW state and compile (``--compile``, Triton autotuning), and would drag a mean; the
median also ignores a rare slow step (a garbage collection). Its peak memory is
``torch.cuda.max_memory_allocated`` since its first step on CUDA (``peak_gpu_mem_gb``); on a CPU it is the process's
peak resident memory since it started (``peak_rss_gb``: the OS keeps no per-stage peak).

A batch that does not fit (``batch_fit``): when a stage's first step runs out of CUDA memory, steps of 1 and 2 rows
(forward and backward, no optimiser step, gradients dropped) are measured, peak(B) = fixed + B · per_row is fitted
through them (``fit_memory``), and the error says what the batch asked needs and the largest that fits.
"""

from __future__ import annotations

import gc
import math
import resource
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from workbench.device import device_name
from workbench.distill.config import StageConfig
from workbench.distill.events import StageEnd

GIB = 2**30
WARMUP_STEPS = 3  # steps of a stage left out of its tokens/s: allocation, AdamW state, compilation
HEADROOM = 0.05   # share of the usable memory a predicted peak keeps free: the caching allocator's fragmentation
PROBE_ROWS = (1, 2)  # batch rows of the memory probes

# Dense bf16 peak FLOP/s from the vendors' data sheets; the first entry whose name occurs in the device's name wins.
# The PCIe and NVL parts run at lower clocks than the SXM ones: None (no number) rather than a wrong one.
PEAK_BF16_FLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", None), ("H100 NVL", None), ("H200 NVL", None),
    ("H100", 989e12),   # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),   # H200 SXM ("NVIDIA H200"; a GH200's GPU is the same part)
    ("A100", 312e12),
)


# ---- FLOPs and MFU -----------------------------------------------------------------------------------------------
def train_flops_per_token(n_params: int, n_trained: int | None = None) -> int:
    """FLOPs per token of a training step of a model of ``n_params`` parameters of which ``n_trained`` (default:
    all) learn: forward 2·N, activation gradients 2·N, weight gradients 2·N_trained."""
    n_trained = n_params if n_trained is None else n_trained
    if not 0 <= n_trained <= n_params:
        raise ValueError(f"n_trained={n_trained} must be between 0 and n_params={n_params}")
    return 4 * n_params + 2 * n_trained


def kd_flops_per_token(n_student: int, n_teacher: int, n_trained: int | None = None) -> int:
    """FLOPs per token of a distillation step: the student's training step (``train_flops_per_token``) plus the
    frozen teacher's forward, 2·N_teacher. Every parameter trained: 6·N_student + 2·N_teacher."""
    return train_flops_per_token(n_student, n_trained) + 2 * n_teacher


def stage_flops_per_token(student: torch.nn.Module, teacher: torch.nn.Module,
                          trained: Iterable[torch.nn.Parameter]) -> int:
    """``kd_flops_per_token`` of a stage: the student, the teacher's model and the parameters the stage trains
    (each parameter counted once, tied ones included)."""
    return kd_flops_per_token(sum(p.numel() for p in student.parameters()),
                              sum(p.numel() for p in teacher.parameters()),
                              sum(p.numel() for p in {id(p): p for p in trained}.values()))


def peak_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the device called ``name`` (``workbench.device.device_name``); None when the table
    has no number for it (CPUs, other GPUs)."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def mfu(tokens_per_s: float | None, flops_per_token: int, peak: float | None, devices: int = 1) -> float | None:
    """Model FLOPs utilisation of ``devices`` devices of peak ``peak`` FLOP/s running ``tokens_per_s`` (all of them
    together); None without a rate or a peak."""
    if tokens_per_s is None or peak is None:
        return None
    return tokens_per_s * flops_per_token / (peak * devices)


# ---- a stage's throughput and memory -----------------------------------------------------------------------------
def steady_rate(rates: list[float], warmup: int = WARMUP_STEPS) -> tuple[float | None, int]:
    """(median tokens/s, steps it covers): the steps after the first ``warmup``, or all of them when there are no
    more than ``warmup`` (a short stage: warm-up included); (None, 0) without steps."""
    kept = rates[warmup:] or rates
    return (statistics.median(kept) if kept else None), len(kept)


def peak_memory(device: torch.device) -> dict[str, float]:
    """The peak memory field of ``device``: ``peak_gpu_mem_gb`` (CUDA memory allocated since the last
    ``reset_peak_memory_stats``, GiB) or, elsewhere, ``peak_rss_gb`` (the process's peak resident memory, GiB)."""
    if device.type == "cuda":
        return {"peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / GIB}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_gb": rss * (1 if sys.platform == "darwin" else 1024) / GIB}


@dataclass
class StageMeter:
    """Throughput and peak memory of one stage in this process, from its first step on (``start``)."""

    device: torch.device
    rates: list[float] = field(default_factory=list)  # tokens per wall second of each step, in order

    @classmethod
    def start(cls, device: torch.device) -> StageMeter:
        """A meter for a stage starting now: on CUDA the peak memory count restarts."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return cls(device)

    def add(self, tokens_per_s: float) -> None:
        self.rates.append(tokens_per_s)

    def stats(self, flops_per_token: int, devices: int = 1) -> dict:
        """The stage's fields of its "stage_end" event (workbench.distill.events.StageEnd); ``devices``: the
        processes of the run, one device each (tokens/s counts the global batch)."""
        name = device_name(self.device)
        peak = peak_flops(name)
        rate, timed = steady_rate(self.rates)
        return {"tokens_per_s": rate, "steps_timed": timed, "flops_per_token": flops_per_token,
                "mfu": mfu(rate, flops_per_token, peak, devices), "peak_flops": peak, "device_name": name,
                **peak_memory(self.device)}


MEASURED = ("tokens_per_s", "steps_timed", "flops_per_token", "mfu", "peak_flops", "device_name", "peak_gpu_mem_gb",
            "peak_rss_gb")  # the fields ``StageMeter.stats`` may write, as summary.json lists them per stage


def stage_summary(stages: list[StageConfig], ends: Iterable[StageEnd]) -> list[dict]:
    """summary.json's "stages": one entry per stage of the config with its batch, length and steps, and the
    measured fields of its last "stage_end" event in ``ends`` (None where the log holds no measurement: a stage
    ended before these fields existed, or whose end went unlogged)."""
    last = {e.stage_idx: e for e in ends}
    out = []
    for idx, stage in enumerate(stages):
        end = last.get(idx)
        measured = {k: getattr(end, k) for k in MEASURED} if end is not None else dict.fromkeys(MEASURED)
        out.append({"stage": stage.name, "stage_idx": idx, "batch_size": stage.batch_size, "seq_len": stage.seq_len,
                    "steps": stage.steps, **measured})
    return out


def format_stages(stages: list[dict]) -> str:
    """summary.json's "stages" as a short text table: tokens/s, MFU and peak memory of each stage."""
    lines = [f"{'stage':<28} {'batch x len':>12} {'tokens/s':>10} {'MFU':>6}  peak memory"]
    for s in stages:
        rate = "-" if s.get("tokens_per_s") is None else _count(s["tokens_per_s"])
        util = "-" if s.get("mfu") is None else f"{s['mfu'] * 100:.1f}%"
        if s.get("peak_gpu_mem_gb") is not None:
            memory = f"{s['peak_gpu_mem_gb']:.2f} GiB (GPU, allocated)"
        elif s.get("peak_rss_gb") is not None:
            memory = f"{s['peak_rss_gb']:.2f} GiB (process RSS)"
        else:
            memory = "-"
        shape = f"{s['batch_size']} x {s['seq_len']}"
        lines.append(f"{s['stage']:<28} {shape:>12} {rate:>10} {util:>6}  {memory}")
    return "\n".join(lines)


def _count(value: float) -> str:
    """65600.0 -> "65.6k", 1234567.0 -> "1.23M", 85.5 -> "86"."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


# ---- a batch that does not fit -----------------------------------------------------------------------------------
class BatchTooLarge(RuntimeError):
    """A stage's batch does not fit the GPU: raised at its first step, with the memory it needs and the largest
    batch that fits."""


@dataclass(frozen=True)
class MemoryFit:
    """Peak memory of a step as a line in its batch rows B: peak(B) = fixed + B · per_row, bytes."""

    fixed: float                                 # bytes that do not grow with the batch (weights, states, teacher)
    per_row: float                               # bytes each row of seq_len tokens adds (activations, logits)

    def peak(self, rows: int) -> float:
        return self.fixed + rows * self.per_row

    def largest(self, limit: float) -> int:
        """The most rows whose peak stays within ``limit`` bytes (0 when even one row does not)."""
        return max(0, math.floor((limit - self.fixed) / self.per_row))


def fit_memory(peaks: dict[int, float]) -> MemoryFit:
    """The least-squares line through the peak memory (bytes) measured at two or more batch sizes (rows)."""
    if len(peaks) < 2:
        raise ValueError(f"a line needs peaks at two batch sizes or more, got {sorted(peaks)}")
    rows, values = list(peaks), list(peaks.values())
    mean_b, mean_p = statistics.fmean(rows), statistics.fmean(values)
    per_row = (sum((b - mean_b) * (p - mean_p) for b, p in zip(rows, values))
               / sum((b - mean_b) ** 2 for b in rows))
    if per_row <= 0:
        raise ValueError(f"peak memory does not grow with the batch ({peaks}): cannot extrapolate")
    return MemoryFit(mean_p - per_row * mean_b, per_row)


class DeviceMemory(Protocol):
    """What the probes need of a device's memory (``CudaMemory``; tests pass a stand-in)."""

    def release(self) -> None: ...      # free what nothing references any more (gc, the allocator's cache)
    def reset_peak(self) -> None: ...   # restart the peak count
    def peak(self) -> int: ...          # bytes held at most since ``reset_peak`` (CUDA: reserved by the allocator)
    def limit(self) -> int: ...         # bytes the allocations of this process may reach
    def total(self) -> int: ...         # the device's memory, bytes
    def name(self) -> str: ...          # the device's name ("NVIDIA H200")


class CudaMemory:
    """``DeviceMemory`` of a CUDA device, through the caching allocator's counters."""

    def __init__(self, device: torch.device):
        # an index always: some counters (the per-process memory fraction) refuse a bare "cuda"
        self.device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)

    def release(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        # reserved, not allocated: the allocator's limit (``limit``) is on the memory it reserves, and a step's
        # reserved peak includes the partly used segments its allocations leave, which no later batch can use
        return torch.cuda.max_memory_reserved(self.device)

    def limit(self) -> int:
        # free memory plus what the allocator holds (the device less other processes' memory and the CUDA context),
        # within the share of the device this process may take (torch.cuda.set_per_process_memory_fraction)
        free, total = torch.cuda.mem_get_info(self.device)
        share = torch.cuda.get_per_process_memory_fraction(self.device) * total
        return int(min(free + torch.cuda.memory_reserved(self.device), share))

    def total(self) -> int:
        return torch.cuda.mem_get_info(self.device)[1]

    def name(self) -> str:
        return device_name(self.device)


def probe_peaks(step: Callable[[int], None], memory: DeviceMemory,
                rows: tuple[int, ...] = PROBE_ROWS) -> dict[int, int]:
    """Peak memory (bytes) of ``step(b)`` for each batch of ``b`` rows in ``rows``, smallest first, stopping at the
    first that runs out of memory (``torch.cuda.OutOfMemoryError``); the batches that fit -> their peaks."""
    peaks: dict[int, int] = {}
    for b in sorted(rows):
        memory.release()
        memory.reset_peak()
        try:
            step(b)
        except torch.cuda.OutOfMemoryError:
            break
        peaks[b] = memory.peak()
    memory.release()
    return peaks


@dataclass(frozen=True)
class BatchFit:
    """Whether and how a stage's batch fits: the probes' peaks, the fitted line and the device's limits."""

    rows: int                                    # batch rows asked (each of seq_len tokens)
    seq_len: int                                 # tokens per row
    peaks: dict[int, int]                        # rows -> peak bytes of a forward and backward, the batches probed
    held: int                                    # bytes held across steps that a probe does not hold: AdamW's
                                                 #   moments and the gradients
    limit: int                                   # bytes this process may allocate on the device
    total: int                                   # the device's memory, bytes
    device: str                                  # the device's name

    @property
    def fit(self) -> MemoryFit | None:
        """The peak of a whole step against its rows (the probes' line plus ``held``); None with fewer than two
        batches probed."""
        if len(self.peaks) < 2:
            return None
        line = fit_memory(self.peaks)
        return MemoryFit(line.fixed + self.held, line.per_row)

    @property
    def needed(self) -> float | None:
        """Bytes a step of the rows asked needs, estimated (None without a fit)."""
        return None if self.fit is None else self.fit.peak(self.rows)

    @property
    def largest(self) -> int:
        """The most rows that fit, below the rows asked (which did not fit), with ``HEADROOM`` kept free."""
        if self.fit is None:
            return max(self.peaks, default=0)
        return min(self.rows - 1, self.fit.largest(self.limit * (1 - HEADROOM)))

    @property
    def micro_batch(self) -> int | None:
        """The most rows per forward and backward that fit and divide the batch (a micro-batch that keeps the
        step); None when not even one row fits."""
        return max(d for d in range(1, self.largest + 1) if self.rows % d == 0) if self.largest else None

    def message(self, stage: str) -> str:
        """The error: the batch asked, the memory it needs, the device's, the largest batch that fits and the flag."""
        asked = (f"stage {stage!r}: a batch of {self.rows} x {self.seq_len} tokens does not fit on {self.device} "
                 f"({self.total / GIB:.1f} GiB, {self.limit / GIB:.1f} GiB of it free for this run)")
        if self.fit is not None:
            fit = self.fit
            probed = " and ".join(str(b) for b in sorted(self.peaks))
            asked += (f": a step needs about {self.needed / GIB:.1f} GiB (measured at {probed} rows: "
                      f"{fit.fixed / GIB:.2f} GiB + {fit.per_row / GIB:.3f} GiB per row, AdamW state and gradients "
                      f"included)")
        elif self.peaks:
            asked += f": one row takes {self.peaks[min(self.peaks)] / GIB:.2f} GiB and two do not fit"
        if self.largest == 0:
            return asked + f"; not even one row of {self.seq_len} tokens fits: pass a shorter --seq-len"
        part = self.micro_batch
        return (asked + f"; the largest batch that fits is {self.largest}: pass --batch-size {self.largest} (in a "
                f"--config file: the stage's batch_size), --micro-batch {part} to keep the batch and run each step in "
                f"parts of {part} rows (the same step in more time; the stage's micro_batch; --fit-micro-batch "
                f"chooses it by itself), or a shorter --seq-len")


def batch_fit(step: Callable[[int], None], rows: int, seq_len: int, memory: DeviceMemory, held: int = 0,
              probe_rows: tuple[int, ...] = PROBE_ROWS) -> BatchFit:
    """Probe ``step`` (a forward and backward of ``b`` rows that leaves the weights unchanged) at ``probe_rows``
    and describe how a batch of ``rows`` rows fits ``memory`` (``held``: bytes a real step holds that the probes
    do not)."""
    peaks = probe_peaks(step, memory, tuple(b for b in probe_rows if b < rows))
    return BatchFit(rows, seq_len, peaks, held, memory.limit(), memory.total(), memory.name())


def unprobed_message(stage: str, batch_size: int, rows: int, seq_len: int, processes: int,
                     memory: DeviceMemory) -> str:
    """The error of a run of several processes, whose steps every rank takes together (no rank probes alone):
    ``batch_size`` the global batch, ``rows`` this rank's share."""
    return (f"stage {stage!r}: the first step of a batch of {batch_size} x {seq_len} tokens ({rows} rows on this one "
            f"of {processes} processes) ran out of memory on {memory.name()} ({memory.total() / GIB:.1f} GiB): pass a "
            f"smaller --batch-size, or --fsdp to shard the teacher and the student")


def held_bytes(opt: torch.optim.Optimizer, trained: Iterable[torch.nn.Parameter]) -> int:
    """Bytes a training step holds that a probe (forward and backward, gradients dropped) does not: the gradients
    of ``trained`` and AdamW's two moments (exp_avg, exp_avg_sq) of each optimised parameter that has none yet
    (the optimiser's own parameters: fp32 master copies where it keeps them)."""
    grads = sum(p.numel() * p.element_size() for p in {id(p): p for p in trained}.values())
    moments = sum(2 * p.numel() * p.element_size() for group in opt.param_groups for p in group["params"]
                  if not opt.state.get(p))
    return grads + moments
