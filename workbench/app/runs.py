"""Run folders inside the runs root: discovery, status and live numbers, read incrementally from each folder's
typed events (workbench.distill.events.read_typed with a byte offset), its LOCK, exit record and summary. The step
total is the config's (the sum of ``StageConfig.steps``), as the run counts it. Every file is read through
workbench.app.paths.inside_run: one linking outside its run folder is refused, never shown.

Status of a run folder:
  starting  - a child started by this app is alive but has not taken the LOCK yet
  running   - the LOCK names a live process verified as the run's writer (workbench.app.lock: started here, or a
              ``distill`` of this folder that started before the LOCK was written)
  locked    - the LOCK names a live process that cannot be verified (a reused pid, a LOCK written by hand, a run
              from Python): shown as "locked by pid N, not started here"; Stop and Resume refuse it
  finished  - summary.json exists
  failed    - an "error" event ended the last attempt, or the child exited with an error status
  stopped   - none of the above (stopped on purpose, or killed): resume continues from the last checkpoint
  not a run - a folder of the runs root that cannot be read as a run (no config.json, a config.json that is not a
              run's, such as a saved student's, a file linking outside it); its row says why
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.app.paths import inside_root, inside_run
from workbench.app.worker import EXIT_FILE, LAUNCH_FILE, LOG_FILE, Launcher
from workbench.distill.config import RunConfig
from workbench.distill.events import Error, Event, Resume, RunStart, Step, Unreadable, read_typed, select
from workbench.distill.run_dir import RunDir

NOT_A_RUN = "not a run"

STOP_SIGNALS = (-15, -9)  # exit statuses of a child stopped on purpose (SIGTERM, SIGKILL)


@dataclass
class RunInfo:
    name: str
    status: str
    teacher: str = ""
    mixer: str = ""
    replaced: str = ""
    stage: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    gpu_mem_gb: float | None = None
    message: str = ""
    started: float = 0.0


class RunState:
    """One run folder, its events read incrementally (only the new bytes at each ``update``)."""

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path).resolve()
        self.name = name or self.path.name   # as the index lists it: the path from the runs root
        self.run = RunDir(self.path)
        self.events: list[Event | Unreadable] = []
        self.offset = 0
        self._config: dict | None = None

    def file(self, name: str) -> Path:
        """``name`` in the run folder, checked not to link outside it (ValueError)."""
        return inside_run(self.path, name)

    def update(self) -> list[Event | Unreadable]:
        """Read the events appended since the last call; returns them."""
        new, self.offset = read_typed(self.file(self.run.events_path.name), self.offset)
        self.events.extend(new)
        return new

    @property
    def config(self) -> dict:
        """The run config (config.json once the run wrote it, else the launch request), {} if neither exists; a
        ValueError naming the file if it is not a run's (a saved student's config.json, malformed JSON)."""
        config_file = self.file(self.run.config_path.name)
        if self._config is None and config_file.is_file():
            self._config = run_section(config_file, read_json(config_file).get("run"))
        if self._config is not None:
            return self._config
        launch = self.file(LAUNCH_FILE)
        return run_section(launch, read_json(launch)) if launch.is_file() else {}

    @property
    def summary(self) -> dict | None:
        file = self.file(self.run.summary_path.name)
        return read_json(file) if file.is_file() else None

    def run_config(self) -> RunConfig | None:
        """``config`` as a RunConfig (None if the folder has neither file); ValueError if it does not read as one a
        run accepts (RunConfig.validate)."""
        config = self.config
        if not config:
            return None
        try:
            run_config = RunConfig.from_dict(config)
            run_config.validate()
        except TypeError as err:   # a field of the wrong type, met by the constructor or a comparison in validate
            raise ValueError(f"{self.path.name}: its config does not read as a RunConfig ({err})") from err
        return run_config

    def exit_record(self) -> dict | None:
        file = self.file(EXIT_FILE)
        return read_json(file) if file.is_file() else None

    def status(self, launcher: Launcher) -> tuple[str, str]:
        """(status, message) from the folder; see the module docstring."""
        holder = launcher.holder(self.path)
        if holder is not None:
            return ("running", "") if holder.verified else ("locked", holder.refusal())
        if launcher.launching(self.path):
            return "starting", ""
        if self.file(self.run.summary_path.name).is_file():
            return "finished", ""
        attempt = select(self.events, RunStart, Resume, Error)
        if attempt and isinstance(attempt[-1], Error):
            return "failed", attempt[-1].message
        exit_record = self.exit_record()
        if exit_record and exit_record["returncode"] not in (0, *STOP_SIGNALS):
            return "failed", self.log_tail(1).strip()
        return "stopped", ""

    def log_tail(self, lines: int = 12) -> str:
        """The last ``lines`` lines of the child's output (progress bars collapsed to their last state)."""
        file = self.file(LOG_FILE)
        if not file.is_file():
            return ""
        with open(file, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 8192))
            text = f.read().decode("utf-8", "replace")
        rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines() if row.strip()]
        return "\n".join(rows[-lines:])

    def info(self, launcher: Launcher) -> RunInfo:
        status, message = self.status(launcher)
        events = select(self.events)
        info = RunInfo(name=self.name, status=status, message=message,
                       started=events[0].time if events else self.path.stat().st_mtime)
        config = self.run_config()
        if config is not None:
            info.teacher, info.mixer = Path(config.teacher).name, config.mixer
            info.total_steps = sum(stage.steps for stage in config.stages)
        starts = select(events, RunStart)
        if starts:
            info.replaced = ",".join(str(i) for i in starts[0].replaced)
        steps = select(events, Step)
        if steps:
            last = steps[-1]
            info.step, info.stage, info.loss, info.gpu_mem_gb = last.step, last.stage, last.loss, last.gpu_mem_gb
            recent = steps[-10:]
            rates = [e.tokens_per_s for e in recent if e.tokens_per_s is not None]
            info.tokens_per_s = sum(rates) / len(rates) if rates else None
            if len(recent) > 1 and status == "running":
                per_step = (recent[-1].time - recent[0].time) / (recent[-1].step - recent[0].step or 1)
                info.eta_s = max(info.total_steps - info.step, 0) * per_step
        return info


def read_json(file: Path) -> dict:
    """A JSON object from ``file``; a ValueError naming the file if it holds something else."""
    try:
        data = json.loads(file.read_text(errors="replace"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file.name} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{file.name} holds a {type(data).__name__}, not a JSON object")
    return data


def run_section(file: Path, section) -> dict:
    """``section`` of ``file`` if it is a run config (a JSON object with a teacher); a ValueError otherwise."""
    if not isinstance(section, dict) or "teacher" not in section:
        raise ValueError(f"{file.name} is not a run config (no \"run\" section with a teacher: a saved model's "
                         f"config?)")
    return section


class RunIndex:
    """Every folder directly inside ``root`` but hidden ones: the runs (a folder with config.json or a launch
    request) and, as rows that say why, the folders that cannot be read as runs. A folder that is no run but holds
    runs one level down (a group: ``benchmarks/quality_curve.py`` writes ROW/BUDGET-sSEED) lists those runs, each
    named by its path from the root ("mil-25/30M-s0")."""

    def __init__(self, root: str | Path, launcher: Launcher | None = None):
        self.root = Path(root).resolve()
        self.launcher = launcher or Launcher(self.root)
        self.states: dict[str, RunState] = {}

    def scan(self) -> list[RunInfo]:
        """Discover folders, read their new events; newest first. A folder that is not a run gives a row whose
        status is "not a run" and whose message says why; it never stops the others from showing."""
        folders = _subfolders(self.root) if self.root.is_dir() else []
        infos = []
        for path in folders:
            group = not _is_run(path) and path.resolve().is_relative_to(self.root)
            members = [sub for sub in _subfolders(path) if _is_run(sub)] if group else []
            for folder in members or [path]:
                name = folder.relative_to(self.root).as_posix()
                info = self._scan_one(folder, name)
                if info.status == NOT_A_RUN:
                    self.states.pop(name, None)
                infos.append(info)
        for name in set(self.states) - {info.name for info in infos}:
            del self.states[name]
        return sorted(infos, key=lambda i: i.started, reverse=True)

    def _scan_one(self, path: Path, name: str) -> RunInfo:
        """The row of folder ``path`` (listed as ``name``): its run's info, or a "not a run" row saying why."""
        try:
            run_path = inside_root(self.root, path)
            if not _is_run(run_path):
                raise ValueError("no config.json or launch.json: not a run folder")
            state = self.states.setdefault(name, RunState(run_path, name))
            state.update()
            return state.info(self.launcher)
        except (OSError, ValueError) as err:   # started 0: listed after every run
            return RunInfo(name=name, status=NOT_A_RUN, message=str(err))

    def state(self, name: str) -> RunState | None:
        return self.states.get(name)


def _subfolders(folder: Path) -> list[Path]:
    """The folders directly inside ``folder`` but hidden ones, by name (none when it cannot be listed)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run folder: it holds config.json or a launch request."""
    return (folder / "config.json").exists() or (folder / LAUNCH_FILE).exists()


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.0f} s"
