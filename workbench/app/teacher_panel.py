"""The Teacher tab: choose a teacher (registry name or local model folder), load it, see its shape. Devices offered
are the ones this machine has (no cuda without CUDA)."""

from __future__ import annotations

import asyncio

import panel as pn
import param
import torch
from panel.viewable import Viewer

from workbench.app.models import cached_teacher, get_teacher
from workbench.teachers import Teacher
from workbench.teachers.registry import DEFAULT_TEACHER, REGISTRY


def available_devices() -> list[str]:
    """"auto", "cpu", and "cuda" (with "cuda:N" for each GPU when there are several) where CUDA is present."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = (["cuda"] + ([f"cuda:{i}" for i in range(count)] if count > 1 else [])) if count else []
    return ["auto", "cpu", *gpus]


DEVICES = available_devices()


class TeacherPanel(Viewer):
    source = param.String(default=DEFAULT_TEACHER, doc="registry name or local Hugging Face model folder")
    device = param.Selector(default="auto", objects=DEVICES, doc="where the page's models live (auto: GPU if any)")
    teacher = param.ClassSelector(class_=Teacher, default=None, allow_None=True, doc="the loaded teacher")
    message = param.String(default="")
    busy = param.Boolean(default=False)

    def __init__(self, **params):
        super().__init__(**params)
        self._source = pn.widgets.AutocompleteInput.from_param(
            self.param.source, name="Teacher (registry name or local model folder)", options=sorted(REGISTRY),
            restrict=False, min_characters=0, case_sensitive=False, sizing_mode="stretch_width",
            css_classes=["teacher-source"])
        self._device = pn.widgets.Select.from_param(self.param.device, name="Device", width=120,
                                                    css_classes=["teacher-device"])
        self.load_button = pn.widgets.Button(label="Load teacher", color="primary", width=160)
        self.load_button.on_click(self._on_load)
        self._registry = pn.pane.Markdown(
            "\n".join(f"- **{spec.name}** — {spec.description}" for spec in REGISTRY.values()))

    # ---- actions ---------------------------------------------------------------------------------------------
    def restore(self) -> Teacher | None:
        """Show the chosen teacher as loaded if this app process already holds it (a page reloaded with its
        choices in the URL): nothing is loaded here; None if it is not held."""
        teacher = cached_teacher(self.source, self.device)
        return None if teacher is None else self._loaded(teacher)

    def load(self) -> Teacher:
        """Load (or fetch from the process cache) the chosen teacher, in the calling thread."""
        return self._loaded(get_teacher(self.source, self.device))

    async def _on_load(self, event=None) -> None:
        self.busy, self.message = True, f"Loading {self.source} …"
        try:
            self._loaded(await asyncio.to_thread(get_teacher, self.source, self.device))
        except (ValueError, OSError, RuntimeError) as err:
            self.message = f"**Error:** {err}"
        finally:
            self.busy = False

    def _loaded(self, teacher: Teacher) -> Teacher:
        self.teacher = teacher
        self.message = f"Loaded **{self.source}**."
        return teacher

    # ---- view ------------------------------------------------------------------------------------------------
    @param.depends("teacher", "message")
    def _info(self):
        parts = [pn.pane.Markdown(self.message)] if self.message else []
        if self.teacher is not None:
            info = self.teacher.info()
            rows = "\n".join(f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |"
                             for k, v in info.items() if k != "source")
            parts.append(pn.pane.Markdown(f"| property | value |\n|---|---|\n{rows}", css_classes=["teacher-info"],
                                          width=600))
        return pn.Column(*parts)

    def __panel__(self):
        return pn.Column(
            "## Teacher",
            pn.Row(self._source, self._device, pn.Column(pn.Spacer(height=18), self.load_button)),
            pn.indicators.LoadingSpinner.from_param(self.param.busy, name="", width=24, height=24,
                                                     visible=self.param.busy),
            self._info,
            "#### Registered teachers (no download needed)", self._registry,
            sizing_mode="stretch_width")
