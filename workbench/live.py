"""Live loss curves for notebooks: a small reader of a run folder's event stream that redraws as the run writes.

    live = LiveCurves(run_dir)          # reads RUN/events.jsonl from byte 0, then only what was appended since
    live.poll()                         # -> number of new events (typed: workbench.distill.events.read_typed)
    live.loss_figure(), live.eval_figure()   # plotly figures of everything read so far (workbench.viz.curves)

    summary = run_with_live_curves(run)  # execute a workbench.distill.run.Run in a background thread while the
                                         # cell's figures refresh; ends showing the final, complete figures

The figures are shown through IPython display handles (``display(fig, display_id=True)`` then ``handle.update``): the
same output is replaced in place, which works in Jupyter, VS Code and in executed notebooks without any widget
package (plotly's FigureWidget needs ``anywidget``, which the workbench does not install). The last update holds the
final figures, so an executed notebook keeps static, complete curves.

Like every reader, this only reads ``events.jsonl``; it never reaches into the training loop.
"""

from __future__ import annotations

import threading
from pathlib import Path

import plotly.graph_objects as go
from IPython.display import display

from workbench.distill.events import Event, Unreadable, read_typed
from workbench.viz import curves


class LiveCurves:
    """Events of the run folder ``run_dir``, read incrementally, and the loss / evaluation figures drawn from them."""

    def __init__(self, run_dir: str | Path, title: str | None = None):
        self.path = Path(run_dir) / "events.jsonl"
        self.title = title or f"Training losses: {Path(run_dir).name}"
        self.events: list[Event | Unreadable] = []
        self.offset = 0           # byte offset in events.jsonl up to which events have been read
        self._handles: list = []

    def poll(self) -> int:
        """Read the events appended since the last poll; returns how many there were."""
        new, self.offset = read_typed(self.path, self.offset)
        self.events.extend(new)
        return len(new)

    def loss_figure(self) -> go.Figure:
        return curves.loss_curves(self.events, title=self.title)

    def eval_figure(self) -> go.Figure:
        return curves.eval_curves(self.events, title="Valid-split evaluation during the run")

    def figures(self) -> list[go.Figure]:
        return [self.loss_figure(), self.eval_figure()]

    def show(self) -> None:
        """Display the current figures in the running cell (and remember where, for ``refresh``)."""
        self._handles = [display(fig, display_id=True) for fig in self.figures()]

    def refresh(self, force: bool = False) -> int:
        """Poll, and redraw the shown figures if anything new arrived (or ``force``). Returns the new events."""
        count = self.poll()
        if (count or force) and self._handles:
            for handle, fig in zip(self._handles, self.figures()):
                handle.update(fig)
        return count


def run_with_live_curves(run, every: float = 2.0, title: str | None = None) -> dict:
    """Execute ``run`` (a ``workbench.distill.run.Run``) in a background thread, redrawing its loss and evaluation
    curves every ``every`` seconds until it ends, then once more with every event. Returns the run's summary; an
    exception raised by the run is raised here after the final redraw."""
    live = LiveCurves(run.out, title)
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
    while worker.is_alive():
        worker.join(every)
        live.refresh()
    live.refresh(force=True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["summary"]
