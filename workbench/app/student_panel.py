"""The Student tab: mixer type, a clickable strip of the teacher's layers choosing which keep attention, the
initialisation, and the parameter counts of the student built from those choices.

Layers chosen before any teacher is loaded (a reloaded page takes them from its URL) are kept for the first teacher
loaded if they fit it; any other teacher change starts again from the default (every layer but the middle two)."""

from __future__ import annotations

import asyncio

import panel as pn
import param
from panel.viewable import Viewer

from workbench.app.models import make_student, parameter_counts
from workbench.app.teacher_panel import TeacherPanel
from workbench.students import INITS, mixer_names, split_layers

STRIP_CSS = ".bk-btn { padding: 6px 0; min-width: 0; font-size: 12px; }"  # every layer fits on one line


class StudentPanel(Viewer):
    mixer = param.Selector(default="mamba2", objects=mixer_names())
    init = param.Selector(default="attention", objects=list(INITS), doc="attention: mixers start from the "
                          "attention weights (Mamba in the Llama); random: from random projections")
    keep_attention = param.List(default=[], item_type=int, doc="teacher layers that stay attention")
    student = param.Parameter(default=None, doc="the student built from the current choices (None until built)")
    num_layers = param.Integer(default=0, doc="layers of the loaded teacher (0: none loaded)")
    counts = param.Dict(default={})
    message = param.String(default="")
    busy = param.Boolean(default=False)

    def __init__(self, teacher: TeacherPanel, **params):
        super().__init__(**params)
        self.teacher = teacher
        self._wanted: list[int] | None = None   # layers to keep, chosen while no teacher was loaded
        self._resetting = False                 # the panel itself is setting keep_attention
        self.param.watch(self._kept_changed, "keep_attention")
        self._strip = pn.widgets.CheckButtonGroup(label="layers", options=[], value=[], color="primary",
                                                  variant="outline", css_classes=["layer-strip"],
                                                  sizing_mode="stretch_width", stylesheets=[STRIP_CSS])
        self._strip.link(self, value="keep_attention", bidirectional=True)
        self._all_attention = pn.widgets.Button(label="Keep all attention", width=160)
        self._all_mixers = pn.widgets.Button(label="Replace all", width=160)
        self._middle = pn.widgets.Button(label="Replace the middle two", width=190)
        self._all_attention.on_click(lambda e: self._set_kept(range(self.num_layers)))
        self._all_mixers.on_click(lambda e: self._set_kept([]))
        self._middle.on_click(lambda e: self._set_kept(self._default_kept()))
        self.build_button = pn.widgets.Button(label="Build student", color="primary", width=160)
        self.build_button.on_click(self._on_build)
        teacher.param.watch(self._teacher_changed, "teacher")
        self._teacher_changed()

    # ---- layers ----------------------------------------------------------------------------------------------
    def _default_kept(self, n: int | None = None) -> list[int]:
        """Every layer of ``n`` (default: the loaded teacher's) but the middle two (a hybrid that distils in minutes
        on a CPU)."""
        n = self.num_layers if n is None else n
        return split_layers(n, replace=[n // 2 - 1, n // 2])[1] if n > 2 else []

    def _set_kept(self, layers) -> None:
        self.keep_attention = sorted(int(i) for i in layers)

    def _kept_changed(self, event) -> None:
        if not self.num_layers and not self._resetting:
            self._wanted = list(event.new)

    def _teacher_changed(self, *events) -> None:
        """A new teacher: its layers on the strip, and the layers kept from the URL if they fit it, else the
        default; both set at once, so nothing sees the old teacher's layers with the new teacher's count."""
        n = self.teacher.teacher.num_layers if self.teacher.teacher is not None else 0
        wanted = self._wanted if n else None
        fits = wanted is not None and all(0 <= i < n for i in wanted)
        if n:
            self._wanted = None
        self._resetting = True
        try:
            self.param.update(num_layers=n, keep_attention=sorted(wanted) if fits else self._default_kept(n))
            self._strip.options = {str(i): i for i in range(n)}
        finally:
            self._resetting = False
        self.student, self.counts = None, {}

    @property
    def replaced(self) -> list[int]:
        return split_layers(self.num_layers, keep_attention=self.keep_attention)[0]

    # ---- building --------------------------------------------------------------------------------------------
    def _make(self):
        teacher = self.teacher.teacher
        if teacher is None:
            raise ValueError("load a teacher first (Teacher tab)")
        student = make_student(teacher, self.mixer, self.keep_attention, self.init)
        return student, parameter_counts(teacher, student)

    def build(self):
        """Build the student in the calling thread; returns it."""
        self.student, self.counts = self._make()
        self.message = self._built_message()
        return self.student

    async def _on_build(self, event=None) -> None:
        self.busy, self.message = True, "Building the student …"
        try:
            self.student, self.counts = await asyncio.to_thread(self._make)
            self.message = self._built_message()
        except (ValueError, TypeError, RuntimeError) as err:
            self.message = f"**Error:** {err}"
        finally:
            self.busy = False

    def _built_message(self) -> str:
        return f"Built a **{self.mixer}** student ({self.init} init), layers {self.replaced} replaced."

    # ---- view ------------------------------------------------------------------------------------------------
    @param.depends("keep_attention", "num_layers", "mixer")
    def _legend(self):
        n = self.num_layers
        if not n:
            return pn.pane.Markdown("*Load a teacher first (Teacher tab): the strip shows its layers.*")
        cells = "".join(
            f'<div title="layer {i}" style="flex:1;height:14px;margin:1px;border-radius:2px;'
            f'background:{"#4c78a8" if i in self.keep_attention else "#f58518"}"></div>' for i in range(n))
        return pn.pane.HTML(
            f'<div style="display:flex;width:100%">{cells}</div><div style="font-size:12px;margin-top:4px">'
            f'<span style="color:#4c78a8">■</span> attention kept ({len(self.keep_attention)}) &nbsp; '
            f'<span style="color:#f58518">■</span> replaced by {self.mixer} ({len(self.replaced)}) '
            f'— click a layer above to toggle it</div>', sizing_mode="stretch_width")

    @param.depends("counts", "message")
    def _counts(self):
        parts = [pn.pane.Markdown(self.message)] if self.message else []
        if self.counts:
            c = self.counts
            parts.append(pn.pane.Markdown(
                "| | parameters |\n|---|---|\n"
                f"| teacher | {c['teacher']:,} |\n| student | {c['student']:,} |\n"
                f"| mixers ({c['replaced_layers']} layers) | {c['mixers']:,} |\n"
                f"| attention they replace | {c['replaced_attention']:,} |", css_classes=["param-counts"],
                width=500))
        return pn.Column(*parts)

    def __panel__(self):
        return pn.Column(
            "## Student",
            pn.Row(pn.widgets.Select.from_param(self.param.mixer, name="Mixer", width=180),
                   pn.widgets.RadioButtonGroup.from_param(self.param.init, name="Init", color="primary", width=220)),
            "#### Layers that keep attention (highlighted); the others get the mixer",
            self._strip, self._legend,
            pn.Row(self._all_attention, self._all_mixers, self._middle),
            pn.Row(self.build_button,
                   pn.indicators.LoadingSpinner.from_param(self.param.busy, name="", width=24, height=24,
                                                     visible=self.param.busy)),
            self._counts,
            sizing_mode="stretch_width")
