"""Training curves from a run's events: losses per stage and term, learning rate, gradient norm and evaluations
(student vs teacher perplexity, KL, agreement), with where each stage began and where the run was resumed.

Pure functions: events in, plotly figures out. The events are the typed ones of ``workbench.distill.events``
(``read_typed``) or the lines as read (``read_events``: dicts, parsed here); lines that are no declared event are
skipped. Values the log wrote as strings ("nan", "inf") read back as floats; a step logged twice (a resumed run)
keeps its last value.

    loss_curves(events)        losses of every stage and term (log y)
    eval_curves(events)        held-out perplexity, KL and agreement, three panels
    training_figure(events)    one figure of a whole run: a labelled progress bar, losses, learning rate, gradient
                               norm and the evaluations, training tokens on a second axis (what ``workbench.live``
                               redraws as a run writes)

Markers: a dashed grey line before the first step of each stage after the first (from "stage_start" events, or the
first "step" of each stage in logs without them), labelled with the stage's name; a dotted red line labelled
"resumed" after the last step a resumed process continued from ("resume" events). Step axes tick whole steps only.
``smoothing`` (0 to 1, TensorBoard's slider) draws an exponential moving average over the raw values, which stay
visible, faint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.distill.events import (
    Error,
    Eval,
    Event,
    Resume,
    RunEnd,
    RunStart,
    StageStart,
    Step,
    Unreadable,
    select,
)
from workbench.viz.axes import log_ticks, step_ticks

COLOURS = px.colors.qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
EVAL_METRICS = ("ppl_student", "ppl_teacher", "kl", "agreement")  # the Eval fields drawn
STAGE_LINE = dict(color="grey", dash="dash", width=1)              # before the first step of a later stage
RESUME_LINE = dict(color="#d62728", dash="dot", width=1.5)         # after the step a resumed process continued from
RAW_OPACITY = 0.25                                                  # raw values under a smoothed curve
LABEL_STAGGER = 0.09       # stage labels alternate between the panel's top and this far (domain share) below it
LOSS_HEADROOM = 0.3        # share of the loss axis' span kept free above the curves for the stage labels
LOG_PAD, LOG_MIN_SPAN = 0.05, 0.01  # margin around the data on a fixed log range, and its least span (decades)
PROGRESS_COLOURS = {"starting": "#636efa", "running": "#636efa", "done": "#00a65a", "stopped": "#d62728"}

Events = Iterable[Event | Unreadable | dict]


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font_size=16)
    return fig


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _positive(values: list[float | None]) -> list[float | None]:
    """The values a log axis can show: 0, negatives, NaN and inf become gaps (None)."""
    return [v if _finite(v) and v > 0 else None for v in values]


def _tick_text(v: float) -> str:
    return f"{v:g}"


def compact(n: float) -> str:
    """A count in few characters: 512, 12.3k, 4.1M, 2.8B."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"


# ---- series ------------------------------------------------------------------------------------------------------
def ema(values: list[float | None], smoothing: float) -> list[float | None]:
    """Exponential moving average with bias correction (TensorBoard's smoothing): s_t = w s_{t-1} + (1 - w) x_t,
    shown as s_t / (1 - w^n) after n finite values, so the start is not pulled towards 0. ``smoothing`` = w in
    [0, 1); 0 returns the values. Missing and non-finite values stay gaps and do not enter the average."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1) (0: none, 0.9: strong), got {smoothing}")
    out: list[float | None] = []
    average, weight = 0.0, 0.0
    for v in values:
        if not _finite(v):
            out.append(None)
            continue
        average = smoothing * average + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(average / weight)
    return out


def loss_series(events: Events) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    """(stage, term) -> (steps, values) from the "step" events, in order of first appearance, steps ascending; the
    terms are "loss" (the total) and every "loss_<term>"."""
    series: dict[tuple[str, str], dict[int, float]] = {}
    for e in select(events, Step):
        for term, value in e.loss_values().items():
            series.setdefault((e.stage, term), {})[e.step] = value
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in series.items()}


def step_series(events: Events, field: str) -> dict[str, tuple[list[int], list[float]]]:
    """stage -> (steps, values) of the "step" events' ``field`` ("lr", "grad_norm", "tokens_per_s", ...), steps
    ascending; steps that did not log the field are left out."""
    series: dict[str, dict[int, float]] = {}
    for e in select(events, Step):
        value = getattr(e, field)
        if value is not None:
            series.setdefault(e.stage, {})[e.step] = value
    return {stage: (sorted(points), [points[s] for s in sorted(points)]) for stage, points in series.items()}


def stage_starts(events: Events) -> list[tuple[str, int]]:
    """(stage, first step) for each stage, in order: from the "stage_start" events (the stage's first step is one
    after the steps taken before it; a stage started again after a resume counts once), or, in a log without them,
    the first "step" event of each stage."""
    starts: dict[str, int] = {}
    typed = select(events, StageStart, Step)
    announced = [e for e in typed if isinstance(e, StageStart)]
    for e in announced or typed:
        first = e.step + 1 if isinstance(e, StageStart) else e.step
        starts[e.stage] = min(starts.get(e.stage, first), first)
    return sorted(starts.items(), key=lambda kv: kv[1])


def resume_steps(events: Events) -> list[int]:
    """The global steps each resumed process continued after (its checkpoint's step), in order of the log."""
    return [e.step for e in select(events, Resume)]


def tokens_by_step(events: Events) -> dict[int, int]:
    """Global step -> training tokens taken up to and with it (0 -> 0). A step's tokens are its event's ``tokens``,
    or in logs without them its stage's batch_size x seq_len from the run_start config; a step logged twice counts
    once. Empty when neither says."""
    events = list(events)
    starts = select(events, RunStart)
    per_stage = {s.name: s.batch_size * s.seq_len for s in starts[0].run_config.stages} if starts else {}
    per_step: dict[int, int] = {}
    for e in select(events, Step):
        tokens = e.tokens if e.tokens is not None else per_stage.get(e.stage)
        if tokens is None:
            return {}
        per_step[e.step] = tokens
    total, out = 0, {0: 0}
    for step in sorted(per_step):
        total += per_step[step]
        out[step] = total
    return out if per_step else {}


def tokens_at(step: int, tokens: dict[int, int]) -> int:
    """Training tokens after ``step``, from ``tokens_by_step``: those of the last logged step at or before it."""
    return tokens[max((s for s in tokens if s <= step), default=0)] if tokens else 0


@dataclass
class Progress:
    """Where a run stands, from its events."""

    step: int                           # global steps taken (the last "step" event's)
    total: int | None                   # steps of the whole run (the run_start config); None without run_start
    stage: str | None                   # the stage of the last step (or the last stage started)
    stage_idx: int | None               # its index in the config (0-based)
    stages: int | None                  # number of stages in the config
    tokens_per_s: float | None          # the last step's throughput
    state: str                          # starting (no step yet) | running | done (run_end) | stopped (an error
                                        #   ended the last attempt)
    note: str = ""                      # stopped: the first line of the error's message

    @property
    def fraction(self) -> float:
        """Share of the run's steps done, in [0, 1] (1 once done; 0 without a known total)."""
        if self.state == "done":
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def label(self) -> str:
        """One line: step, share, stage, throughput and state."""
        parts = [f"step {self.step} of {self.total} ({100 * self.fraction:.0f} %)" if self.total
                 else f"step {self.step}"]
        if self.stage is not None:
            where = f"stage {self.stage_idx + 1} of {self.stages}: " if self.stage_idx is not None and self.stages \
                else "stage "
            parts.append(where + self.stage)
        if self.tokens_per_s is not None:
            parts.append(f"{compact(self.tokens_per_s)} tokens/s")
        parts.append({"starting": "starting", "running": "running", "done": "done",
                      "stopped": f"stopped: {self.note}"}[self.state])
        return " · ".join(parts)


def progress(events: Events) -> Progress:
    """The ``Progress`` of the run whose events these are."""
    typed = select(events)
    starts = select(typed, RunStart)
    stages = starts[0].run_config.stages if starts else None
    steps = select(typed, Step)
    announced = select(typed, StageStart)
    last_step = steps[-1] if steps else None
    last_stage = announced[-1] if announced else None
    if last_step is not None and (last_stage is None or last_stage.step < last_step.step):
        stage, stage_idx = last_step.stage, last_step.stage_idx
    else:
        stage, stage_idx = (last_stage.stage, last_stage.stage_idx) if last_stage is not None else (None, None)
    attempts = select(typed, RunStart, Resume, Error)
    if select(typed, RunEnd):
        state, note = "done", ""
    elif attempts and isinstance(attempts[-1], Error):
        state, note = "stopped", attempts[-1].message.splitlines()[0] if attempts[-1].message else "error"
    else:
        state, note = ("running" if steps else "starting"), ""
    return Progress(step=max((e.step for e in steps), default=0),
                    total=sum(s.steps for s in stages) if stages else None, stage=stage, stage_idx=stage_idx,
                    stages=len(stages) if stages else None,
                    tokens_per_s=last_step.tokens_per_s if last_step is not None else None, state=state, note=note)


# ---- drawing into a figure ---------------------------------------------------------------------------------------
def _where(row: int | None, col: int | None) -> dict:
    return {} if row is None else {"row": row, "col": col}


def _add_smoothed(fig: go.Figure, steps: list[int], values: list[float | None], smoothing: float, name: str,
                  label: str, line: dict, group: str, hover_name: str, showlegend: bool = True,
                  row: int | None = None, col: int | None = None) -> None:
    """One line of ``values`` against ``steps``; with ``smoothing`` > 0 the raw values faint beneath their EMA."""
    where = _where(row, col)
    if smoothing > 0:
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"{name} (raw)", legendgroup=group,
                                 showlegend=False, line=line, opacity=RAW_OPACITY, hoverinfo="skip"), **where)
        fig.add_trace(go.Scatter(
            x=steps, y=ema(values, smoothing), customdata=values, mode="lines", name=name, legendgroup=group,
            showlegend=showlegend, line=line,
            hovertemplate=f"step %{{x}}<br>{label} = %{{y:.4g}} (EMA {smoothing:g}; raw %{{customdata:.4g}})"
                          f"<extra>{hover_name}</extra>"), **where)
        return
    fig.add_trace(go.Scatter(
        x=steps, y=values, mode="lines", name=name, legendgroup=group, showlegend=showlegend, line=line,
        hovertemplate=f"step %{{x}}<br>{label} = %{{y:.4g}}<extra>{hover_name}</extra>"), **where)


def _add_losses(fig: go.Figure, events: list, smoothing: float, row: int | None = None,
                col: int | None = None) -> list[float]:
    """One line per (stage, loss term): colour by term, dash by stage (a one-term stage's total, equal to that term,
    drawn once). Returns the values drawn (for the axis ticks)."""
    series = loss_series(events)
    for stage in {stage for stage, _ in series}:
        parts = [v for (st, term), v in series.items() if st == stage and term != "loss"]
        if len(parts) == 1 and series.get((stage, "loss")) == parts[0]:
            del series[(stage, "loss")]
    terms = list(dict.fromkeys(term for _, term in series))
    stages = [s for s, _ in stage_starts(events)]
    drawn: list[float] = []
    for (stage, term), (steps, values) in series.items():
        shown = _positive(values)                        # log axis: drop 0, nan, inf
        drawn += [v for v in shown if v is not None]
        dash = DASHES[stages.index(stage) % len(DASHES)] if stage in stages else "solid"
        _add_smoothed(fig, steps, shown, smoothing, name=f"{stage or '—'} · {term}", label=term,
                      line=dict(color=COLOURS[terms.index(term) % len(COLOURS)], dash=dash), group=term,
                      hover_name=stage or "—", row=row, col=col)
    return drawn


def _add_step_field(fig: go.Figure, events: list, field: str, label: str, smoothing: float, log: bool,
                    row: int, col: int) -> list[float]:
    """One line per stage of the step field ``field`` (dash by stage), no legend entries. Returns the values drawn."""
    stages = [s for s, _ in stage_starts(events)]
    drawn: list[float] = []
    for stage, (steps, values) in step_series(events, field).items():
        shown = _positive(values) if log else [v if _finite(v) else None for v in values]
        drawn += [v for v in shown if v is not None]
        dash = DASHES[stages.index(stage) % len(DASHES)] if stage in stages else "solid"
        _add_smoothed(fig, steps, shown, smoothing, name=f"{stage} · {label}", label=label,
                      line=dict(color="#444", dash=dash, width=1.5), group=field, hover_name=stage,
                      showlegend=False, row=row, col=col)
    return drawn


def _add_evals(fig: go.Figure, events: list, panels: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    """Perplexity (student and teacher), KL and agreement, each into its panel (metric -> (row, col)). Returns the
    values per metric."""
    series = eval_series(events)
    styles = {"ppl_student": ("student", dict(color=COLOURS[0])),
              "ppl_teacher": ("teacher", dict(color="black", dash="dash")),
              "kl": ("KL", dict(color=COLOURS[1])),
              "agreement": ("agreement", dict(color=COLOURS[2]))}
    for key, (name, line) in styles.items():
        if key in series:
            steps, values = series[key]
            row, col = panels[key]
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name, line=line,
                                     showlegend=key.startswith("ppl"),
                                     hovertemplate="step %{x}<br>" + name + " = %{y:.4g}<extra></extra>"),
                          row=row, col=col)
    return {key: values for key, (_, values) in series.items()}


def _log_axis(fig: go.Figure, values: list[float], title: str, row: int | None = None, col: int | None = None,
              headroom: float = 0.0) -> None:
    """A log y axis titled ``title`` whose labels stay readable however narrow the range (``axes.log_ticks``);
    ``headroom`` > 0 fixes its range with that share of the data's span free above the data (room for the stage
    labels, which would otherwise hide the top of the curves)."""
    shown = [v for v in values if _finite(v) and v > 0]
    fixed = {}
    if headroom and shown:
        lo, hi = math.log10(min(shown)), math.log10(max(shown))
        span = max(hi - lo, LOG_MIN_SPAN)
        fixed["range"] = [lo - LOG_PAD * span, hi + (LOG_PAD + headroom) * span]   # log axes: range in log10
    ticks = log_ticks([10 ** r for r in fixed["range"]] if fixed else shown)       # label what is visible
    labels = dict(tickmode="array", tickvals=ticks, ticktext=[_tick_text(t) for t in ticks]) if ticks else {}
    fig.update_yaxes(title_text=title, type="log", **labels, **fixed, **_where(row, col))


def _step_range(events: list) -> list[float]:
    """The x range of a step axis: half a step beyond the first and last step drawn (fixed, so that the labels of
    the markers do not stretch it)."""
    steps = [e.step for e in select(events, Step, Eval)]
    return [min(steps, default=0) - 0.5, _last_step(events) + 0.5]


def _markers(fig: go.Figure, events: list, panels: list[tuple[int | None, int | None]],
             label_panel: tuple[int | None, int | None]) -> None:
    """Stage-start and resume lines on every panel in ``panels``; their labels on ``label_panel`` only."""
    label_row, label_col = label_panel
    yref = "paper" if label_row is None else f"y{_axis_index(fig, label_row, label_col)} domain"
    xref = "x" if label_row is None else f"x{_axis_index(fig, label_row, label_col)}"
    for i, (stage, first) in enumerate(stage_starts(events)):
        for row, col in panels:
            if i > 0:
                fig.add_vline(x=first - 0.5, line=STAGE_LINE, **_where(row, col))
        fig.add_annotation(x=first - 0.5, y=1.0 - LABEL_STAGGER * (i % 2), xref=xref, yref=yref,
                           text=f"<b>{stage or '—'}</b>", showarrow=False, xanchor="left", yanchor="top",
                           font_size=10)   # alternate rows: the names of short stages side by side do not collide
    for step in resume_steps(events):
        for row, col in panels:
            fig.add_vline(x=step + 0.5, line=RESUME_LINE, **_where(row, col))
        fig.add_annotation(x=step + 0.5, y=0.0, xref=xref, yref=yref, text=f"resumed after step {step}",
                           name="resume", showarrow=False, xanchor="left", yanchor="bottom", font_size=10,
                           font_color=RESUME_LINE["color"], bgcolor="rgba(255,255,255,0.7)")


def _axis_index(fig: go.Figure, row: int, col: int) -> str:
    """The suffix of the axes of subplot (row, col): "" for the first, else its number."""
    ref = fig.get_subplot(row, col).xaxis.plotly_name  # "xaxis", "xaxis2", ...
    return ref[len("xaxis"):]


def _last_step(events: list) -> int:
    steps = [e.step for e in select(events, Step, Eval, Resume)]
    steps += [first for _, first in stage_starts(events)]
    return max(steps, default=1)


# ---- figures -----------------------------------------------------------------------------------------------------
def loss_curves(events: Events, title: str = "Training losses", smoothing: float = 0.0) -> go.Figure:
    """One line per (stage, loss term) against the optimiser step, log y axis, stage and resume markers. A term
    keeps its colour across stages; stages differ in dash. A stage whose total equals its only term draws that line
    once. ``smoothing`` in [0, 1): EMA over the raw values (drawn faint)."""
    events = list(events)
    fig = go.Figure()
    fig.update_layout(title=dict(text=title), height=480, legend=dict(title=dict(text="stage · loss term")),
                      margin=dict(t=90))
    fig.update_xaxes(title_text="optimiser step", **step_ticks(_last_step(events)))
    fig.update_yaxes(title_text="loss (log scale)", type="log", exponentformat="power")
    if not select(events, Step):
        return _empty(fig, "no step events with a loss yet")
    drawn = _add_losses(fig, events, smoothing)
    _log_axis(fig, drawn, "loss (log scale)", headroom=LOSS_HEADROOM)
    fig.update_xaxes(range=_step_range(events))
    _markers(fig, events, panels=[(None, None)], label_panel=(None, None))
    return fig


def eval_series(events: Events) -> dict[str, tuple[list[int], list[float]]]:
    """metric -> (steps, values) for ppl_student, ppl_teacher, kl and agreement of the "eval" events."""
    found: dict[str, dict[int, float]] = {}
    for e in select(events, Eval):
        for key in EVAL_METRICS:
            found.setdefault(key, {})[e.step] = getattr(e, key)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in found.items()}


def eval_curves(events: Events, title: str = "Held-out evaluation") -> go.Figure:
    """Three panels sharing the step axis, each with its own tick labels: student and teacher perplexity (log
    scale), KL(teacher ‖ student) and top-1 agreement with the teacher; stage and resume markers."""
    events = list(events)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.09,
                        subplot_titles=("Perplexity", "KL(teacher ‖ student)", "Top-1 agreement with the teacher"))
    values = _add_evals(fig, events, {"ppl_student": (1, 1), "ppl_teacher": (1, 1), "kl": (2, 1),
                                      "agreement": (3, 1)})
    _log_axis(fig, values.get("ppl_student", []) + values.get("ppl_teacher", []), "perplexity (log)", row=1, col=1,
              headroom=LOSS_HEADROOM)
    fig.update_yaxes(title_text="KL (nats/token)", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title_text="agreement (fraction)", range=[0, 1.02], row=3, col=1)
    fig.update_xaxes(showticklabels=True, range=_step_range(events), **step_ticks(_last_step(events)))
    fig.update_xaxes(title_text="optimiser step", row=3, col=1)
    fig.update_layout(title=dict(text=title), height=750)
    if not values:
        return _empty(fig, "no eval events yet")
    _markers(fig, events, panels=[(1, 1), (2, 1), (3, 1)], label_panel=(1, 1))
    return fig


TRAINING_PANELS = {"loss": (1, 1), "ppl_student": (1, 2), "ppl_teacher": (1, 2), "lr": (2, 1), "kl": (2, 2),
                   "grad_norm": (3, 1), "agreement": (3, 2)}   # what training_figure draws where (row, col)
TRAINING_HEIGHT = 900           # px of the whole figure
TRAINING_MARGIN = dict(t=190, b=60, l=70, r=30)   # px; the top holds the title, the progress bar and the tokens axis
PROGRESS_BAR = (88, 106)        # px above the panels: the bar's bottom and top edges (its label sits above it)


def _above(px_: float) -> float:
    """Paper y of a point ``px_`` pixels above the top of the panels of a training figure."""
    return 1 + px_ / (TRAINING_HEIGHT - TRAINING_MARGIN["t"] - TRAINING_MARGIN["b"])


def _progress_bar(fig: go.Figure, state: Progress) -> None:
    """A labelled bar across the figure above the panels: grey for the whole run, filled for the share done."""
    y0, y1 = (_above(p) for p in PROGRESS_BAR)
    fig.add_shape(type="rect", name="progress", xref="paper", yref="paper", x0=0, x1=1, y0=y0, y1=y1,
                  fillcolor="#e5e5e5", line_width=0, layer="below")
    fig.add_shape(type="rect", name="progress done", xref="paper", yref="paper", x0=0, x1=state.fraction, y0=y0,
                  y1=y1, fillcolor=PROGRESS_COLOURS[state.state], line_width=0)
    fig.add_annotation(name="progress label", text=state.label, xref="paper", yref="paper", x=0, y=y1,
                       xanchor="left", yanchor="bottom", showarrow=False, font_size=12)


def _tokens_axes(fig: go.Figure, events: list, last: int) -> None:
    """Training tokens on a second x axis along the top of each top-row panel: at the step axis' ticks, the tokens
    taken by then."""
    tokens = tokens_by_step(events)
    if not tokens:
        return
    ticks = step_ticks(last)
    at = list(range(0, last + 1, ticks["dtick"]))
    for col in (1, 2):
        base = _axis_index(fig, 1, col)
        number = 6 + col                                   # after the x axes of the six panels
        name = f"x{number}"
        fig.update_layout({f"xaxis{number}": dict(
            overlaying=f"x{base}", matches="x", side="top", anchor=f"y{base}", tickmode="array",
            tickvals=at, ticktext=[compact(tokens_at(s, tokens)) for s in at], title=dict(text="training tokens"),
            showgrid=False, ticks="outside")})
        fig.add_trace(go.Scatter(x=[at[0], at[-1]], y=[None, None], xaxis=name, yaxis=f"y{base}", mode="lines",
                                 showlegend=False, hoverinfo="skip", name="training tokens"))


def training_figure(events: Events, title: str = "Training", smoothing: float = 0.0) -> go.Figure:
    """The whole run in one figure: a labelled progress bar, then six panels sharing the optimiser-step axis (each
    with its own tick labels) — losses (log), learning rate, gradient norm before clipping (log) on the left;
    held-out perplexity of student and teacher (log), KL(teacher ‖ student) and top-1 agreement on the right —
    with stage and resume markers on every panel and training tokens along the top. ``smoothing`` in [0, 1): EMA
    of losses and gradient norm over their raw values (drawn faint)."""
    events = list(events)
    fig = make_subplots(rows=3, cols=2, row_heights=[0.4, 0.3, 0.3], horizontal_spacing=0.1, vertical_spacing=0.08)
    last = _last_step(events)
    values = {"loss": _add_losses(fig, events, smoothing, *TRAINING_PANELS["loss"]),
              "lr": _add_step_field(fig, events, "lr", "learning rate", 0.0, False, *TRAINING_PANELS["lr"]),
              "grad_norm": _add_step_field(fig, events, "grad_norm", "gradient norm", smoothing, True,
                                           *TRAINING_PANELS["grad_norm"]),
              **_add_evals(fig, events, TRAINING_PANELS)}
    _log_axis(fig, values["loss"], "loss (log)", *TRAINING_PANELS["loss"], headroom=LOSS_HEADROOM)
    _log_axis(fig, values["grad_norm"], "gradient norm (log)", *TRAINING_PANELS["grad_norm"])
    _log_axis(fig, values.get("ppl_student", []) + values.get("ppl_teacher", []), "perplexity (log)",
              *TRAINING_PANELS["ppl_student"])
    fig.update_yaxes(title_text="learning rate", exponentformat="e", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title_text="KL (nats/token)", rangemode="tozero", row=2, col=2)
    fig.update_yaxes(title_text="top-1 agreement", range=[0, 1.02], row=3, col=2)
    fig.update_xaxes(showticklabels=True, range=_step_range(events), **step_ticks(last))
    for axis in fig.select_xaxes():
        if axis.plotly_name != "xaxis":
            axis.matches = "x"                                 # the six panels zoom and pan together
    fig.update_xaxes(title_text="optimiser step", row=3)
    panels = sorted(set(TRAINING_PANELS.values()))
    _markers(fig, events, panels=panels, label_panel=TRAINING_PANELS["loss"])
    _tokens_axes(fig, events, last)
    _progress_bar(fig, progress(events))
    fig.update_layout(title=dict(text=title, y=0.985, yanchor="top"), height=TRAINING_HEIGHT,
                      margin=TRAINING_MARGIN, legend=dict(title=dict(text="stage · loss term / eval"), y=1.0))
    if not select(events, Step, Eval):
        _empty(fig, "waiting for the run's first step")
    return fig
