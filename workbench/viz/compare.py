"""Several runs side by side: their loss and evaluation curves overlaid, by optimiser step or by training tokens,
final held-out quality against training tokens, and a table of each run's final numbers.

    comparison = compare_runs(["runs/a", "runs/b"], x="tokens")
    comparison.losses    # total loss of each run (one colour per run, one dash per stage), resume markers
    comparison.evals     # perplexity ratio, KL and top-1 agreement of each run's in-run evaluations
    comparison.quality   # final held-out perplexity ratio against training tokens, one point per finished run
    comparison.table     # pandas DataFrame: one row per run (``TABLE_COLUMNS``)

Everything comes from each run's event stream, read with ``workbench.distill.events.read_typed``: the curves from
"step" and "eval" events, resume markers from "resume" events, the final held-out numbers and each stage's
throughput from the "run_end" event (the numbers of summary.json). ``compare_runs`` reads the folders; the other
functions are pure (``RunEvents`` in, a figure or a table out), so a caller that already holds the events (the
dashboard reads them incrementally) draws the same figures without reading anything again.

Training tokens at a step are the tokens of every step up to it (``workbench.viz.curves.tokens_by_step``: a step
logged twice, on both sides of a resume, counts once). Wall time is the sum over the run's processes of the last
``wall`` each wrote (a resumed run's writer restarts that clock), so time spent stopped between two processes is not
counted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.distill.events import Error, Eval, Event, Resume, RunEnd, RunStart, Step, Unreadable, read_typed, select
from workbench.distill.throughput import WARMUP_STEPS
from workbench.viz.axes import log_ticks, step_ticks
from workbench.viz.curves import COLOURS, DASHES, compact, resume_steps, tokens_at, tokens_by_step

AXES = {"step": "optimiser step", "tokens": "training tokens"}  # x axis -> its title
EVENTS_FILE = "events.jsonl"   # the event stream of a run folder (docs/run-folders.md)
TABLE_COLUMNS = ("run", "mixer", "replaced", "status", "steps", "train tokens", "held-out ratio", "student ppl",
                 "teacher ppl", "KL", "agreement", "tokens/s", "MFU", "peak memory GiB", "device", "wall s")


@dataclass
class RunEvents:
    """One run's events under the name its curves and row carry."""

    name: str                                    # legend entry and table row label (a run folder's name)
    events: Sequence[Event | Unreadable]         # the run's event stream, as ``read_typed`` gives it


class Comparison(NamedTuple):
    """What ``compare_runs`` returns (a tuple: ``losses, evals, quality, table = compare_runs(...)``)."""

    losses: go.Figure
    evals: go.Figure
    quality: go.Figure
    table: pd.DataFrame


# ---- reading -----------------------------------------------------------------------------------------------------
def read_run(folder: str | Path, name: str | None = None) -> RunEvents:
    """The events of the run folder ``folder`` (named after the folder unless ``name`` is given); a
    FileNotFoundError naming the folder if it has no event stream."""
    path = Path(folder)
    file = path / EVENTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {EVENTS_FILE}: not a run folder, or a run that has not started")
    events, _ = read_typed(file)
    return RunEvents(name or path.resolve().name, events)


def run_name(path: Path, paths: Sequence[Path]) -> str:
    """The shortest tail of ``path`` (its folder, then with the folders above) that no other of ``paths`` ends in."""
    others = [p for p in paths if p != path]
    for depth in range(1, len(path.parts) + 1):
        tail = path.parts[-depth:]
        if all(p.parts[-depth:] != tail for p in others):
            return "/".join(tail)
    return str(path)


def compare_runs(folders: Iterable[str | Path], x: str = "step") -> Comparison:
    """The comparison of the runs in ``folders``: overlaid loss and evaluation curves against ``x`` ("step" or
    "tokens"), final quality against training tokens, and the table of final numbers. Each run is named by its
    folder, with as many folders above as tell it from the others (a quality curve's ROW/30M-s0, and the sweep
    folder above that where two rows share a name)."""
    paths = [Path(folder).resolve() for folder in folders]
    runs = [read_run(p, run_name(p, paths)) for p in paths]
    return Comparison(loss_overlay(runs, x), eval_overlay(runs, x), quality_vs_tokens(runs), compare_table(runs))


# ---- per-run numbers ---------------------------------------------------------------------------------------------
def _check_axis(x: str) -> None:
    if x not in AXES:
        raise ValueError(f"x must be one of {list(AXES)}, got {x!r}")


def _x_of(steps: list[int], x: str, tokens: dict[int, int]) -> list[int]:
    """The steps as the axis ``x`` counts them (``tokens``: ``workbench.viz.curves.tokens_by_step``)."""
    return steps if x == "step" else [tokens_at(s, tokens) for s in steps]


def wall_seconds(events: Sequence) -> float | None:
    """Seconds the run's processes ran: each writer's last ``wall``, summed (None without events)."""
    typed = select(events)
    if not typed:
        return None
    total, last = 0.0, None
    for e in typed:
        if last is not None and e.wall < last:   # a new writer (a resume) restarted the clock
            total += last
        last = e.wall
    return total + last


def status(events: Sequence) -> str:
    """"finished" (a run_end), "failed" (an error ended the last attempt) or "unfinished"."""
    if select(events, RunEnd):
        return "finished"
    attempt = select(events, RunStart, Resume, Error)
    return "failed" if attempt and isinstance(attempt[-1], Error) else "unfinished"


def _throughput(end: RunEnd | None, events: Sequence) -> tuple[float | None, float | None, float | None, str]:
    """(tokens/s, MFU, peak memory GiB, device) over the run: from run_end's stages, each weighted by the time its
    tokens took (total tokens / total seconds); without a run_end, the median rate of the logged steps after the
    first ``WARMUP_STEPS`` and no MFU. Peak memory is the largest GPU peak, else the largest process RSS."""
    stages = [s for s in (end.stages or []) if s.get("tokens_per_s")] if end is not None else []
    if not stages:
        rates = [e.tokens_per_s for e in select(events, Step) if e.tokens_per_s is not None]
        rates = rates[WARMUP_STEPS:] or rates
        return (statistics.median(rates) if rates else None), None, None, ""
    tokens = [s["steps"] * s["batch_size"] * s["seq_len"] for s in stages]
    seconds = [t / s["tokens_per_s"] for t, s in zip(tokens, stages)]
    rate = sum(tokens) / sum(seconds)
    mfus = [(s["mfu"], sec) for s, sec in zip(stages, seconds) if s.get("mfu") is not None]
    mfu = sum(m * sec for m, sec in mfus) / sum(sec for _, sec in mfus) if mfus else None
    gpu = [s["peak_gpu_mem_gb"] for s in stages if s.get("peak_gpu_mem_gb") is not None]
    rss = [s["peak_rss_gb"] for s in stages if s.get("peak_rss_gb") is not None]
    peak = max(gpu) if gpu else (max(rss) if rss else None)
    device = next((s["device_name"] for s in stages if s.get("device_name")), "")
    return rate, mfu, peak, device


def run_row(run: RunEvents) -> dict:
    """The table row of one run (``TABLE_COLUMNS``): NaN where the run has no such number yet (no run_end: no
    held-out numbers)."""
    events = run.events
    ends = select(events, RunEnd)
    end = ends[-1] if ends else None
    starts = select(events, RunStart)
    config = starts[0].run_config if starts else None
    steps = select(events, Step)
    rate, mfu, peak, device = _throughput(end, events)
    tokens = tokens_by_step(events)
    nan = math.nan
    replaced = end.replaced if end is not None else (starts[0].replaced if starts else [])
    return {
        "run": run.name,
        "mixer": end.mixer if end is not None else (config.mixer if config is not None else ""),
        "replaced": ",".join(str(i) for i in replaced),
        "status": status(events),
        "steps": end.steps if end is not None else (max(e.step for e in steps) if steps else 0),
        "train tokens": end.train_tokens if end is not None else tokens_at(max(tokens, default=0), tokens),
        "held-out ratio": end.ppl_ratio if end is not None else nan,
        "student ppl": end.ppl_student if end is not None else nan,
        "teacher ppl": end.ppl_teacher if end is not None else nan,
        "KL": end.kl if end is not None else nan,
        "agreement": end.agreement if end is not None else nan,
        "tokens/s": nan if rate is None else rate,
        "MFU": nan if mfu is None else mfu,
        "peak memory GiB": nan if peak is None else peak,
        "device": device,
        "wall s": nan if wall_seconds(events) is None else wall_seconds(events),
    }


def compare_table(runs: Sequence[RunEvents]) -> pd.DataFrame:
    """One row per run (``run_row``), columns ``TABLE_COLUMNS``, in the order of ``runs``."""
    return pd.DataFrame([run_row(run) for run in runs], columns=list(TABLE_COLUMNS))


# ---- figures -----------------------------------------------------------------------------------------------------
def _log_labels(values: Iterable, label=lambda v: f"{v:.3g}") -> dict:
    """Axis settings that label a log axis holding ``values`` with round numbers (``workbench.viz.axes.log_ticks``)
    ({} to let plotly choose when there are none)."""
    ticks = log_ticks(values)
    return dict(tickmode="array", tickvals=ticks, ticktext=[label(t) for t in ticks]) if ticks else {}


def _x_ticks(runs: Sequence[RunEvents], x: str) -> dict:
    """Whole-step ticks on a step axis (``workbench.viz.axes.step_ticks``); plotly's own on a tokens axis."""
    if x != "step":
        return {}
    return step_ticks(max((e.step for run in runs for e in select(run.events, Step, Eval)), default=1))


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font_size=16)
    return fig


def _resume_markers(fig: go.Figure, run: RunEvents, colour: str, x: str, tokens: dict[int, int],
                    rows: Sequence[int] | None = None) -> None:
    """A dotted vertical line in the run's colour after the step each resumed process continued from (as
    ``workbench.viz.curves`` draws it), labelled on the top panel with the run's name."""
    for step in resume_steps(run.events):
        at = step + 0.5 if x == "step" else tokens_at(step, tokens)
        for i, row in enumerate(rows or [None]):
            where = {} if row is None else {"row": row, "col": 1}
            fig.add_vline(x=at, line=dict(color=colour, dash="dot", width=1.5), **where)
            if i == 0:
                fig.add_annotation(x=at, y=1.0, yref="paper" if row is None else "y domain",
                                   text=f"resumed ({run.name})", showarrow=False, xanchor="left", yanchor="top",
                                   textangle=-90, font=dict(size=10, color=colour), **where)


def loss_overlay(runs: Sequence[RunEvents], x: str = "step", title: str = "Training loss") -> go.Figure:
    """The total loss of each run against ``x`` ("step" or "tokens"), log y: one colour per run, one dash per stage
    (in the run's order of stages), a dotted line where a run was resumed."""
    _check_axis(x)
    fig = go.Figure()
    fig.update_layout(title=dict(text=title), width=950, height=460, legend=dict(title=dict(text="run · stage")))
    fig.update_xaxes(title_text=AXES[x], rangemode="tozero")
    fig.update_yaxes(title_text="loss (log scale)", type="log", exponentformat="power")
    drawn: list[float | None] = []
    for i, run in enumerate(runs):
        colour, tokens = COLOURS[i % len(COLOURS)], tokens_by_step(run.events)
        by_stage: dict[str, dict[int, float]] = {}
        for e in select(run.events, Step):
            by_stage.setdefault(e.stage, {})[e.step] = e.loss
        for j, (stage, points) in enumerate(by_stage.items()):
            steps = sorted(points)
            values = [points[s] if points[s] > 0 and math.isfinite(points[s]) else None for s in steps]
            fig.add_trace(go.Scatter(
                x=_x_of(steps, x, tokens), y=values, mode="lines", name=f"{run.name} · {stage}",
                legendgroup=run.name, line=dict(color=colour, dash=DASHES[j % len(DASHES)]),
                customdata=steps, hovertemplate=f"{run.name} · {stage}<br>step %{{customdata}}<br>"
                                                f"{AXES[x]} %{{x:,}}<br>loss %{{y:.4g}}<extra></extra>"))
            drawn += values
        _resume_markers(fig, run, colour, x, tokens)
    fig.update_xaxes(**_x_ticks(runs, x))
    fig.update_yaxes(**_log_labels(drawn))
    return fig if drawn else _empty(fig, "no step events in these runs yet")


EVAL_PANELS = (("ratio", "Perplexity ratio student ÷ teacher", "ratio (log)"),
               ("kl", "KL(teacher ‖ student)", "KL (nats/token)"),
               ("agreement", "Top-1 agreement with the teacher", "agreement (fraction)"))


def eval_overlay(runs: Sequence[RunEvents], x: str = "step", title: str = "In-run evaluations") -> go.Figure:
    """Three panels sharing ``x`` ("step" or "tokens"): each run's valid-split perplexity ratio (student ÷
    teacher, log y), KL(teacher ‖ student) and top-1 agreement, one colour per run, resume markers dotted."""
    _check_axis(x)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[panel[1] for panel in EVAL_PANELS])
    ratios: list[float] = []
    drawn = False
    for i, run in enumerate(runs):
        colour, tokens = COLOURS[i % len(COLOURS)], tokens_by_step(run.events)
        found: dict[int, Eval] = {e.step: e for e in select(run.events, Eval)}   # a step evaluated twice: last
        steps = sorted(found)
        if not steps:
            continue
        values = {"ratio": [found[s].ppl_student / found[s].ppl_teacher for s in steps],
                  "kl": [found[s].kl for s in steps], "agreement": [found[s].agreement for s in steps]}
        for row, (key, _, _) in enumerate(EVAL_PANELS, start=1):
            fig.add_trace(go.Scatter(
                x=_x_of(steps, x, tokens), y=values[key], mode="lines+markers", name=run.name, legendgroup=run.name,
                showlegend=row == 1, line=dict(color=colour), customdata=steps,
                hovertemplate=f"{run.name}<br>step %{{customdata}}<br>{AXES[x]} %{{x:,}}<br>{key} %{{y:.4g}}"
                              f"<extra></extra>"), row=row, col=1)
        ratios += values["ratio"]
        drawn = True
        _resume_markers(fig, run, colour, x, tokens, rows=(1, 2, 3))
    for row, (key, _, label) in enumerate(EVAL_PANELS, start=1):
        fig.update_yaxes(title_text=label, row=row, col=1,
                         **({"type": "log", **_log_labels(ratios)} if key == "ratio" else {}))
        fig.update_xaxes(showticklabels=True, rangemode="tozero", row=row, col=1, **_x_ticks(runs, x))
    fig.update_yaxes(rangemode="tozero", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], row=3, col=1)
    fig.update_xaxes(title_text=AXES[x], row=3, col=1)
    fig.update_layout(title=dict(text=title), width=950, height=760, legend=dict(title=dict(text="run")))
    return fig if drawn else _empty(fig, "no eval events in these runs yet")


def quality_vs_tokens(runs: Sequence[RunEvents], title: str = "Final held-out quality against training tokens"
                      ) -> go.Figure:
    """One point per finished run: its held-out perplexity ratio (student ÷ teacher, from run_end) against its
    training tokens (log x). Runs of the same mixer and replaced layers are joined in order of tokens: the
    quality-vs-tokens curve of a campaign that varies the budget."""
    rows = [run_row(run) for run in runs]
    finished = [r for r in rows if r["status"] == "finished"]
    fig = go.Figure()
    fig.update_layout(title=dict(text=title), width=950, height=420, legend=dict(title=dict(text="mixer · replaced")))
    fig.update_xaxes(title_text="training tokens (log scale)", type="log",
                     **_log_labels([r["train tokens"] for r in finished], compact))
    fig.update_yaxes(title_text="held-out ppl ratio student ÷ teacher", rangemode="tozero")
    if not finished:
        return _empty(fig, "no finished run (run_end) among these")
    top = max((r["held-out ratio"] for r in finished if math.isfinite(r["held-out ratio"])), default=1.0)
    fig.update_yaxes(range=[0, 1.15 * top])   # room above the highest point for its label
    groups: dict[str, list[dict]] = {}
    for r in finished:
        groups.setdefault(f"{r['mixer']} · {r['replaced']}", []).append(r)
    for i, (label, members) in enumerate(groups.items()):
        members = sorted(members, key=lambda r: r["train tokens"])
        fig.add_trace(go.Scatter(
            x=[r["train tokens"] for r in members], y=[r["held-out ratio"] for r in members], mode="lines+markers+text",
            text=[r["run"] for r in members], textposition="top center", name=label,
            line=dict(color=COLOURS[i % len(COLOURS)]),
            hovertemplate="%{text}<br>%{x:,} tokens<br>ratio %{y:.4g}<extra>" + label + "</extra>"))
    return fig
