"""Quality against training budget: held-out perplexity ratio (student / teacher) against training tokens per teacher
parameter, one line per kind of student, with published students drawn beside as anchors.

Pure function: points in, a figure out. A point is one finished run: {"row", "tokens_per_parameter", "ppl_ratio"}
(the records ``benchmarks/quality_curve.py`` writes hold these fields). Runs of one row at one budget (several seeds)
are drawn as their mean with a bar from the lowest to the highest.

The anchors (``ANCHORS``) are the numbers the papers report, drawn as published: a line where a paper gives a curve
over budgets, points at the paper's budget otherwise, and a horizontal line where the figure has no budget for it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import plotly.graph_objects as go

from workbench.analysis.anchors import ANCHORS, Anchor
from workbench.viz.axes import log_ticks
from workbench.viz.curves import COLOURS

ANCHOR_COLOUR = "#7f7f7f"
RATIO_TICKS = (1.0, 1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # where ratios are read


def ratio_ticks(values: Iterable[float], max_ticks: int = 10) -> list[float]:
    """Ticks of a perplexity-ratio axis holding ``values``: the ``RATIO_TICKS`` within 3% of their range (dense near
    1, where students and targets sit and powers of ten would leave the axis bare), each at least 1/``max_ticks`` of
    the axis (in log units) above the last one kept, so labels do not overlap; the range's two ends when none is
    inside."""
    lo, hi = min(values) * 0.97, max(values) * 1.03
    gap = math.log10(hi / lo) / max_ticks
    ticks: list[float] = []
    for t in RATIO_TICKS:
        if lo <= t <= hi and (not ticks or math.log10(t / ticks[-1]) >= gap):
            ticks.append(t)
    return ticks or [round(min(values), 3), round(max(values), 3)]


def read_records(file: str | Path) -> list[dict]:
    """The run records of a quality-curve file (``benchmarks/quality_curve.py --json``): the points
    ``quality_curve`` draws. A ValueError naming the file when it holds no "records" list."""
    data = json.loads(Path(file).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"{file} is not a quality-curve file (no \"records\" list): write one with "
                         f"benchmarks/quality_curve.py --json")
    return data["records"]


def _labelled_line(fig: go.Figure, ratio: float, label: str, style: dict, side: str) -> None:
    """A horizontal line at ``ratio`` across the plot, ``label`` just above it at the ``side`` end. The label is
    placed by hand: on a log axis an annotation's y is in log10 units, which ``add_hline``'s own label ignores."""
    fig.add_hline(y=ratio, line=style)
    fig.add_annotation(x=0 if side == "left" else 1, xref="x domain", xanchor=side, y=math.log10(ratio), yref="y",
                       yanchor="bottom", text=label, showarrow=False, font_color=ANCHOR_COLOUR)


def _grouped(points: Iterable[Mapping]) -> dict[str, dict[float, list[float]]]:
    """row -> tokens per parameter -> the ratios of its runs there (rows in order of first appearance)."""
    rows: dict[str, dict[float, list[float]]] = {}
    for p in points:
        rows.setdefault(p["row"], {}).setdefault(float(p["tokens_per_parameter"]), []).append(float(p["ppl_ratio"]))
    return rows


def quality_curve(points: Iterable[Mapping], anchors: Sequence[Anchor] = ANCHORS, title: str | None = None,
                  targets: Mapping[str, float] | None = None) -> go.Figure:
    """Held-out perplexity ratio against training tokens per teacher parameter (both axes logarithmic): a line per
    row through the mean of its runs at each budget, a bar from their lowest to highest ratio, and the ``anchors``
    in grey. ``targets`` (row -> ratio) draws a short dotted line at a row's target ratio, in its colour."""
    rows = _grouped(points)
    fig = go.Figure()
    xs_all: list[float] = []
    ys_all: list[float] = []
    for k, (row, budgets) in enumerate(rows.items()):
        colour = COLOURS[k % len(COLOURS)]
        xs = sorted(budgets)
        means = [statistics.fmean(budgets[x]) for x in xs]
        hi = [max(budgets[x]) - m for x, m in zip(xs, means)]
        lo = [m - min(budgets[x]) for x, m in zip(xs, means)]
        runs = [len(budgets[x]) for x in xs]
        fig.add_scatter(x=xs, y=means, name=row, mode="lines+markers", line_color=colour,
                        error_y=dict(type="data", array=hi, arrayminus=lo, visible=max(runs) > 1),
                        customdata=runs, hovertemplate="%{x:.3g} tokens/parameter<br>ratio %{y:.4g} "
                        "(%{customdata} runs)<extra>" + row + "</extra>")
        xs_all += xs
        ys_all += [m - d for m, d in zip(means, lo)] + [m + d for m, d in zip(means, hi)]
        if targets and row in targets:
            fig.add_scatter(x=[min(xs), max(xs)], y=[targets[row]] * 2, mode="lines", showlegend=False,
                            line=dict(color=colour, dash="dot", width=1), hoverinfo="skip")
            ys_all.append(targets[row])
    for n, anchor in enumerate(anchors):
        ys_all += list(anchor.ratios)
        style = dict(color=ANCHOR_COLOUR, dash=("dash", "dot", "dashdot")[n % 3], width=1.5)
        if anchor.tokens_per_parameter is None:
            for ratio in anchor.ratios:
                _labelled_line(fig, ratio, anchor.label, style, "left")
            continue
        xs_all += list(anchor.tokens_per_parameter)
        single = len(set(anchor.tokens_per_parameter)) == 1
        # labels of points at one budget alternate sides, so close ratios (1.03, 1.09) do not print over each other
        sides = [("middle right", "middle left")[i % 2] for i in range(len(anchor.ratios))]
        fig.add_scatter(x=list(anchor.tokens_per_parameter), y=list(anchor.ratios), name=anchor.label,
                        mode="markers+text" if single else "lines+markers",
                        text=list(anchor.point_labels) or None, textposition=sides,
                        marker=dict(color=ANCHOR_COLOUR, symbol="diamond-open", size=9), line=style,
                        textfont_color=ANCHOR_COLOUR)
    fig.update_layout(title=title or "Held-out perplexity ratio against training tokens per teacher parameter",
                      template="plotly_white", legend_orientation="h", legend_y=-0.25, height=560)
    fig.update_xaxes(type="log", title="training tokens per teacher parameter", tickvals=log_ticks(xs_all))
    ys_all.append(1.0)   # the teacher itself: the floor every ratio approaches
    _labelled_line(fig, 1.0, "teacher", dict(color=ANCHOR_COLOUR, width=1), "right")
    lo, hi = min(ys_all), max(ys_all)
    fig.update_yaxes(type="log", title="held-out perplexity ratio, student / teacher", tickvals=ratio_ticks(ys_all),
                     range=[math.log10(lo) - 0.02, math.log10(hi) + 0.04])
    if not rows:
        fig.add_annotation(text="no finished runs yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig
