"""The assembled dashboard: Teacher / Student / Runs / Inspect tabs in a template.

``create_app`` is a factory: every browser session gets its own widgets and state (two tabs share nothing but the
process-wide teacher cache and the run folders themselves). The Teacher and Student tabs' choices and the open tab
live in the page's URL (``Dashboard.remember``), so a reload, or the URL sent to a colleague, keeps them; runs live
in their folders.

``script_app`` is what ``panel serve apps/dashboard.py`` serves. That command binds every interface unless given
``--address 127.0.0.1``, and the page starts processes and reads run folders with no authentication, so a session
whose browser is not on this machine (the connection's peer address, not a header a client chooses) gets only a
refusal, unless the environment sets WORKBENCH_ALLOW_REMOTE=1: the same default as ``workbench app``, which binds
127.0.0.1 unless given ``--host`` with ``--allow-remote``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from workbench.app.cli import is_loopback
from workbench.app.inspect_panel import InspectPanel
from workbench.app.run_panel import RunPanel
from workbench.app.student_panel import StudentPanel
from workbench.app.teacher_panel import TeacherPanel

TITLE = "workbench · distillation dashboard"
ALLOW_REMOTE_ENV = "WORKBENCH_ALLOW_REMOTE"   # "1": apps/dashboard.py serves browsers of other machines too
# what the URL keeps: part of the page -> {its parameter: the query parameter}
URL_PARAMETERS = {"teacher": {"source": "teacher", "device": "device"},
                  "student": {"mixer": "mixer", "init": "init", "keep_attention": "keep"},
                  "tabs": {"active": "tab"}}


def apply_each(target: param.Parameterized, values: dict[str, Any]) -> None:
    """Set each of ``values`` on ``target`` that it accepts: a URL value that no longer fits (a device this machine
    lacks, a mixer since renamed) leaves that choice at its default and the others still apply."""
    for name, value in values.items():
        try:
            setattr(target, name, value)
        except (ValueError, TypeError):
            continue


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

    def remember(self, location) -> None:
        """Keep the choices of ``URL_PARAMETERS`` in ``location`` (``pn.state.location``: the page's URL) and take
        those it already holds; then show the teacher as loaded if this app process holds it already."""
        for part, names in URL_PARAMETERS.items():
            target = getattr(self, part)
            location.sync(target, names, on_error=lambda values, target=target: apply_each(target, values))
        self.teacher.restore()

    def __panel__(self):
        return self.tabs


def create_app(runs_root: str | Path = "runs", poll_ms: int = 1000) -> pn.template.FastListTemplate:
    """A new dashboard session on ``runs_root``, in a template ready to serve (``.servable()`` or ``pn.serve``)."""
    pn.extension("plotly", "tabulator", notifications=False)
    dashboard = Dashboard(runs_root)
    if pn.state.curdoc is not None:
        dashboard.runs.start_polling(poll_ms)
        dashboard.remember(pn.state.location)
    template = pn.template.FastListTemplate(
        title=TITLE, main=[dashboard], header_background="#2f4f6f", accent_base_color="#4c78a8",
        sidebar=[pn.pane.Markdown(f"**Runs root**\n\n`{dashboard.runs_root}`\n\nRuns started here or with "
                                  f"`workbench distill --out {dashboard.runs_root}/NAME` appear in the Runs tab.",
                                 styles={"word-break": "break-all"})],
        sidebar_width=260)
    return template


def session_client() -> str | None:
    """The address of the browser the current server session serves (None outside a server session)."""
    context = pn.state.curdoc.session_context if pn.state.curdoc is not None else None
    request = context.request if context is not None else None
    return None if request is None else request.remote_ip


def script_app(runs_root: str | Path, client: str | None, allow_remote: bool):
    """What ``panel serve apps/dashboard.py`` serves to a browser at ``client``: the dashboard for this machine
    (a loopback address), or for any machine with ``allow_remote``; otherwise (an unknown address included) a page
    that says why it is refused, with no access to the runs root."""
    if allow_remote or (client is not None and is_loopback(client)):
        return create_app(runs_root=runs_root)
    print(f"apps/dashboard.py: refused a session from {client}: the dashboard starts processes and has no "
          f"authentication; serve it with `panel serve apps/dashboard.py --address 127.0.0.1`, or set "
          f"{ALLOW_REMOTE_ENV}=1 to serve other machines", file=sys.stderr, flush=True)
    return pn.pane.Markdown(
        f"## {TITLE}\n\nThis dashboard serves only browsers on the machine it runs on (this one is at `{client}`): "
        f"it starts processes and reads run folders without authentication. Open it on that machine, or restart "
        f"it with `{ALLOW_REMOTE_ENV}=1` in its environment if every machine that can reach it may use it.",
        css_classes=["remote-refused"])
