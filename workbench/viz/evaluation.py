"""Figures of the evaluation tasks: the scores of several models side by side (a teacher and its students, with
each student's retention), and the needle-in-a-haystack grid (exact match by needle depth and prompt length) as a
heatmap, one panel per model on one colour scale.

    scores = workbench.evaluation.scores.task_rows({"teacher": teacher_json, "hybrid": student_json}, "teacher")
    task_scores(scores)      # grouped bars per task, chance marked; retention in a second panel

Pure functions: rows in, a figure out. The rows (scores, retention, chance per task and model) are computed in
``workbench.evaluation.scores`` from results JSONs; this module only draws them. A needle grid is
``scores[depth][length]`` (NaN where a cell has no item, e.g. after a ``--limit``) with the depths (fractions 0-1)
and lengths (tokens) of its rows and columns, as ``workbench.evaluation.needle.grid`` makes them from a results
file's samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz.curves import COLOURS

COLOURSCALE = "Viridis"   # 0 (never found) to 1 (always found)
TEACHER_COLOUR = "#7f7f7f"  # the teacher's bars; students take workbench.viz.curves.COLOURS in order


# ---- task scores side by side ------------------------------------------------------------------------------------
def _colours(models: Sequence[str], teacher: str | None) -> dict[str, str]:
    students = [name for name in models if name != teacher]
    return {**({teacher: TEACHER_COLOUR} if teacher is not None else {}),
            **{name: COLOURS[i % len(COLOURS)] for i, name in enumerate(students)}}


def _hover(row: dict, name: str) -> str:
    lines = [f"<b>{name}</b>", f"{row['task']} ({row['scoring']})"]
    if row["scores"][name] is not None:
        lines.append(f"{row['metric']} {row['scores'][name]:.3f} (n={row['counts'][name]})")
        if row["steps"][name] is not None:
            lines.append(f"checkpoint step {row['steps'][name]}")
    kept = row["retention"].get(name)
    if kept is not None:
        lines.append(f"retention {kept:.2f}")
    if row["chance"] is not None:
        lines.append(f"chance {row['chance']:.3g}")
    return "<br>".join(lines)


def task_scores(scores, title: str = "Task scores: teacher and students side by side") -> go.Figure:
    """Grouped bars of ``scores`` (a ``workbench.evaluation.scores.TaskScores``), one group per task and one bar per
    model (the teacher first, in grey), each task's chance level a dashed black line across its group; with a teacher
    and students, a second panel of each student's retention (1: the teacher's score, 0: chance). Hovering a bar shows
    its score, n, checkpoint step and retention; a missing bar is a task the model was not scored on (or scored with
    another metric)."""
    rows, teacher = scores.rows, scores.teacher
    colours = _colours(scores.models, teacher)
    order = list(colours)
    students = order[1:] if teacher is not None else []
    panels = 2 if students else 1
    titles = ["score (each task's metric)", "retention (s − chance) / (t − chance)"][:panels]
    fig = make_subplots(rows=panels, cols=1, shared_xaxes=True, vertical_spacing=0.16, subplot_titles=titles,
                        row_heights=[0.62, 0.38] if panels == 2 else None)
    x = list(range(len(rows)))
    for name in order:
        hover = [_hover(row, name) for row in rows]
        fig.add_trace(go.Bar(x=x, y=[row["scores"][name] for row in rows], name=name, legendgroup=name,
                             marker_color=colours[name], hovertext=hover, hoverinfo="text"), row=1, col=1)
        if name in students:
            fig.add_trace(go.Bar(x=x, y=[row["retention"][name] for row in rows], name=name, legendgroup=name,
                                 showlegend=False, marker_color=colours[name], hovertext=hover, hoverinfo="text"),
                          row=2, col=1)
    chance = [(i, row["chance"]) for i, row in enumerate(rows) if row["chance"] is not None]
    fig.add_trace(go.Scatter(x=[v for i, _ in chance for v in (i - 0.42, i + 0.42, None)],
                             y=[v for _, c in chance for v in (c, c, None)], mode="lines", name="chance",
                             line=dict(color="black", dash="dash", width=2), hoverinfo="skip"), row=1, col=1)
    if students:
        fig.add_hline(y=1.0, line=dict(color=TEACHER_COLOUR, dash="dot"), annotation_text="teacher",
                      annotation_position="top left", row=2, col=1)
        fig.add_hline(y=0.0, line=dict(color="black", dash="dash", width=1), row=2, col=1)
        fig.update_yaxes(title_text="retention", row=2, col=1)
    top = max([1.0, *(s for row in rows for s in row["scores"].values() if s is not None)])
    fig.update_yaxes(title_text="score", range=[0, 1.05 * top], row=1, col=1)
    labels = [f"{row['task']}<br>{row['scoring']}" for row in rows]
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=labels, range=[-0.6, len(rows) - 0.4], showticklabels=True)
    fig.update_layout(title=dict(text=title), barmode="group", width=950, height=640 if panels == 2 else 420,
                      legend=dict(title=dict(text="model")))
    if not rows:
        fig.add_annotation(text="no task scores in these results", showarrow=False, xref="paper", yref="paper",
                           x=0.5, y=0.5, font_size=16)
    return fig


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
