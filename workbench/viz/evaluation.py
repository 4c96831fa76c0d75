"""Figures of the shipped evaluation tasks: the needle-in-a-haystack grid (exact match by needle depth and prompt
length) as a heatmap, one panel per model on one colour scale.

Pure functions on plain numbers: a grid is ``scores[depth][length]`` (NaN where a cell has no item, e.g. after a
``--limit``) with the depths (fractions 0-1) and lengths (tokens) of its rows and columns, as
``workbench.evaluation.needle.grid`` makes them from a results file's samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLOURSCALE = "Viridis"   # 0 (never found) to 1 (always found)


def length_label(tokens: int) -> str:
    """512 -> "512", 2048 -> "2k", 8192 -> "8k"."""
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def _grid(scores: Sequence[Sequence[float]], depths: Sequence[float], lengths: Sequence[int]) -> np.ndarray:
    """scores[depth][length] as a (depths, lengths) float array; a ValueError when the shapes disagree."""
    if len(scores) != len(depths) or any(len(row) != len(lengths) for row in scores):
        raise ValueError(f"scores must be {len(depths)} rows (depths) of {len(lengths)} values (lengths), got "
                         f"{[len(row) for row in scores]}")
    return np.array(scores, dtype=np.float64).reshape(len(depths), len(lengths))


def _heatmap(z: np.ndarray, depths: Sequence[float], lengths: Sequence[int],
             counts: Sequence[Sequence[int]] | None) -> go.Heatmap:
    text = [["<br>".join(([] if np.isnan(v) else [f"{v:.2f}"]) + ([] if counts is None else [f"n={counts[i][j]}"]))
             for j, v in enumerate(row)] for i, row in enumerate(z)]
    return go.Heatmap(z=z, x=[length_label(n) for n in lengths], y=[f"{d:.0%}" for d in depths], text=text,
                      texttemplate="%{text}", coloraxis="coloraxis",
                      hovertemplate="length %{x}, depth %{y}<br>exact match %{z:.3f}<extra></extra>")


def needle_heatmap(scores: Sequence[Sequence[float]], depths: Sequence[float], lengths: Sequence[int],
                   counts: Sequence[Sequence[int]] | None = None, title: str = "Needle in a haystack") -> go.Figure:
    """Exact match per (needle depth, prompt length): depth on y (0% at the top: the needle opens the passage),
    length on x, the score (and the item count, if given) written in each cell; blank cells have no item."""
    return needle_heatmaps({"": scores}, depths, lengths, None if counts is None else {"": counts}, title)


def needle_heatmaps(panels: Mapping[str, Sequence[Sequence[float]]], depths: Sequence[float],
                    lengths: Sequence[int], counts: Mapping[str, Sequence[Sequence[int]]] | None = None,
                    title: str = "Needle in a haystack") -> go.Figure:
    """One heatmap per model (``panels``: name -> scores[depth][length]) side by side, one colour scale from 0 to
    1, so that a teacher and its students read at a glance."""
    if not panels:
        raise ValueError("no grid to draw: pass at least one model's scores")
    grids = {name: _grid(scores, depths, lengths) for name, scores in panels.items()}
    fig = make_subplots(rows=1, cols=len(grids), subplot_titles=[name for name in grids] if len(grids) > 1 else None,
                        shared_yaxes=True, horizontal_spacing=0.04)
    for col, (name, z) in enumerate(grids.items(), start=1):
        fig.add_trace(_heatmap(z, depths, lengths, None if counts is None else counts[name]), row=1, col=col)
        fig.update_xaxes(title_text="prompt length (tokens)", type="category", row=1, col=col)
    fig.update_yaxes(title_text="needle depth", type="category", autorange="reversed", row=1, col=1)
    fig.update_layout(title=title, height=420, coloraxis=dict(colorscale=COLOURSCALE, cmin=0.0, cmax=1.0,
                                                              colorbar=dict(title="exact match")))
    return fig
