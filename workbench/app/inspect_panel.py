"""The Inspect tab: a run's student as its latest checkpoint left it (or the Student tab's untrained build) next
to its teacher: attention vs mixing matrix of one layer and head (each cell's query and key tokens on hover, and on
the axes of short texts), long-filter spectra for Hyena students, teacher vs student perplexity / KL / agreement,
and a prompt continued by both side by side, greedily or sampled (temperature, top-p, seed: the same draw for the
same seed), shown as plain text."""

from __future__ import annotations

import asyncio
import html

import numpy as np
import panel as pn
import param
import torch
from panel.viewable import Viewer

from workbench.analysis.compare import compare
from workbench.analysis.mixing import mixing_matrix
from workbench.app.models import student_from_run
from workbench.app.paths import check_run_files
from workbench.app.run_panel import RunPanel, responsive
from workbench.app.runs import NOT_A_RUN
from workbench.app.student_panel import StudentPanel
from workbench.data import load_corpus, token_ids
from workbench.generation import generate
from workbench.students import student_mixers
from workbench.teachers import Teacher
from workbench.viz.matrices import VIEWS, attention_vs_mixing
from workbench.viz.spectra import filter_figure

UNTRAINED = "(Student tab: untrained build)"
DEFAULT_PROMPT = "The state of our Union is"
TICK_LABELS_UP_TO = 32   # matrices of at most this many cells per side carry token strings on their axes too
DECODING = ["greedy", "sample"]


def visible_token(text: str) -> str:
    """A token's text with its spaces and line breaks made visible (" the" -> "␣the")."""
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def cell_tokens(positions, tokens: list[str]) -> list[str]:
    """The token (or first…last token of a block of them) at each position of a matrix axis: a token position, or
    the centre of a block of ``f`` tokens when the figure block-averaged the matrix."""
    positions = [float(p) for p in positions]
    step = positions[1] - positions[0] if len(positions) > 1 else 1.0
    half = (step - 1) / 2                             # a block of f tokens centred at p covers p - half ... p + half
    labels = []
    for p in positions:
        first, last = round(p - half), min(round(p + half), len(tokens) - 1)
        labels.append(tokens[first] if first >= last else f"{tokens[first]}…{tokens[last]}")
    return labels


def label_tokens(fig, tokens: list[str]):
    """``fig`` (workbench.viz.matrices.attention_vs_mixing) with each heatmap cell's query and key tokens in its
    hover text, and on the axes when a side has at most ``TICK_LABELS_UP_TO`` cells."""
    for trace in fig.data:
        if trace.type != "heatmap":
            continue
        xs = list(trace.x) if trace.x is not None else list(range(len(trace.z[0])))   # cell centres, in tokens
        ys = list(trace.y) if trace.y is not None else list(range(len(trace.z)))
        cols, rows = cell_tokens(xs, tokens), cell_tokens(ys, tokens)
        trace.customdata = [[[row, col] for col in cols] for row in rows]          # (rows, cols, 2)
        trace.hovertemplate = (f"query t=%{{y}} %{{customdata[0]}}<br>key s=%{{x}} %{{customdata[1]}}<br>"
                               f"{trace.name}=%{{z:.4g}}<extra></extra>")
        if len(cols) <= TICK_LABELS_UP_TO:
            x_axis, y_axis = (f"{axis[0]}axis{axis[1:]}" for axis in (trace.xaxis or "x", trace.yaxis or "y"))
            fig.layout[x_axis].update(tickvals=xs, ticktext=cols, tickangle=-90, tickfont=dict(size=9))
            fig.layout[y_axis].update(tickvals=ys, ticktext=rows, tickfont=dict(size=9))
    return fig


def generation_html(who: str, prompt: str, continuation: str) -> str:
    """A prompt and its continuation as plain text (HTML-escaped, line breaks kept): the continuation in bold."""
    return (f'<div style="white-space:pre-wrap"><b>{who}</b><br><span style="color:#555">{html.escape(prompt)}'
            f'</span><span style="font-weight:600">{html.escape(continuation)}</span></div>')


class InspectPanel(Viewer):
    source = param.Selector(default=UNTRAINED, objects=[UNTRAINED], doc="whose student to inspect")
    layer = param.Selector(default=None, objects=[], doc="a replaced layer")
    head = param.Integer(default=0, bounds=(0, None))
    view = param.Selector(default="raw", objects=list(VIEWS))
    length = param.Integer(default=64, bounds=(8, 512), doc="tokens of valid-split text the matrices are taken on")
    prompt = param.String(default=DEFAULT_PROMPT)
    new_tokens = param.Integer(default=30, bounds=(1, 200))
    decoding = param.Selector(default="greedy", objects=DECODING, doc="greedy: the most likely token each time")
    temperature = param.Number(default=0.8, bounds=(0, None), inclusive_bounds=(False, True),
                               doc="sampling: logits divided by this before the softmax")
    top_p = param.Number(default=0.95, bounds=(0, 1), inclusive_bounds=(False, True),
                         doc="sampling: draw from the smallest set of tokens whose probability reaches top-p")
    seed = param.Integer(default=0, bounds=(0, None), doc="sampling: the same seed draws the same continuation")
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
        self.filter_pane = pn.pane.Plotly(None, sizing_mode="stretch_width")
        self.matrices = pn.Column(sizing_mode="stretch_width")   # the figures, once "Show matrices" drew them
        self.teacher_text = pn.pane.HTML("", css_classes=["teacher-text"], sizing_mode="stretch_width")
        self.student_text = pn.pane.HTML("", css_classes=["student-text"], sizing_mode="stretch_width")
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
        """(1, L) ids of the first ``length`` tokens of the valid split."""
        ids = token_ids(load_corpus("sotu", "valid"), self.teacher.tokenizer)[: self.length]
        return torch.as_tensor(np.asarray(ids, dtype=np.int64))[None].to(self.teacher.device)

    def _tokens(self, x: torch.Tensor) -> list[str]:
        """The text of each token of ``x`` (1, L), spaces made visible."""
        return [visible_token(self.teacher.tokenizer.decode([int(i)])) for i in x[0]]

    @torch.no_grad()
    def figures(self):
        """(attention vs mixing figure, filter figure or None) for the chosen layer and head."""
        self._require()
        x = self._text_ids()
        cap = self.teacher.capture(x, layers=[self.layer], blocks=False, attention=True, attn_probs=True,
                                   logits=False)
        attn = cap.attn_probs[self.layer][0].float()                                  # (H, L, L)
        mixer = self.mixers[self.layer]
        mixing = mixing_matrix(mixer, cap.attn_in[self.layer])[0]                     # (H', L, L) float32
        heads = min(attn.shape[0], mixing.shape[0])
        self.param.head.bounds = (0, heads - 1)
        self.head = min(self.head, heads - 1)
        matrix = attention_vs_mixing(attn[self.head], mixing[self.head], view=self.view,
                                     title=f"Layer {self.layer}, head {self.head}: teacher attention vs "
                                           f"{type(mixer).__name__} mixing matrix")
        label_tokens(matrix, self._tokens(x))
        filters = mixer.filter(x.shape[1])                                            # (N, L), or None
        title = f"Layer {self.layer}: long-convolution filters"
        spectra = None if filters is None else filter_figure(filters, title=title)
        return matrix, spectra

    def show_matrices(self) -> None:
        matrix, spectra = self.figures()
        self.matrix_pane.object = responsive(matrix, 480)
        if spectra is not None:
            self.filter_pane.object = responsive(spectra, 420)
        self.matrices.objects = [self.matrix_pane] + ([self.filter_pane] if spectra is not None else [])

    # ---- numbers and text ------------------------------------------------------------------------------------
    def compare(self, max_tokens: int = 2048) -> dict:
        self._require()
        self.metrics, self.metrics_source = {}, ""   # the previous table goes while this one is computed
        ids = token_ids(load_corpus("sotu", "valid"), self.teacher.tokenizer)
        metrics = compare(self.teacher, self.student, ids, window=256, max_tokens=max_tokens + 1)
        self.metrics_source = f"valid split, first {max_tokens:,} tokens, computed now"
        self.metrics = metrics
        return self.metrics

    def sampling(self) -> dict:
        """``workbench.generation.generate``'s sampling arguments for the chosen decoding (temperature 0: greedy)."""
        if self.decoding == "greedy":
            return {"temperature": 0.0}
        return {"temperature": self.temperature, "top_p": self.top_p}

    def continue_prompt(self, model) -> str:
        """``model``'s continuation of the prompt (up to ``new_tokens``, ending at the end-of-text token), drawn with
        a generator seeded by ``seed`` when sampling."""
        tokenizer = self.teacher.tokenizer
        ids = self.teacher.encode(self.prompt)                                     # (1, L)
        if ids.shape[1] == 0:
            raise ValueError("type a prompt first")
        generator = torch.Generator(ids.device).manual_seed(self.seed)
        stops = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        result = generate(model, ids, self.new_tokens, stop_tokens=stops, generator=generator, **self.sampling())
        new = result.tokens[0, : result.lengths[0]].tolist()                      # (L_new,)
        return tokenizer.decode(new, skip_special_tokens=True)

    def generate(self) -> tuple[str, str]:
        self._require()
        self.teacher_text.object = self.student_text.object = ""
        pair = (self.continue_prompt(self.teacher.model), self.continue_prompt(self.student))
        how = "greedy" if self.decoding == "greedy" else \
            f"sampled: temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed}"
        self.teacher_text.object = generation_html(f"Teacher ({how})", self.prompt, pair[0])
        self.student_text.object = generation_html(f"Student ({how})", self.prompt, pair[1])
        return pair

    def _runner(self, action):
        """A button's callback: ``action`` in a worker thread, one at a time (every button is disabled until it
        ends: two actions would share the models)."""
        async def run(event=None):
            self.busy, self.message = True, f"{event.obj.label if event else 'Working'} …"
            for button in self.buttons.values():
                button.disabled = True
            try:
                await asyncio.to_thread(action)
                self.message = ""
            except (ValueError, KeyError, FileNotFoundError, RuntimeError, IndexError) as err:
                self.message = f"**Error:** {err}"
            finally:
                self.busy = False
                for button in self.buttons.values():
                    button.disabled = False
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
        def wrap(*objects):
            return pn.FlexBox(*objects, flex_wrap="wrap", gap="0 4px", sizing_mode="stretch_width")

        def below_label(widget):
            return pn.Column(pn.Spacer(height=18), widget)

        p = self.param
        sampled = pn.bind(lambda decoding: decoding == "greedy", p.decoding)
        return pn.Column(
            "## Inspect",
            wrap(w.Select.from_param(p.source, name="Student of", width=320, css_classes=["inspect-source"]),
                 below_label(self.buttons["Load student"]),
                 pn.indicators.LoadingSpinner.from_param(p.busy, name="", width=24, height=24, visible=p.busy)),
            self._status,
            "### Attention vs mixing matrix",
            wrap(w.Select.from_param(p.layer, name="Layer", width=100),
                 w.IntInput.from_param(p.head, name="Head", width=90),
                 below_label(w.RadioButtonGroup.from_param(p.view, name="View", width=200)),
                 w.IntInput.from_param(p.length, name="Tokens", width=90),
                 below_label(self.buttons["Show matrices"])),
            self.matrices,
            "### Teacher vs student",
            self.buttons["Compare on valid text"],
            wrap(w.TextInput.from_param(p.prompt, name="Prompt", min_width=260, width=420),
                 w.IntInput.from_param(p.new_tokens, name="New tokens", width=100),
                 below_label(w.RadioButtonGroup.from_param(p.decoding, name="Decoding", width=160,
                                                           css_classes=["decoding"])),
                 w.FloatInput.from_param(p.temperature, name="Temperature", width=100, step=0.1, disabled=sampled,
                                         css_classes=["temperature"]),
                 w.FloatInput.from_param(p.top_p, name="Top-p", width=90, step=0.05, disabled=sampled,
                                         css_classes=["top-p"]),
                 w.IntInput.from_param(p.seed, name="Seed", width=90, disabled=sampled, css_classes=["seed"]),
                 below_label(self.buttons["Generate"])),
            wrap(pn.Column(self.teacher_text, width=460), pn.Column(self.student_text, width=460)),
            sizing_mode="stretch_width")
