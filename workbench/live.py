"""Live training curves for notebooks: a small reader of a run folder's event stream that redraws as the run writes.

    live = LiveCurves(run_dir)          # reads RUN/events.jsonl from byte 0, then only what was appended since
    live.poll()                         # -> number of new events (typed: workbench.distill.events.read_typed)
    live.figure()                       # the whole run so far in one plotly figure (curves.training_figure)

    summary = run_with_live_curves(run)  # execute a workbench.distill.run.Run in a background thread while the
                                         # cell's figure refreshes; ends showing the final, complete figure

Interrupting the cell (Jupyter's interrupt: a KeyboardInterrupt in the notebook's thread) stops the run too: it is
asked to stop (``Run.request_stop``), finishes its step, checkpoints and ends (``Run.resume`` continues it); the
figure is redrawn a last time and the KeyboardInterrupt reaches the cell. No training thread is left behind.

The cell holds one output, replaced in place. Plotly's own display ignores IPython's display ids (a figure shows
itself through ``_ipython_display_``, so every redraw would add a figure), so the figure's mimebundle
(``workbench.viz.notebook.figure_bundle``: plotly JSON for JupyterLab and VS Code, HTML for nbconvert's export) is
displayed raw under a display id and each redraw updates that id. This needs no widget package, and in an executed
notebook (nbclient, ``jupyter nbconvert --execute``) the one output holds the last redraw: the complete curves.

Like every reader, this only reads ``events.jsonl``; apart from that stop request it never reaches into the
training loop.
"""

from __future__ import annotations

import threading
from pathlib import Path

import plotly.graph_objects as go
from IPython.display import display

from workbench.distill.events import Event, Unreadable, read_typed
from workbench.viz import curves
from workbench.viz.notebook import figure_bundle


class LiveCurves:
    """Events of the run folder ``run_dir``, read incrementally, and the figure drawn from them (``smoothing``: EMA
    weight of losses and gradient norm, 0 for none)."""

    def __init__(self, run_dir: str | Path, title: str | None = None, smoothing: float = 0.0):
        self.path = Path(run_dir) / "events.jsonl"
        self.title = title or f"Training: {Path(run_dir).name}"
        self.smoothing = smoothing
        self.events: list[Event | Unreadable] = []
        self.offset = 0           # byte offset in events.jsonl up to which events have been read
        self._handle = None       # the display handle of the shown figure (None: not shown)

    def poll(self) -> int:
        """Read the events appended since the last poll; returns how many there were."""
        new, self.offset = read_typed(self.path, self.offset)
        self.events.extend(new)
        return len(new)

    def figure(self) -> go.Figure:
        """Progress, losses, learning rate, gradient norm and evaluations of everything read so far."""
        return curves.training_figure(self.events, title=self.title, smoothing=self.smoothing)

    def loss_figure(self) -> go.Figure:
        return curves.loss_curves(self.events, title=self.title, smoothing=self.smoothing)

    def eval_figure(self) -> go.Figure:
        return curves.eval_curves(self.events, title="Valid-split evaluation during the run")

    def show(self) -> None:
        """Display the current figure in the running cell (and remember where, for ``refresh``)."""
        self._handle = display(figure_bundle(self.figure()), raw=True, display_id=True)

    def refresh(self, force: bool = False) -> int:
        """Poll, and redraw the shown figure in place if anything new arrived (or ``force``). Returns the number of
        new events."""
        count = self.poll()
        if (count or force) and self._handle is not None:
            self._handle.update(figure_bundle(self.figure()), raw=True)
        return count


def run_with_live_curves(run, every: float = 2.0, title: str | None = None, smoothing: float = 0.0,
                         stop_timeout: float = 120.0) -> dict:
    """Execute ``run`` (a ``workbench.distill.run.Run``) in a background thread, redrawing its figure (one output,
    in place) every ``every`` seconds until it ends, then once more with every event. Returns the run's summary; an
    exception raised by the run is raised here after the final redraw.

    A KeyboardInterrupt while it waits (the notebook's interrupt) asks the run to stop (``run.request_stop()``:
    it checkpoints at its next step boundary and ends, resumable), waits up to ``stop_timeout`` seconds for the
    thread to end, redraws, and raises the KeyboardInterrupt again; if the thread has not ended by then, the
    KeyboardInterrupt raised says so (the run still stops at its next step boundary)."""
    live = LiveCurves(run.out, title, smoothing)
    live.poll()
    live.show()
    outcome: dict = {}

    def target():
        try:
            outcome["summary"] = run.execute()
        except BaseException as err:  # handed to the notebook's thread below
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"run {Path(run.out).name}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(every)
            live.refresh()
    except KeyboardInterrupt as interrupt:
        run.request_stop()
        worker.join(stop_timeout)
        live.refresh(force=True)
        if worker.is_alive():
            raise KeyboardInterrupt(f"the run in {run.out} did not stop within {stop_timeout:g} s; it stops at its "
                                    "next step boundary, in the background (its folder stays locked until "
                                    "then)") from interrupt
        raise
    live.refresh(force=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]
