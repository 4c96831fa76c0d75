"""Learning-rate schedules as pure functions of the step: warmup + cosine, or warmup-stable-decay (WSD)."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: str = "cosine", warmup: float = 0.05,
          min_lr_ratio: float = 0.1, decay: float = 0.2) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    cosine: linear warmup over ``warmup``·total steps, then cosine from peak to min_lr_ratio·peak.
    wsd:    linear warmup, constant at peak, then linear decay to min_lr_ratio·peak over the last ``decay``·total.
    """
    total_steps = max(total_steps, 1)
    warmup_steps = int(round(warmup * total_steps))
    floor = min_lr_ratio * peak_lr
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return floor + (peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if schedule == "wsd":
        decay_start = total_steps - int(round(decay * total_steps))
        if step < decay_start:
            return peak_lr
        progress = (step - decay_start) / max(total_steps - decay_start, 1)
        return peak_lr + (floor - peak_lr) * min(progress, 1.0)
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'wsd'")
