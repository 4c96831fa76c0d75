"""Tick choices the figures share, so that every axis carries labels a reader can use.

Plotly's own ticks fail two ways on our data: a log axis told to label only powers of ten (``dtick=1``) shows no
label at all when the data stay within one decade (perplexity 25 to 80, 20 to 60 tokens/s), and a linear step axis
over a few steps gets ticks at half steps (0.5, 1.5, ...) that no optimiser ever took. Pure functions: a data
range in, tick positions out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

NICE = (1, 2, 5)            # mantissas of "round" numbers: 1, 2, 5, 10, 20, 50, ...
MAX_STEP_TICKS = 10         # at most this many labelled steps on a step axis
MIN_LOG_TICKS = 3           # a log axis takes denser round numbers until it has this many labels


def _finite_positive(values: Iterable) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]


def nice_step(span: float, target: int = MAX_STEP_TICKS) -> float:
    """The smallest round number (1, 2 or 5 times a power of ten) d with span / d <= target."""
    if span <= 0:
        return 1.0
    raw = span / target
    exponent = math.floor(math.log10(raw))
    for mantissa in (*NICE, 10):
        d = mantissa * 10.0 ** exponent
        if d >= raw:
            return d
    return 10.0 ** (exponent + 1)


def step_ticks(last_step: int, first_step: int = 0) -> dict:
    """Axis settings for an optimiser-step axis from ``first_step`` to ``last_step``: ticks on whole steps only,
    evenly spaced by a round number (at most MAX_STEP_TICKS labels)."""
    return dict(tick0=0, dtick=max(1, int(nice_step(last_step - first_step))), tickformat="d")


def log_ticks(values: Iterable, max_ticks: int = 8) -> list[float] | None:
    """Tick positions (data units) for a log axis holding ``values``: the sparsest of powers of ten, 1-2-5 and 1..9
    times powers of ten that puts MIN_LOG_TICKS ticks inside the data's range; when none does (a range within about
    a decade's tenth), whichever of 1..9 and round linear steps gives more. At most ``max_ticks`` (every k-th kept).
    None without a finite positive value (let plotly choose); non-positive and non-finite values are ignored (a log
    axis cannot show them)."""
    data = _finite_positive(values)
    if not data:
        return None
    lo, hi = min(data), max(data)
    if lo == hi:
        return [lo]
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1,), NICE, tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in mantissas]
        inside = [round_sig(t) for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(inside) >= MIN_LOG_TICKS:
            return _thin(inside, max_ticks)
    d = nice_step(hi - lo, max_ticks)
    start = math.ceil(lo / d) * d
    linear = [round_sig(start + i * d) for i in range(int((hi - start) / d + 1e-9) + 1)]
    return _thin(linear if len(linear) >= len(inside) else inside, max_ticks) or [lo, hi]


def _thin(ticks: list[float], max_ticks: int) -> list[float]:
    """Every k-th tick, k the smallest that leaves at most ``max_ticks``."""
    return ticks[:: math.ceil(len(ticks) / max_ticks)] if ticks else ticks


def round_sig(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits (removes float noise such as 3 * 0.1 = 0.30000000000000004)."""
    return float(f"{x:.{digits}g}")
