"""The Runs tab: the student it will train (from the Teacher and Student tabs), recipe and budget, start / stop /
resume, every run of the runs root in a sortable table (live step, loss and tokens/s; final held-out ratio, KL,
agreement and wall time), the selected run's live loss curves (per stage and term), evaluations, tokens/s, ETA and
GPU memory, and the runs ticked in the table compared: loss and evaluation curves overlaid by step or by training
tokens, final quality against tokens, their final numbers (workbench.viz.compare), and their task scores beside
their teacher's with each run's retention (``RUN/eval/``, workbench.evaluation.store; workbench.viz.evaluation), or
the command that scores a run that has none.

A periodic callback (``start_polling``) calls ``refresh``, which reads only the bytes appended to each run's
events since the last call. Runs are child processes (workbench.app.worker): nothing here trains.

Numbers typed into the form are checked as they are typed: one out of range (or not a number) stays in its field,
the error under the form names it, and Start refuses until it is fixed; the run keeps the last valid value until
then, so nothing is silently reverted or clamped."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import NumberFormatter
from panel.viewable import Viewer

from workbench.app.paths import inside_run, teacher_source
from workbench.app.runs import RunIndex, RunInfo, format_seconds
from workbench.app.student_panel import StudentPanel
from workbench.app.teacher_panel import DEVICES, TeacherPanel
from workbench.app.worker import Launcher
from workbench.device import resolve_device
from workbench.distill.config import RunConfig, StageConfig, parse_tokens
from workbench.distill.recipes import RECIPES, default_dials, recipe
from workbench.evaluation import store
from workbench.evaluation.scores import task_rows, task_table
from workbench.viz.compare import AXES, RunEvents, compare_table, eval_overlay, loss_overlay, quality_vs_tokens, run_row
from workbench.viz.curves import eval_curves, loss_curves
from workbench.viz.evaluation import task_scores

COLUMNS = ["run", "status", "teacher", "mixer", "replaced", "step", "total steps", "stage", "loss", "tokens/s",
           "held-out ratio", "KL", "agreement", "wall s", "note"]
FINAL = ("held-out ratio", "KL", "agreement", "wall s")  # columns taken from workbench.viz.compare.run_row


def number(fmt: str) -> NumberFormatter:
    """A table cell format (numbro ``fmt``) that shows a missing number as blank."""
    return NumberFormatter(format=fmt, nan_format="", null_format="")


FORMATS = {"loss": number("0.0000"), "tokens/s": number("0,0"), "held-out ratio": number("0.000"),
           "KL": number("0.0000"), "agreement": number("0.000"), "wall s": number("0,0.0"), "MFU": number("0.0%"),
           "student ppl": number("0.00"), "teacher ppl": number("0.00"), "peak memory GiB": number("0.00"),
           "train tokens": number("0,0")}
# the numeric fields of the form: parameter, label, width (px), css class
NUMBER_FIELDS = [("batch_size", "Batch size", 100, "batch-size"), ("seq_len", "Sequence length", 120, "seq-len"),
                 ("lr", "Learning rate", 120, "lr"), ("eval_every", "Eval every (steps)", 140, "eval-every"),
                 ("eval_tokens", "Eval tokens", 120, "eval-tokens"),
                 ("final_eval_tokens", "Final eval tokens", 140, "final-eval-tokens"),
                 ("checkpoint_every", "Checkpoint every", 130, "checkpoint-every")]


def new_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def responsive(fig, height: int):
    """``fig`` at ``height`` pixels, as wide as its pane (the figure functions set a fixed width for notebooks)."""
    fig.layout.width = None
    fig.update_layout(height=height, autosize=True)
    return fig


def field_problem(parameter: param.Parameter, label: str, value) -> str:
    """Why ``value`` typed into the field ``label`` cannot be ``parameter``'s value ("" if it can)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"**{label}**: enter a number"
    if isinstance(parameter, param.Integer) and not float(value).is_integer():
        return f"**{label}** must be a whole number (got {value})"
    low, high = parameter.bounds or (None, None)
    if low is not None and value < low:
        return f"**{label}** must be at least {low} (got {value})"
    if high is not None and value > high:
        return f"**{label}** must be at most {high} (got {value})"
    return ""


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
    device = param.Selector(default="auto", objects=DEVICES, doc="devices of this machine (cuda only where present)")
    compile = param.Boolean(default=False, doc="torch.compile the MLPs and norms (RunConfig.compile; GPU runs)")
    run_name = param.String(default="", doc="folder of the new run inside the runs root")
    selected = param.String(default="", doc="the run whose curves are shown")
    compared = param.List(default=[], item_type=str, doc="the runs ticked in the table, compared below it")
    compare_x = param.Selector(default="step", objects=list(AXES), doc="x axis of the compared curves")
    view = param.Integer(default=0, bounds=(0, 1), doc="what is shown under the table: 0 the selected run, "
                         "1 the comparison of the ticked runs")
    runs = param.List(default=[], doc="RunInfo of every run, newest first")
    errors = param.Dict(default={}, doc="form field -> why the number typed there is refused")
    message = param.String(default="")

    def __init__(self, runs_root: str | Path, teacher: TeacherPanel, student: StudentPanel, **params):
        super().__init__(**params)
        self.teacher, self.student = teacher, student
        self.launcher = Launcher(runs_root)
        self.index = RunIndex(runs_root, self.launcher)
        if not self.run_name:
            self.run_name = new_run_name()
        self._shown: tuple[str, int] = ("", -1)   # (run, event count) drawn in the figures
        self._compared_shown: tuple = ()          # (x axis, (run, event count)...) drawn in the comparison
        self._final: dict[str, tuple[int, dict]] = {}  # run -> (event count, its run_row)
        self._table_rows: list[tuple] = []
        self._syncing_table = False
        self.fields = {name: self._number_field(name, label, width, css) for name, label, width, css in NUMBER_FIELDS}
        self.loss_pane = pn.pane.Plotly(responsive(loss_curves([]), 420), sizing_mode="stretch_width",
                                        css_classes=["loss-curves"])
        self.eval_pane = pn.pane.Plotly(responsive(eval_curves([]), 520), sizing_mode="stretch_width")
        self.table = pn.widgets.Tabulator(pd.DataFrame(columns=COLUMNS), disabled=True, show_index=False,
                                          selectable="checkbox", formatters=FORMATS, sizing_mode="stretch_width",
                                          pagination="local", page_size=12, css_classes=["runs-table"])
        self.table.param.watch(self._ticked, "selection")
        self.table.on_click(self._clicked)
        # the comparison: shown in ``compare_body`` once a run is ticked (before that, only the hint)
        self.compare_losses = pn.pane.Plotly(None, sizing_mode="stretch_width", css_classes=["compare-losses"])
        self.compare_evals = pn.pane.Plotly(None, sizing_mode="stretch_width", css_classes=["compare-evals"])
        self.compare_quality = pn.pane.Plotly(None, sizing_mode="stretch_width", css_classes=["compare-quality"])
        self.compare_rows = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, formatters=FORMATS,
                                                 sizing_mode="stretch_width", css_classes=["compare-rows"])
        self.compare_hint = pn.pane.Markdown("", css_classes=["compare-hint"], sizing_mode="stretch_width")
        self.compare_tasks_hint = pn.pane.Markdown("", css_classes=["compare-tasks-hint"],
                                                   sizing_mode="stretch_width")
        self.compare_tasks = pn.pane.Plotly(None, sizing_mode="stretch_width", css_classes=["compare-tasks"],
                                            visible=False)
        self.compare_task_rows = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False,
                                                      sizing_mode="stretch_width", css_classes=["compare-task-rows"],
                                                      visible=False)
        self._tasks_shown: tuple = ()             # (ticked runs, results files' stamp) drawn in the task scores
        self.compare_body = pn.Column(sizing_mode="stretch_width")
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

    # ---- the form --------------------------------------------------------------------------------------------
    def _number_field(self, name: str, label: str, width: int, css: str):
        """A number input for parameter ``name`` with no bounds of its own (a browser clamps silently): what is
        typed is checked by ``field_problem`` and either taken or reported in ``errors``."""
        kind = pn.widgets.IntInput if isinstance(self.param[name], param.Integer) else pn.widgets.FloatInput
        widget = kind(label=label, value=getattr(self, name), width=width, css_classes=[css])
        widget.param.watch(lambda event: self._typed(name, label, event.new), "value")
        self.param.watch(lambda event: setattr(widget, "value", event.new), name)
        return widget

    def _typed(self, name: str, label: str, value) -> None:
        problem = field_problem(self.param[name], label, value)
        errors = {k: v for k, v in self.errors.items() if k != name}
        if problem:
            errors[name] = problem
        else:
            setattr(self, name, int(value) if isinstance(self.param[name], param.Integer) else float(value))
        self.errors = errors

    def recipe_stages(self) -> list[StageConfig]:
        """The recipe's stages for this tab's budget, with the recipe's measured dials (``default_dials``: the
        end-to-end stage's learning rate)."""
        return recipe(self.recipe, tokens=parse_tokens(self.tokens), seq_len=self.seq_len,
                      batch_size=self.batch_size, lr=self.lr,
                      **default_dials(self.recipe))

    @property
    def planned_steps(self) -> int:
        """Optimiser steps of the run the page describes: each stage's ``StageConfig.steps``, as the run counts."""
        return sum(stage.steps for stage in self.recipe_stages())

    def run_config(self) -> RunConfig:
        """The RunConfig the page describes: the Teacher and Student tabs' choices and this tab's recipe/budget."""
        if self.errors:
            raise ValueError("fix the form first: " + "; ".join(self.errors.values()))
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

    # ---- the table: ticking compares, clicking selects -------------------------------------------------------
    def _ticked(self, event) -> None:
        if self._syncing_table:
            return
        names = list(self.table.value["run"]) if len(self.table.value) else []
        self.compared = [names[i] for i in sorted(event.new) if i < len(names)]

    def _clicked(self, event) -> None:
        """A click on a row's cells (not its tick box) shows that run."""
        if event.column in COLUMNS and event.row is not None and event.row < len(self.table.value):
            self.selected = str(self.table.value["run"].iloc[event.row])
            self.view = 0

    def _tick_rows(self) -> None:
        """The table's ticks from ``compared`` (the rows move as runs are added)."""
        names = list(self.table.value["run"]) if len(self.table.value) else []
        ticks = [i for i, name in enumerate(names) if name in self.compared]
        if ticks != self.table.selection:
            self._syncing_table = True
            try:
                self.table.selection = ticks
            finally:
                self._syncing_table = False

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
        kept = [name for name in self.compared if name in names]
        if kept != self.compared:
            self.compared = kept
        rows = [self._row(info) for info in self.runs]
        if rows != self._table_rows:
            self._table_rows = rows
            self._syncing_table = True
            try:
                self.table.value = pd.DataFrame(rows, columns=COLUMNS)
            finally:
                self._syncing_table = False
            self._tick_rows()
        self._show_selected()
        self._show_compared()

    def final_numbers(self, name: str) -> dict:
        """``workbench.viz.compare.run_row`` of run ``name`` from the events read so far ({} for a folder that is
        not a run); recomputed only when new events arrived."""
        state = self.index.state(name)
        if state is None:
            return {}
        count, row = self._final.get(name, (-1, {}))
        if count != len(state.events):
            row = run_row(RunEvents(name, state.events))
            self._final[name] = (len(state.events), row)
        return row

    def _row(self, info: RunInfo) -> tuple:
        """A run's table row: live step, loss and recent tokens/s; once finished, the run's own tokens/s (its
        stages' summary, as the comparison shows it) and its held-out numbers."""
        final = self.final_numbers(info.name)
        rate = final["tokens/s"] if final.get("status") == "finished" else info.tokens_per_s
        return (info.name, info.status, info.teacher, info.mixer, info.replaced, info.step, info.total_steps,
                info.stage, math.nan if info.loss is None else info.loss, math.nan if rate is None else rate,
                *(final.get(column, math.nan) for column in FINAL), info.message)

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

    def compared_runs(self) -> list[RunEvents]:
        """The ticked runs with the events read so far, in the table's order."""
        return [RunEvents(name, self.index.states[name].events) for name in self.compared
                if name in self.index.states]

    def _show_compared(self) -> None:
        """Redraw the comparison when the ticked runs, the axis or their events changed, and the task scores when
        the ticked runs or any results file changed."""
        runs = self.compared_runs()
        self._show_task_scores([run.name for run in runs])
        shown = (self.compare_x, *((run.name, len(run.events)) for run in runs))
        if shown == self._compared_shown:
            return
        self._compared_shown = shown
        if not runs:
            self.compare_hint.object = "*Tick runs in the table above (the box at the start of each row) to " \
                                       "overlay their curves here; click a row to show that run alone.*"
            self.compare_body.objects = []
            return
        self.compare_hint.object = f"Comparing **{', '.join(run.name for run in runs)}**."
        self.compare_losses.object = responsive(loss_overlay(runs, self.compare_x), 420)
        self.compare_evals.object = responsive(eval_overlay(runs, self.compare_x), 640)
        self.compare_quality.object = responsive(quality_vs_tokens(runs), 380)
        self.compare_rows.value = compare_table(runs)
        if not self.compare_body.objects:
            self.compare_body.objects = [self.compare_rows, self.compare_losses, self.compare_evals,
                                         self.compare_quality, self.compare_tasks_hint, self.compare_tasks,
                                         self.compare_task_rows]

    def _scores(self, name: str, teacher: bool = False, others: list[Path] | None = None) -> dict | None:
        """The task scores of run ``name`` (``store.run_results``), or with ``teacher`` its teacher's
        (``store.teacher_results`` among the run folders ``others``); None if it has none. A results file that a
        link leads out of the run folder is refused (ValueError), as is one that cannot be read."""
        path = self.index.states[name].path
        inside_run(path, str(store.results_file(".", teacher)))
        return store.teacher_results(path, others or []) if teacher else store.run_results(path)

    def _teacher_folders(self) -> list[Path]:
        """The run folders whose teacher scores may be read: those whose ``eval/teacher.json`` stays inside them."""
        folders = []
        for state in self.index.states.values():
            try:
                inside_run(state.path, str(store.results_file(".", teacher=True)))
            except ValueError:
                continue   # it links out of its run folder: never read
            folders.append(state.path)
        return folders

    def compared_task_scores(self, names: list[str]) -> tuple[dict[str, dict], str | None, list[str]]:
        """The task scores of the ticked runs ``names``: (name -> results JSON, the teacher first when its scores
        exist; the teacher's name in it, or None; hint lines). The teacher is the first scored run's, its scores that
        run's ``eval/teacher.json`` or another run's of the same teacher (``store.teacher_results``); runs of another
        teacher are left out, and each run without scores gets the command that scores it."""
        scored, missing, lines = {}, [], []
        for name in names:
            try:
                result = self._scores(name)
            except (OSError, ValueError) as err:
                lines.append(f"**{name}**: {err}")
                continue
            if result is None:
                missing.append(name)
            else:
                scored[name] = result
        results, teacher = {}, None
        first = next(iter(scored), None)
        tasks, limit = (list(scored[first]["tasks"]), scored[first]["settings"].get("limit")) if first else \
            (list(store.DEFAULT_TASKS), None)
        if first is not None:
            path = self.index.states[first].path
            spec = store.run_teacher(path)
            try:
                found = self._scores(first, teacher=True, others=self._teacher_folders())
            except (OSError, ValueError) as err:
                lines.append(f"**{first}** (its teacher's scores): {err}")
                found = None
            if found is None:
                lines.append(f"No scores of the teacher **{spec}** yet (retention needs them): "
                             f"`{store.eval_command(path, tasks, limit, teacher=True)}`")
            else:
                teacher = f"{Path(spec).name} (teacher)"
                results[teacher] = found
            for name, result in scored.items():
                other = store.run_teacher(self.index.states[name].path)
                if other == spec:
                    results[name] = result
                else:
                    lines.append(f"**{name}** was distilled from another teacher ({other}): tick it without the "
                                 f"runs of {spec} to see its scores")
        for name in missing:
            command = store.eval_command(self.index.states[name].path, tasks, limit, teacher=first is None)
            lines.append(f"**{name}** has no task scores yet: `{command}`")
        return results, teacher, lines

    def _show_task_scores(self, names: list[str]) -> None:
        """Redraw the task scores of the ticked runs when they or a results file changed."""
        shown = (tuple(names), store.results_stamp(self.index.root))
        if shown == self._tasks_shown:
            return
        self._tasks_shown = shown
        try:
            results, teacher, lines = self.compared_task_scores(names)
        except (OSError, ValueError) as err:   # a run's config.json or results file changed under us
            results, teacher, lines = {}, None, [f"**Error:** {err}"]
        drawn = any(name != teacher for name in results)
        head = "**Task scores** (lm-evaluation-harness, saved in each run's `eval/` folder by `workbench eval`)"
        self.compare_tasks_hint.object = "\n\n".join([head, *lines])
        self.compare_tasks.visible = self.compare_task_rows.visible = drawn
        if drawn:
            scores = task_rows(results, teacher)
            table = task_table(scores)
            self.compare_tasks.object = responsive(task_scores(scores, title="Task scores"),
                                                   600 if teacher is not None else 400)
            self.compare_task_rows.formatters = {column: number("0.000") for column in table.columns
                                                 if column not in ("task", "metric", "scoring", "n")}
            self.compare_task_rows.value = table

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

    @param.depends("compared", "compare_x", watch=True)
    def _comparison_changed(self) -> None:
        self._tick_rows()
        self._show_compared()

    # ---- view ------------------------------------------------------------------------------------------------
    @param.depends("tokens", "batch_size", "seq_len", "recipe")
    def _budget(self):
        try:
            steps = self.planned_steps
            text = (f"≈ **{steps:,}** optimiser steps of {self.batch_size} × {self.seq_len} tokens "
                    f"(recipe {self.recipe})")
        except ValueError as err:
            text = f"**{err}**"
        return pn.pane.Markdown(text, css_classes=["budget"])

    @param.depends("errors")
    def _errors(self):
        text = "\n".join(f"- {problem}" for problem in self.errors.values())
        return pn.pane.Markdown(text, css_classes=["form-errors"], styles={"color": "#b00020"},
                                visible=bool(self.errors))

    def student_spec(self) -> str:
        """What Start would train, in one line: teacher, mixer, init, replaced and kept layers, device."""
        student, teacher = self.student, self.teacher
        device = f"{self.device} (here: {resolve_device('auto').type})" if self.device == "auto" else self.device
        if teacher.teacher is None:
            return f"**Student:** load a teacher first (Teacher tab); mixer **{student.mixer}**, {student.init} init."
        replaced = student.replaced
        layers = ", ".join(str(i) for i in replaced) if replaced else "none (choose layers in the Student tab)"
        return (f"**Student:** {teacher.source} with **{student.mixer}** ({student.init} init) in layer"
                f"{'s' if len(replaced) != 1 else ''} **{layers}**, attention kept in "
                f"{len(student.keep_attention)} of {student.num_layers} · device {device} · change it in the "
                f"Student tab")

    def _spec(self, *values):
        return pn.pane.Markdown(self.student_spec(), css_classes=["student-spec"], sizing_mode="stretch_width")

    @param.depends("message")
    def _message(self):
        return pn.pane.Markdown(self.message, css_classes=["run-message"])

    def __panel__(self):
        w = pn.widgets
        def field(widget, parameter, label, width, css):
            return widget.from_param(parameter, name=label, width=width, css_classes=[css])

        def wrap(*objects):
            return pn.FlexBox(*objects, flex_wrap="wrap", gap="0 4px", sizing_mode="stretch_width")

        p, s = self.param, self.student.param
        spec = pn.bind(self._spec, s.mixer, s.init, s.keep_attention, s.num_layers, self.teacher.param.teacher,
                       p.device)
        settings = pn.Column(
            spec,
            wrap(field(w.Select, p.recipe, "Recipe", 170, "recipe"),
                 field(w.TextInput, p.tokens, "Token budget", 120, "budget-tokens"),
                 *(self.fields[name] for name in ("batch_size", "seq_len", "lr")),
                 field(w.Select, p.device, "Device", 100, "device"),
                 pn.Column(pn.Spacer(height=18), field(w.Checkbox, p.compile, "torch.compile", 120, "compile"))),
            wrap(*(self.fields[name] for name in ("eval_every", "eval_tokens", "final_eval_tokens",
                                                   "checkpoint_every")),
                 field(w.TextInput, p.run_name, "Run name", 220, "run-name")),
            self._errors, self._budget,
            wrap(self.start_button, self._message),
            sizing_mode="stretch_width")
        selected_view = pn.Column(
            wrap(self._select, pn.Column(pn.Spacer(height=18), pn.Row(self.stop_button, self.resume_button)),
                 pn.Column(pn.Spacer(height=28), self.progress)),
            self.stats, self.loss_pane, self.eval_pane,
            pn.Card(self.log, title="Process output", collapsed=True, sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
        compare_view = pn.Column(
            wrap(w.RadioButtonGroup.from_param(p.compare_x, name="x axis", css_classes=["compare-x"],
                                               options={"by step": "step", "by training tokens": "tokens"}),
                 self.compare_hint),
            self.compare_body,
            sizing_mode="stretch_width")
        views = pn.Tabs(("Selected run", selected_view), ("Compare ticked runs", compare_view), active=self.view,
                        dynamic=False, sizing_mode="stretch_width", css_classes=["run-views"])
        views.link(self, active="view", bidirectional=True)
        return pn.Column("## New run", settings, "## Runs", self.table, views, sizing_mode="stretch_width")
