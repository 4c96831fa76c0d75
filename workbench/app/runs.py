"""Run folders inside the runs root: discovery, status and live numbers, read incrementally from each folder's
typed events (workbench.distill.events.read_typed with a byte offset), its LOCK, exit record and summary. The step
total is the config's (the sum of ``StageConfig.steps``), as the run counts it.

Status of a run folder:
  starting  - a child started by this app is alive but has not taken the LOCK yet
  running   - the LOCK names a live process (a run started here or from the command line)
  finished  - summary.json exists
  failed    - an "error" event ended the last attempt, or the child exited with an error status
  stopped   - none of the above (stopped on purpose, or killed): resume continues from the last checkpoint
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.app.worker import EXIT_FILE, LAUNCH_FILE, LOG_FILE, Launcher
from workbench.distill.config import RunConfig
from workbench.distill.events import Error, Event, Resume, RunStart, Step, Unreadable, select
from workbench.distill.run_dir import RunDir

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

    def __init__(self, path: Path):
        self.path = Path(path)
        self.run = RunDir(self.path)
        self.events: list[Event | Unreadable] = []
        self.offset = 0
        self._config: dict | None = None

    def update(self) -> list[Event | Unreadable]:
        """Read the events appended since the last call; returns them."""
        new, self.offset = self.run.read_typed(self.offset)
        self.events.extend(new)
        return new

    @property
    def config(self) -> dict:
        """The run config (config.json once the run wrote it, else the launch request), {} if neither exists."""
        if self._config is None and self.run.config_path.is_file():
            self._config = json.loads(self.run.config_path.read_text())["run"]
        if self._config is not None:
            return self._config
        launch = self.path / LAUNCH_FILE
        return json.loads(launch.read_text()) if launch.is_file() else {}

    def run_config(self) -> RunConfig | None:
        """``config`` as a RunConfig (None if the folder has neither file); ValueError if it does not read as one."""
        config = self.config
        if not config:
            return None
        try:
            return RunConfig.from_dict(config)
        except TypeError as err:
            raise ValueError(f"{self.path.name}: its config does not read as a RunConfig ({err})") from err

    def exit_record(self) -> dict | None:
        file = self.path / EXIT_FILE
        return json.loads(file.read_text()) if file.is_file() else None

    def status(self, launcher: Launcher) -> tuple[str, str]:
        """(status, message) from the folder; see the module docstring."""
        if self.run.lock_owner() is not None:
            return "running", ""
        if launcher.launching(self.path):
            return "starting", ""
        if self.run.summary_path.is_file():
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
        file = self.path / LOG_FILE
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
        info = RunInfo(name=self.path.name, status=status, message=message,
                       started=events[0].time if events else self.path.stat().st_mtime)
        try:
            config = self.run_config()
        except ValueError as err:
            config, info.message = None, info.message or str(err)
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


class RunIndex:
    """Every run folder directly inside ``root`` (a folder with config.json or a launch request)."""

    def __init__(self, root: str | Path, launcher: Launcher | None = None):
        self.root = Path(root).resolve()
        self.launcher = launcher or Launcher(self.root)
        self.states: dict[str, RunState] = {}

    def scan(self) -> list[RunInfo]:
        """Discover folders, read their new events; newest first."""
        found = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.is_dir() and ((path / "config.json").is_file() or (path / LAUNCH_FILE).is_file()):
                    found.append(path.name)
        for name in set(self.states) - set(found):
            del self.states[name]
        for name in found:
            self.states.setdefault(name, RunState(self.root / name)).update()
        infos = [self.states[name].info(self.launcher) for name in found]
        return sorted(infos, key=lambda i: i.started, reverse=True)

    def state(self, name: str) -> RunState | None:
        return self.states.get(name)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds >= 60 else f"{seconds:.0f} s"
