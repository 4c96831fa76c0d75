"""The Inspect tab: a run's student as its latest checkpoint left it (or the Student tab's untrained build) next
to its teacher: attention vs mixing matrix of one layer and head, long-filter spectra for Hyena students, teacher
vs student perplexity / KL / agreement, and a prompt continued by both side by side."""

from __future__ import annotations

import asyncio

import numpy as np
import panel as pn
import param
import torch
from panel.viewable import Viewer

from workbench.analysis.compare import compare
from workbench.app.models import student_from_run
from workbench.app.paths import check_run_files
from workbench.app.run_panel import RunPanel, responsive
from workbench.app.runs import NOT_A_RUN
from workbench.app.student_panel import StudentPanel
from workbench.data import load_corpus, token_ids
from workbench.students import student_mixers
from workbench.teachers import Teacher
from workbench.viz.matrices import VIEWS, attention_vs_mixing
from workbench.viz.spectra import filter_figure

UNTRAINED = "(Student tab: untrained build)"
DEFAULT_PROMPT = "The state of our Union is"


class InspectPanel(Viewer):
    source = param.Selector(default=UNTRAINED, objects=[UNTRAINED], doc="whose student to inspect")
    layer = param.Selector(default=None, objects=[], doc="a replaced layer")
    head = param.Integer(default=0, bounds=(0, None))
    view = param.Selector(default="raw", objects=list(VIEWS))
    length = param.Integer(default=64, bounds=(8, 512), doc="tokens of valid-split text the matrices are taken on")
    prompt = param.String(default=DEFAULT_PROMPT)
    new_tokens = param.Integer(default=30, bounds=(1, 200))
    message = param.String(default="")
    loaded = param.String(default="", doc="what the loaded student is")
    metrics = param.Dict(default={})
    metrics_source = param.String(default="", doc="where the metrics come from")
    busy = param.Boolean(default=False)

    def __init__(self, runs: RunPanel, student: StudentPanel, **params):
        super().__init__(**params)
        self.runs, self.student_panel = runs, student
        self.teacher: Teacher | None = None
        self.student = None
        self.mixers: dict = {}
        self.matrix_pane = pn.pane.Plotly(None, sizing_mode="stretch_width", css_classes=["matrix-view"])
        self.filter_pane = pn.pane.Plotly(None, sizing_mode="stretch_width", visible=False)
        self.teacher_text = pn.pane.Markdown("", css_classes=["teacher-text"], sizing_mode="stretch_width")
        self.student_text = pn.pane.Markdown("", css_classes=["student-text"], sizing_mode="stretch_width")
        buttons = {"Load student": self.load, "Show matrices": self.show_matrices,
                   "Compare on valid text": self.compare, "Generate": self.generate}
        self.buttons = {}
        for name, action in buttons.items():
            button = pn.widgets.Button(label=name, color="primary", width=180)
            button.on_click(self._runner(action))
            self.buttons[name] = button
        runs.param.watch(self._runs_changed, "runs")
        self._runs_changed()

    def _runs_changed(self, *events) -> None:
        options = [UNTRAINED] + [info.name for info in self.runs.runs if info.status != NOT_A_RUN]
        if options != self.param.source.objects:
            self.param.source.objects = options

    # ---- loading ---------------------------------------------------------------------------------------------
    def load(self) -> None:
        """The chosen student: a run's latest checkpoint, or the Student tab's build."""
        if self.source == UNTRAINED:
            if self.student_panel.student is None:
                raise ValueError("build a student first (Student tab), or pick a run")
            teacher, student = self.student_panel.teacher.teacher, self.student_panel.student
            self._set(teacher, student, student_mixers(student), f"untrained {self.student_panel.mixer} student")
            return
        teacher, student, mixers, info = student_from_run(check_run_files(self.runs.index.root / self.source),
                                                          self.student_panel.teacher.device)
        self._set(teacher, student, mixers, f"run **{self.source}** at step {info['step']} "
                                            f"({info['config'].mixer}, layers {sorted(mixers)} replaced)")
        summary = self.runs.index.states[self.source].summary
        if summary:
            self.metrics_source = "held-out split, from the run's summary.json"
            self.metrics = {k: summary[k] for k in ("ppl_teacher", "ppl_student", "kl", "agreement", "tokens")}

    def _set(self, teacher, student, mixers, text: str) -> None:
        self.teacher, self.student, self.mixers = teacher, student.eval(), mixers
        self.metrics = {}
        self.param.layer.objects = sorted(mixers)
        self.layer = sorted(mixers)[0]
        self.loaded = text

    def _require(self) -> None:
        if self.student is None:
            self.load()

    # ---- matrices and filters --------------------------------------------------------------------------------
    def _text_ids(self) -> torch.Tensor:
        ids = token_ids(load_corpus("sotu", "valid"), self.teacher.tokenizer)[: self.length]
        return torch.as_tensor(np.asarray(ids, dtype=np.int64))[None].to(self.teacher.device)

    @torch.no_grad()
    def figures(self):
        """(attention vs mixing figure, filter figure or None) for the chosen layer and head."""
        self._require()
        x = self._text_ids()
        cap = self.teacher.capture(x, layers=[self.layer], blocks=False, attention=True, attn_probs=True,
                                   logits=False)
        attn = cap.attn_probs[self.layer][0].float()                                  # (H, L, L)
        mixer = self.mixers[self.layer]
        mixing = mixer.mixing_matrix(cap.attn_in[self.layer].float())[0]              # (H', L, L)
        heads = min(attn.shape[0], mixing.shape[0])
        self.param.head.bounds = (0, heads - 1)
        self.head = min(self.head, heads - 1)
        matrix = attention_vs_mixing(attn[self.head], mixing[self.head], view=self.view,
                                     title=f"Layer {self.layer}, head {self.head}: teacher attention vs "
                                           f"{type(mixer).__name__} mixing matrix")
        filters = mixer.filter(x.shape[1])                                            # (N, L), or None
        title = f"Layer {self.layer}: long-convolution filters"
        spectra = None if filters is None else filter_figure(filters, title=title)
        return matrix, spectra

    def show_matrices(self) -> None:
        matrix, spectra = self.figures()
        self.matrix_pane.object = responsive(matrix, 480)
        self.filter_pane.visible = spectra is not None
        if spectra is not None:
            self.filter_pane.object = responsive(spectra, 420)

    # ---- numbers and text ------------------------------------------------------------------------------------
    def compare(self, max_tokens: int = 2048) -> dict:
        self._require()
        ids = token_ids(load_corpus("sotu", "valid"), self.teacher.tokenizer)
        self.metrics_source = f"valid split, first {max_tokens:,} tokens, computed now"
        self.metrics = compare(self.teacher, self.student, ids, window=256, max_tokens=max_tokens + 1)
        return self.metrics

    def generate(self) -> tuple[str, str]:
        self._require()
        student = Teacher(self.student, self.teacher.tokenizer, name="student")
        pair = (self.teacher.generate(self.prompt, max_new_tokens=self.new_tokens),
                student.generate(self.prompt, max_new_tokens=self.new_tokens))
        self.teacher_text.object = f"**Teacher**\n\n{self.prompt} *{pair[0]}*"
        self.student_text.object = f"**Student**\n\n{self.prompt} *{pair[1]}*"
        return pair

    def _runner(self, action):
        async def run(event=None):
            self.busy, self.message = True, f"{event.obj.label if event else 'Working'} …"
            try:
                await asyncio.to_thread(action)
                self.message = ""
            except (ValueError, KeyError, FileNotFoundError, RuntimeError, IndexError) as err:
                self.message = f"**Error:** {err}"
            finally:
                self.busy = False
        return run

    # ---- view ------------------------------------------------------------------------------------------------
    @param.depends("metrics", "loaded", "message")
    def _status(self):
        parts = []
        if self.message:
            parts.append(pn.pane.Markdown(self.message))
        if self.loaded:
            parts.append(pn.pane.Markdown(f"Loaded: {self.loaded}"))
        if self.metrics:
            m = self.metrics
            parts.append(pn.pane.Markdown(
                f"*{self.metrics_source}*\n\n| | teacher | student |\n|---|---|---|\n"
                f"| perplexity | {m['ppl_teacher']:.3f} | {m['ppl_student']:.3f} |\n"
                f"| KL(teacher ‖ student) per token | | {m['kl']:.4f} |\n"
                f"| top-1 agreement with the teacher | | {m['agreement']:.3f} |\n"
                f"| tokens | {m['tokens']:,} | |", css_classes=["compare-table"], width=600))
        return pn.Column(*parts)

    def __panel__(self):
        w = pn.widgets
        return pn.Column(
            "## Inspect",
            pn.Row(w.Select.from_param(self.param.source, name="Student of", width=320, css_classes=["inspect-source"]),
                   pn.Column(pn.Spacer(height=18), self.buttons["Load student"]),
                   pn.indicators.LoadingSpinner.from_param(self.param.busy, name="", width=24, height=24,
                                                     visible=self.param.busy)),
            self._status,
            "### Attention vs mixing matrix",
            pn.Row(w.Select.from_param(self.param.layer, name="Layer", width=100),
                   w.IntInput.from_param(self.param.head, name="Head", width=90),
                   w.RadioButtonGroup.from_param(self.param.view, name="View", width=200),
                   w.IntInput.from_param(self.param.length, name="Tokens", width=90),
                   pn.Column(pn.Spacer(height=18), self.buttons["Show matrices"])),
            self.matrix_pane, self.filter_pane,
            "### Teacher vs student",
            self.buttons["Compare on valid text"],
            pn.Row(w.TextInput.from_param(self.param.prompt, name="Prompt", sizing_mode="stretch_width"),
                   w.IntInput.from_param(self.param.new_tokens, name="New tokens", width=100),
                   pn.Column(pn.Spacer(height=18), self.buttons["Generate"])),
            pn.Row(self.teacher_text, self.student_text, sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
