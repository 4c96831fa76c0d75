"""workbench.live: the figures hold exactly the values of the events read so far, reads are incremental (a
partial last line waits for the next poll), and run_with_live_curves shows one figure, displayed once under a
display id and replaced in place by every redraw, and returns the run's summary with complete curves."""

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from workbench import live
from workbench.distill.events import EventLog
from workbench.viz.curves import ema
from workbench.viz.notebook import PLOTLY_MIMETYPE


def _steps(log: EventLog, stage: str, first: int, n: int) -> list[dict]:
    return [log.append("step", step=s, stage=stage, loss=1.0 / s, loss_kl=0.5 / s) for s in range(first, first + n)]


def _trace(fig, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def test_traces_equal_event_values(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", fsync=False)
    written = _steps(log, "kd", 1, 5)
    log.append("eval", step=5, stage="kd", ppl_student=30.0, ppl_teacher=20.0, kl=0.4, agreement=0.6)
    curves = live.LiveCurves(tmp_path)
    assert curves.poll() == 6
    trace = _trace(curves.loss_figure(), "kd · loss")
    assert list(trace.x) == [e["step"] for e in written]
    assert list(trace.y) == [e["loss"] for e in written]
    assert list(_trace(curves.loss_figure(), "kd · loss_kl").y) == [e["loss_kl"] for e in written]
    evals = curves.eval_figure()
    assert list(_trace(evals, "student").y) == [30.0] and list(_trace(evals, "teacher").y) == [20.0]


def test_reads_are_incremental_and_wait_for_a_whole_line(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, fsync=False)
    curves = live.LiveCurves(tmp_path)
    assert curves.poll() == 0 and curves.offset == 0          # no file yet: nothing, and nothing skipped
    _steps(log, "a", 1, 3)
    assert curves.poll() == 3
    assert curves.poll() == 0                                  # nothing new: the same events, no duplicates
    size = path.stat().st_size
    assert curves.offset == size
    with open(path, "a") as f:                                 # a writer mid-append: half a line
        f.write(json.dumps({"type": "step", "step": 4, "stage": "b", "loss": 0.25})[:20])
    assert curves.poll() == 0 and curves.offset == size
    with open(path, "a") as f:
        f.write(json.dumps({"type": "step", "step": 4, "stage": "b", "loss": 0.25})[20:] + "\n")
    assert curves.poll() == 1
    assert [e.step for e in curves.events] == [1, 2, 3, 4]
    fig = curves.loss_figure()
    assert list(_trace(fig, "a · loss").x) == [1, 2, 3] and list(_trace(fig, "b · loss").y) == [0.25]


class _FakeRun:
    """Stands in for workbench.distill.run.Run: writes step events into ``out`` while it executes."""

    def __init__(self, out, steps=6, fail=False):
        self.out, self.steps, self.fail = out, steps, fail

    def execute(self) -> dict:
        log = EventLog(self.out / "events.jsonl", fsync=False)
        _steps(log, "kd", 1, self.steps)
        if self.fail:
            raise RuntimeError("diverged")
        log.append("eval", step=self.steps, stage="kd", ppl_student=3.0, ppl_teacher=2.0, kl=0.1, agreement=0.9)
        return {"steps": self.steps}


class _Display:
    """Stands in for IPython's display: records what is displayed (with its arguments) and every update."""

    def __init__(self):
        self.shown, self.updates = [], []

    def __call__(self, obj, raw=False, display_id=None):
        self.shown.append((obj, raw, display_id))
        updates = self.updates

        class Handle:
            def update(self, obj, raw=False):
                updates.append((obj, raw))

        return Handle()

    def figures(self) -> list[go.Figure]:
        """Every update as the figure its bundle holds."""
        return [go.Figure(bundle[PLOTLY_MIMETYPE]) for bundle, _ in self.updates]


def test_run_with_live_curves_returns_summary_and_updates_one_figure(tmp_path, monkeypatch):
    shown = _Display()
    monkeypatch.setattr(live, "display", shown)
    summary = live.run_with_live_curves(_FakeRun(tmp_path, steps=6), every=0.01)
    assert summary == {"steps": 6}
    (bundle, raw, display_id), = shown.shown                   # one figure, displayed once
    assert raw is True and display_id is True                  # a raw bundle: the display id is honoured
    assert {PLOTLY_MIMETYPE, "text/html"} <= set(bundle)
    assert shown.updates and all(raw for _, raw in shown.updates)
    final = shown.figures()[-1]                                # the last redraw has every event
    assert list(_trace(final, "kd · loss").x) == [1, 2, 3, 4, 5, 6]
    assert list(_trace(final, "student").y) == [3.0]
    assert "plotly-graph-div" in shown.updates[-1][0]["text/html"]


def test_run_errors_reach_the_caller_after_the_final_redraw(tmp_path, monkeypatch):
    shown = _Display()
    monkeypatch.setattr(live, "display", shown)
    with pytest.raises(RuntimeError, match="diverged"):
        live.run_with_live_curves(_FakeRun(tmp_path, steps=3, fail=True), every=0.01)
    assert len(shown.shown) == 1
    assert list(_trace(shown.figures()[-1], "kd · loss").x) == [1, 2, 3]


def test_refresh_redraws_only_when_events_arrived(tmp_path, monkeypatch):
    shown = _Display()
    monkeypatch.setattr(live, "display", shown)
    log = EventLog(tmp_path / "events.jsonl", fsync=False)
    curves = live.LiveCurves(tmp_path, smoothing=0.5)
    curves.refresh()
    assert shown.updates == []                                 # not shown yet: nothing to update
    curves.show()
    assert curves.refresh() == 0 and shown.updates == []       # nothing new: no redraw
    _steps(log, "kd", 1, 4)
    assert curves.refresh() == 4 and len(shown.updates) == 1
    assert curves.refresh(force=True) == 0 and len(shown.updates) == 2
    fig = shown.figures()[-1]
    np.testing.assert_allclose(_trace(fig, "kd · loss").y, ema([1.0 / s for s in range(1, 5)], 0.5))
