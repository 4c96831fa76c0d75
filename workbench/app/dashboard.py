"""The assembled dashboard: Teacher / Student / Runs / Inspect tabs in a template.

``create_app`` is a factory: every browser session gets its own widgets and state (two tabs share nothing but the
process-wide teacher cache and the run folders themselves)."""

from __future__ import annotations

from pathlib import Path

import panel as pn
import param
from panel.viewable import Viewer

from workbench.app.inspect_panel import InspectPanel
from workbench.app.run_panel import RunPanel
from workbench.app.student_panel import StudentPanel
from workbench.app.teacher_panel import TeacherPanel

TITLE = "workbench · distillation dashboard"


class Dashboard(Viewer):
    runs_root = param.Path(default=None, check_exists=False, doc="folder whose subfolders are runs")

    def __init__(self, runs_root: str | Path = "runs", **params):
        root = Path(runs_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(runs_root=root, **params)
        self.teacher = TeacherPanel()
        self.student = StudentPanel(self.teacher)
        self.runs = RunPanel(root, self.teacher, self.student)
        self.inspect = InspectPanel(self.runs, self.student)
        self.tabs = pn.Tabs(("Teacher", self.teacher), ("Student", self.student), ("Runs", self.runs),
                            ("Inspect", self.inspect), dynamic=False, sizing_mode="stretch_width")

    def __panel__(self):
        return self.tabs


def create_app(runs_root: str | Path = "runs", poll_ms: int = 1000) -> pn.template.FastListTemplate:
    """A new dashboard session on ``runs_root``, in a template ready to serve (``.servable()`` or ``pn.serve``)."""
    pn.extension("plotly", "tabulator", notifications=False)
    dashboard = Dashboard(runs_root)
    if pn.state.curdoc is not None:
        dashboard.runs.start_polling(poll_ms)
    template = pn.template.FastListTemplate(
        title=TITLE, main=[dashboard], header_background="#2f4f6f", accent_base_color="#4c78a8",
        sidebar=[pn.pane.Markdown(f"**Runs root**\n\n`{dashboard.runs_root}`\n\nRuns started here or with "
                                  f"`workbench distill --out {dashboard.runs_root}/NAME` appear in the Runs tab.",
                                 styles={"word-break": "break-all"})],
        sidebar_width=260)
    return template
