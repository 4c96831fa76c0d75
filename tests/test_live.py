"""workbench.live: the figures hold exactly the values of the events read so far, reads are incremental (a
partial last line waits for the next poll), and run_with_live_curves shows one figure, displayed once under a
display id and replaced in place by every redraw, and returns the run's summary with complete curves; interrupting
it stops the run at a step boundary, checkpointed and resumable, with no training thread left behind."""

import json
import threading
import time

import numpy as np
import plotly.graph_objects as go
import pytest

from workbench import live
from workbench.distill.events import EventLog, Step, iter_events
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


class _SlowRun(_FakeRun):
    """A run that takes ``seconds`` and ignores stop requests."""

    def __init__(self, out, seconds):
        super().__init__(out, steps=2)
        self.seconds, self.stop_requests = seconds, 0

    def request_stop(self):
        self.stop_requests += 1

    def execute(self) -> dict:
        time.sleep(self.seconds)
        return super().execute()


def _interrupt_after(monkeypatch, steps: int) -> list[bool]:
    """Make the polling loop's refresh raise one KeyboardInterrupt (the notebook's interrupt) once it has read
    ``steps`` step events; returns a list that gets one entry when it has."""
    refresh = live.LiveCurves.refresh
    raised = []

    def refresh_then_interrupt(self, force=False):
        count = refresh(self, force)
        if not raised and sum(isinstance(e, Step) for e in self.events) >= steps:
            raised.append(True)
            raise KeyboardInterrupt
        return count

    monkeypatch.setattr(live.LiveCurves, "refresh", refresh_then_interrupt)
    return raised


def test_interrupting_the_cell_stops_the_run_at_a_step_boundary_and_it_resumes(tiny_teacher_dir, tmp_path,
                                                                               monkeypatch, one_thread):
    from workbench.distill.config import RunConfig, StageConfig
    from workbench.distill.run import Run

    shown = _Display()
    monkeypatch.setattr(live, "display", shown)
    total = 30
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=total * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, eval_every=0,
                       checkpoint_every=1000, device="cpu")             # no checkpoint but the stop's before the end
    log_step = Run._log_step

    def paced_log_step(self, *args):                                    # steps no faster than the polling sees them
        time.sleep(0.02)
        return log_step(self, *args)

    monkeypatch.setattr(Run, "_log_step", paced_log_step)
    raised = _interrupt_after(monkeypatch, steps=2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        live.run_with_live_curves(Run(config, out, progress=False, final_eval_tokens=300), every=0.01)
    assert raised
    assert not [t for t in threading.enumerate() if t.name == f"run {out.name}"]   # the training thread ended
    events = list(iter_events(out / "events.jsonl"))
    taken = [e["step"] for e in events if e["type"] == "step"]
    assert 2 <= len(taken) < total and taken == list(range(1, len(taken) + 1))
    assert (events[-1]["type"], events[-1]["step"]) == ("checkpoint", taken[-1])  # every step taken is saved
    assert not any(e["type"] in ("error", "run_end") for e in events)
    assert list(_trace(shown.figures()[-1], "kd · loss_kl").x) == taken            # the last redraw has them all
    assert not (out / "LOCK").exists()
    summary = Run.resume(out, progress=False).execute()
    events = list(iter_events(out / "events.jsonl"))
    assert [e["step"] for e in events if e["type"] == "resume"] == [taken[-1]]
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, total + 1))   # none lost, none twice
    assert summary["steps"] == total


def test_a_run_that_does_not_stop_in_time_is_named_in_the_interrupt(tmp_path, monkeypatch):
    shown = _Display()
    monkeypatch.setattr(live, "display", shown)
    log = EventLog(tmp_path / "events.jsonl", fsync=False)
    _steps(log, "kd", 1, 1)
    _interrupt_after(monkeypatch, steps=1)
    run = _SlowRun(tmp_path, seconds=1.0)
    with pytest.raises(KeyboardInterrupt, match=r"did not stop within 0.05 s"):
        live.run_with_live_curves(run, every=0.01, stop_timeout=0.05)
    assert run.stop_requests == 1
