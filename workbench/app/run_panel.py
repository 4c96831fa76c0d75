"""The Runs tab: recipe and budget, start / stop / resume, every run of the runs root with its status, and the
selected run's live loss curves (per stage and term), evaluations, tokens/s, ETA and GPU memory.

A periodic callback (``start_polling``) calls ``refresh``, which reads only the bytes appended to each run's
events since the last call. Runs are child processes (workbench.app.worker): nothing here trains."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from workbench.app.paths import teacher_source
from workbench.app.runs import RunIndex, RunInfo, format_seconds
from workbench.app.student_panel import StudentPanel
from workbench.app.teacher_panel import DEVICES, TeacherPanel
from workbench.app.worker import Launcher
from workbench.distill.config import RunConfig, StageConfig, parse_tokens
from workbench.distill.recipes import RECIPES, recipe
from workbench.viz.curves import eval_curves, loss_curves

COLUMNS = ["run", "status", "teacher", "mixer", "replaced", "step", "stage", "loss", "tokens/s", "note"]


def new_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def responsive(fig, height: int):
    """``fig`` at ``height`` pixels, as wide as its pane (the figure functions set a fixed width for notebooks)."""
    fig.layout.width = None
    fig.update_layout(height=height, autosize=True)
    return fig


class RunPanel(Viewer):
    recipe = param.Selector(default="kd", objects=sorted(RECIPES), doc="the run's stages (workbench.distill.recipes)")
    tokens = param.String(default="64k", doc="training token budget with k/M/B suffixes")
    batch_size = param.Integer(default=4, bounds=(1, None))
    seq_len = param.Integer(default=128, bounds=(8, None))
    lr = param.Number(default=1e-3, bounds=(0, None))
    eval_every = param.Integer(default=25, bounds=(0, None), doc="steps between evaluations (0: only at stage ends)")
    eval_tokens = param.Integer(default=2048, bounds=(64, None), doc="valid-split tokens per in-run evaluation")
    final_eval_tokens = param.Integer(default=4097, bounds=(0, None), doc="held-out tokens for the summary (0: all)")
    checkpoint_every = param.Integer(default=50, bounds=(1, None))
    device = param.Selector(default="auto", objects=DEVICES)
    compile = param.Boolean(default=False, doc="torch.compile the MLPs and norms (RunConfig.compile; GPU runs)")
    run_name = param.String(default="", doc="folder of the new run inside the runs root")
    selected = param.String(default="", doc="the run whose curves are shown")
    runs = param.List(default=[], doc="RunInfo of every run, newest first")
    message = param.String(default="")

    def __init__(self, runs_root: str | Path, teacher: TeacherPanel, student: StudentPanel, **params):
        super().__init__(**params)
        self.teacher, self.student = teacher, student
        self.launcher = Launcher(runs_root)
        self.index = RunIndex(runs_root, self.launcher)
        if not self.run_name:
            self.run_name = new_run_name()
        self._shown: tuple[str, int] = ("", -1)   # (run, event count) drawn in the figures
        self._table_rows: list[tuple] = []
        self.loss_pane = pn.pane.Plotly(responsive(loss_curves([]), 420), sizing_mode="stretch_width",
                                        css_classes=["loss-curves"])
        self.eval_pane = pn.pane.Plotly(responsive(eval_curves([]), 520), sizing_mode="stretch_width")
        self.table = pn.widgets.Tabulator(pd.DataFrame(columns=COLUMNS), disabled=True, show_index=False,
                                          sizing_mode="stretch_width", height=200, css_classes=["runs-table"])
        self._select = pn.widgets.Select(label="Run", options=[], width=320, css_classes=["run-select"])
        self._select.link(self, value="selected", bidirectional=True)
        self.start_button = pn.widgets.Button(label="Start run", color="primary", width=140)
        self.stop_button = pn.widgets.Button(label="Stop", color="danger", width=100, disabled=True)
        self.resume_button = pn.widgets.Button(label="Resume", color="success", width=100, disabled=True)
        self.start_button.on_click(lambda e: self._guard(self.start))
        self.stop_button.on_click(self._on_stop)
        self.resume_button.on_click(lambda e: self._guard(self.resume))
        self.progress = pn.indicators.Progress(value=0, max=1, width=320, bar_color="primary")
        self.stats = pn.pane.Markdown("", css_classes=["run-stats"], sizing_mode="stretch_width")
        self.log = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._callback = None
        self.refresh()

    # ---- configuration ---------------------------------------------------------------------------------------
    def recipe_stages(self) -> list[StageConfig]:
        """The recipe's stages for this tab's budget."""
        return recipe(self.recipe, tokens=parse_tokens(self.tokens), seq_len=self.seq_len,
                      batch_size=self.batch_size, lr=self.lr)

    @property
    def planned_steps(self) -> int:
        """Optimiser steps of the run the page describes: each stage's ``StageConfig.steps``, as the run counts."""
        return sum(stage.steps for stage in self.recipe_stages())

    def run_config(self) -> RunConfig:
        """The RunConfig the page describes: the Teacher and Student tabs' choices and this tab's recipe/budget."""
        if self.teacher.teacher is None:
            raise ValueError("load a teacher first (Teacher tab)")
        if not self.student.replaced:
            raise ValueError("every layer keeps attention: choose layers to replace (Student tab)")
        config = RunConfig(teacher=teacher_source(self.teacher.source), mixer=self.student.mixer,
                           keep_attention=list(self.student.keep_attention), init=self.student.init,
                           stages=self.recipe_stages(),
                           device=self.device, eval_every=self.eval_every, eval_tokens=self.eval_tokens,
                           eval_window=min(self.seq_len, 512), checkpoint_every=self.checkpoint_every,
                           compile=self.compile)
        config.validate()
        return config

    # ---- actions ---------------------------------------------------------------------------------------------
    def start(self) -> Path:
        out = self.launcher.start(self.run_name, self.run_config(), self.final_eval_tokens or None)
        self.message = f"Started **{out.name}**."
        self.run_name = new_run_name()
        self.refresh()
        self.selected = out.name
        return out

    def stop(self) -> bool:
        stopped = self.launcher.stop(self.index.root / self._require_selected())
        self.message = f"Stopped **{self.selected}**." if stopped else f"**{self.selected}** was not running."
        self.refresh()
        return stopped

    def resume(self) -> Path:
        out = self.launcher.resume(self.index.root / self._require_selected())
        self.message = f"Resumed **{out.name}** from its last checkpoint."
        self.refresh()
        return out

    def _require_selected(self) -> str:
        if not self.selected:
            raise ValueError("select a run first")
        return self.selected

    def _guard(self, action) -> None:
        try:
            action()
        except (ValueError, KeyError, FileExistsError, FileNotFoundError, RuntimeError) as err:
            self.message = f"**Error:** {err}"

    async def _on_stop(self, event=None) -> None:
        self.stop_button.disabled = True
        self.message = f"Stopping **{self.selected}** …"
        try:
            stopped = await asyncio.to_thread(self.launcher.stop, self.index.root / self._require_selected())
            self.message = f"Stopped **{self.selected}**." if stopped else f"**{self.selected}** was not running."
        except (ValueError, RuntimeError) as err:
            self.message = f"**Error:** {err}"
        self.refresh()

    # ---- live view -------------------------------------------------------------------------------------------
    def start_polling(self, period_ms: int = 1000) -> None:
        """Refresh from the run folders every ``period_ms`` (in a served session)."""
        if self._callback is None:
            self._callback = pn.state.add_periodic_callback(self.refresh, period=period_ms)

    def refresh(self) -> None:
        """Read new events of every run; redraw what changed."""
        self.runs = self.index.scan()
        names = [info.name for info in self.runs]
        self._select.options = names
        if self.selected not in names:
            self.selected = names[0] if names else ""
        rows = [self._row(info) for info in self.runs]
        if rows != self._table_rows:
            self._table_rows = rows
            self.table.value = pd.DataFrame(rows, columns=COLUMNS)
        self._show_selected()

    @staticmethod
    def _row(info: RunInfo) -> tuple:
        return (info.name, info.status, info.teacher, info.mixer, info.replaced,
                f"{info.step}/{info.total_steps}", info.stage, "" if info.loss is None else f"{info.loss:.4f}",
                "" if info.tokens_per_s is None else f"{info.tokens_per_s:,.0f}", info.message)

    def selected_info(self) -> RunInfo | None:
        return next((info for info in self.runs if info.name == self.selected), None)

    def _show_selected(self) -> None:
        info, state = self.selected_info(), self.index.state(self.selected)
        if info is None or state is None:
            self.stats.object = "*No runs yet: start one above, or with `workbench distill`.*" if info is None else \
                f"**{info.name}** — {info.status}: {info.message}"
            self.log.object = ""
            self.stop_button.disabled = self.resume_button.disabled = True
            return
        self.stop_button.disabled = info.status not in ("running", "starting", "locked")
        self.resume_button.disabled = info.status not in ("stopped", "failed")
        self.progress.max = max(info.total_steps, 1)
        self.progress.value = min(info.step, self.progress.max)
        gpu = "—" if info.gpu_mem_gb is None else f"{info.gpu_mem_gb:.2f} GiB"
        tps = "—" if info.tokens_per_s is None else f"{info.tokens_per_s:,.0f}"
        loss = "—" if info.loss is None else f"{info.loss:.4f}"
        lines = [f"**{info.name}** — status **{info.status}** · step **{info.step}/{info.total_steps}** "
                 f"· stage {info.stage or '—'} · loss {loss} · tokens/s {tps} · ETA {format_seconds(info.eta_s)} "
                 f"· GPU memory {gpu}"]
        if info.message:
            lines.append(f"\n**{info.message}**")
        summary = self._read(state, lambda: state.summary, None)
        if summary:
            lines.append(f"\nHeld-out: student ppl **{summary['ppl_student']:.2f}** vs teacher "
                         f"{summary['ppl_teacher']:.2f} (ratio {summary['ppl_ratio']:.3f}), KL {summary['kl']:.4f}, "
                         f"top-1 agreement {summary['agreement']:.3f}")
        self.stats.object = "\n".join(lines)
        tail = self._read(state, state.log_tail, "")
        self.log.object = f"```\n{tail}\n```" if tail else ""
        shown = (info.name, len(state.events))
        if shown != self._shown:
            self._shown = shown
            losses = loss_curves(state.events, title=f"Training losses — {info.name}")
            evals = eval_curves(state.events, title=f"Evaluations — {info.name}")
            self.loss_pane.object, self.eval_pane.object = responsive(losses, 420), responsive(evals, 520)

    def _read(self, state, read, default):
        """``read()``, or ``default`` with the reason in the message when a file of the run cannot be shown (one
        linking outside the folder, or no longer readable)."""
        try:
            return read()
        except (OSError, ValueError) as err:
            self.message = f"**{state.path.name}:** {err}"
            return default

    @param.depends("selected", watch=True)
    def _selection_changed(self) -> None:
        self._show_selected()

    # ---- view ------------------------------------------------------------------------------------------------
    @param.depends("tokens", "batch_size", "seq_len", "recipe")
    def _budget(self):
        try:
            steps = self.planned_steps
            text = (f"≈ **{steps:,}** optimiser steps of {self.batch_size} × {self.seq_len} tokens "
                    f"(recipe {self.recipe})")
        except ValueError as err:
            text = f"**{err}**"
        return pn.pane.Markdown(text)

    @param.depends("message")
    def _message(self):
        return pn.pane.Markdown(self.message, css_classes=["run-message"])

    def __panel__(self):
        w = pn.widgets
        def field(widget, parameter, label, width, css):
            return widget.from_param(parameter, name=label, width=width, css_classes=[css])

        p = self.param
        settings = pn.Column(
            pn.Row(field(w.Select, p.recipe, "Recipe", 170, "recipe"),
                   field(w.TextInput, p.tokens, "Token budget", 120, "budget-tokens"),
                   field(w.IntInput, p.batch_size, "Batch size", 100, "batch-size"),
                   field(w.IntInput, p.seq_len, "Sequence length", 120, "seq-len"),
                   field(w.FloatInput, p.lr, "Learning rate", 120, "lr"),
                   field(w.Select, p.device, "Device", 100, "device"),
                   field(w.Checkbox, p.compile, "torch.compile", 120, "compile")),
            pn.Row(field(w.IntInput, p.eval_every, "Eval every (steps)", 140, "eval-every"),
                   field(w.IntInput, p.eval_tokens, "Eval tokens", 120, "eval-tokens"),
                   field(w.IntInput, p.final_eval_tokens, "Final eval tokens", 140, "final-eval-tokens"),
                   field(w.IntInput, p.checkpoint_every, "Checkpoint every", 130, "checkpoint-every"),
                   field(w.TextInput, p.run_name, "Run name", 220, "run-name")),
            self._budget,
            pn.Row(self.start_button, self._message))
        return pn.Column(
            "## New run", settings,
            "## Runs", self.table,
            pn.Row(self._select, pn.Column(pn.Spacer(height=18), pn.Row(self.stop_button, self.resume_button)),
                   pn.Column(pn.Spacer(height=28), self.progress)),
            self.stats, self.loss_pane, self.eval_pane,
            pn.Card(self.log, title="Process output", collapsed=True, sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
