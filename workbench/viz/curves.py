"""Training curves from a run's events: losses per stage and term, and evaluations (student vs teacher perplexity,
KL, agreement).

Pure functions: events in, plotly figures out. The events are the typed ones of ``workbench.distill.events``
(``read_typed``) or the lines as read (``read_events``: dicts, parsed here); only "step" and "eval" events are drawn,
lines that are no declared event are skipped. Values the log wrote as strings ("nan", "inf") read back as floats; a
step logged twice (a resumed run) keeps its last value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.distill.events import Eval, Event, Step, Unreadable, select

COLOURS = px.colors.qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
EVAL_METRICS = ("ppl_student", "ppl_teacher", "kl", "agreement")  # the Eval fields drawn

Events = Iterable[Event | Unreadable | dict]


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font_size=16)
    return fig


def loss_series(events: Events) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(stage, term) -> (steps, values) from the "step" events, in order of first appearance, steps ascending; the
    terms are "loss" (the total) and every "loss_<term>"."""
    series: dict[tuple[str, str], dict[int, float]] = {}
    for e in select(events, Step):
        for term, value in e.loss_values().items():
            series.setdefault((e.stage, term), {})[e.step] = value
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in series.items()}


def stage_starts(events: Events) -> list[tuple[str, int]]:
    """(stage, first step) for each stage of the "step" events, in order."""
    starts: dict[str, int] = {}
    for e in select(events, Step):
        starts[e.stage] = min(starts.get(e.stage, e.step), e.step)
    return sorted(starts.items(), key=lambda kv: kv[1])


def loss_curves(events: Events, title: str = "Training losses") -> go.Figure:
    """One line per (stage, loss term) against the optimiser step, log y axis, a dashed vertical line where each
    stage after the first begins. A term keeps its colour across stages; stages differ in dash. A stage whose total
    equals its only term draws that line once."""
    events = select(events, Step)
    series = loss_series(events)
    fig = go.Figure()
    fig.update_layout(title=dict(text=title), width=950, height=480,
                      legend=dict(title=dict(text="stage · loss term")))
    fig.update_xaxes(title_text="optimiser step")
    fig.update_yaxes(title_text="loss (log scale)", type="log",
                     exponentformat="power")
    if not series:
        return _empty(fig, "no step events with a loss yet")
    for stage in {stage for stage, _ in series}:  # a one-term stage's total is that term: draw it once
        parts = [v for (st, term), v in series.items() if st == stage and term != "loss"]
        if len(parts) == 1 and series.get((stage, "loss")) == parts[0]:
            del series[(stage, "loss")]
    terms = list(dict.fromkeys(term for _, term in series))
    starts = stage_starts(events)
    stages = [s for s, _ in starts]
    for (stage, term), (steps, values) in series.items():
        positive = [v if v > 0 and math.isfinite(v) else None for v in values]  # log axis: drop 0, nan, inf
        fig.add_trace(go.Scatter(
            x=steps, y=values if all(p is not None for p in positive) else positive, mode="lines",
            name=f"{stage or '—'} · {term}", legendgroup=term,
            line=dict(color=COLOURS[terms.index(term) % len(COLOURS)], dash=DASHES[stages.index(stage) % len(DASHES)]),
            hovertemplate="step %{x}<br>" + term + " = %{y:.4g}<extra>" + (stage or "—") + "</extra>"))
    for i, (stage, step) in enumerate(starts):
        if i > 0:
            fig.add_vline(x=step - 0.5, line=dict(color="grey", dash="dash", width=1))
        fig.add_annotation(x=step, y=1.0, yref="paper", text=f"<b>{stage or '—'}</b>", showarrow=False,
                           xanchor="left", yanchor="bottom", font_size=11)
    fig.update_layout(margin=dict(t=90))
    return fig


def eval_series(events: Events) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) for ppl_student, ppl_teacher, kl and agreement of the "eval" events."""
    found: dict[str, dict[int, float]] = {}
    for e in select(events, Eval):
        for key in EVAL_METRICS:
            found.setdefault(key, {})[e.step] = getattr(e, key)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in found.items()}


def eval_curves(events: Events, title: str = "Held-out evaluation") -> go.Figure:
    """Three panels sharing the step axis: student and teacher perplexity (log scale), KL(teacher ‖ student) and
    top-1 agreement with the teacher."""
    series = eval_series(events)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("Perplexity", "KL(teacher ‖ student)", "Top-1 agreement with the teacher"))
    styles = {"ppl_student": ("student", 1, dict(color=COLOURS[0])),
              "ppl_teacher": ("teacher", 1, dict(color="black", dash="dash")),
              "kl": ("KL", 2, dict(color=COLOURS[1])),
              "agreement": ("agreement", 3, dict(color=COLOURS[2]))}
    for key, (name, row, line) in styles.items():
        if key in series:
            steps, values = series[key]
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name, line=line,
                                     hovertemplate="step %{x}<br>" + name + " = %{y:.4g}<extra></extra>"),
                          row=row, col=1)
    fig.update_yaxes(title_text="perplexity (log)", type="log", dtick=1, row=1, col=1)  # labels at powers of 10
    fig.update_yaxes(title_text="KL (nats/token)", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title_text="agreement (fraction)", range=[0, 1.02], row=3, col=1)
    fig.update_xaxes(title_text="optimiser step", row=3, col=1)
    fig.update_layout(title=dict(text=title), width=900, height=750)
    if not series:
        _empty(fig, "no eval events yet")
    return fig
