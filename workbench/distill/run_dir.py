"""A run folder: everything one distillation run writes, and all that readers need.

    RUN/config.json          the run's full configuration (written once, atomically)
    RUN/events.jsonl         the append-only event stream (workbench.distill.events)
    RUN/checkpoints/step-000000123.safetensors + .json   tensors + small state, each written atomically
    RUN/checkpoints/latest.json                          points at the newest complete checkpoint (written last)
    RUN/summary.json         final numbers (written atomically at the end)
    RUN/LOCK                 held by the process that writes the run (pid inside); two writers never share a folder

A multi-process run has one writer, rank 0; the other ranks open the folder with ``writer=False``: they read its
config and checkpoints, and their ``log``, ``save_checkpoint`` and ``write_summary`` calls do nothing.

A checkpoint is complete only once ``latest.json`` names it, so a kill at any moment leaves the previous checkpoint
as the one to resume from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from workbench.distill.checkpoint import CorruptCheckpoint, load_tensors, save_json, save_tensors
from workbench.distill.events import Event, EventLog, Unreadable, read_events, read_typed, validate

KEEP_CHECKPOINTS = 2  # older complete checkpoints are deleted once a newer one is in place


class RunLocked(RuntimeError):
    pass


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process of another user counts: it cannot be signalled, but it lives)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._events: EventLog | None = None

    # ---- layout ----------------------------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.json")
    events_path = property(lambda self: self.path / "events.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    lock_path = property(lambda self: self.path / "LOCK")

    @classmethod
    def create(cls, path: str | Path, config: dict) -> RunDir:
        """A new run folder with ``config``; refuses a folder that already holds a run (resume it instead)."""
        run = cls(path)
        if run.config_path.exists():
            raise FileExistsError(f"{run.path} already holds a run; resume it (--resume {run.path}) "
                                  f"or choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        save_json(run.config_path, config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.config_path.is_file():
            raise FileNotFoundError(f"{run.path} is not a run folder (no config.json)")
        return run

    @property
    def config(self) -> dict:
        return json.loads(self.config_path.read_text())

    # ---- exclusive writer ------------------------------------------------------------------------------------
    def lock_owner(self) -> int | None:
        """The pid in the run's LOCK if that process is alive, else None (no lock, or a dead writer's stale one)."""
        text = self.lock_path.read_text().strip() if self.lock_path.is_file() else ""
        return int(text) if text.isdigit() and pid_alive(int(text)) else None

    def acquire(self) -> None:
        """Take the run's lock; a lock left by a dead process is taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self.lock_owner()
                if owner is not None and owner != os.getpid():
                    raise RunLocked(f"{self.path} is being written by process {owner}; stop it first") from None
                self.lock_path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return

    def release(self) -> None:
        if self.lock_path.exists() and self.lock_path.read_text().strip() == str(os.getpid()):
            self.lock_path.unlink()

    # ---- events ----------------------------------------------------------------------------------------------
    @property
    def events(self) -> EventLog:
        if self._events is None:
            self._events = EventLog(self.events_path)
        return self._events

    def log(self, type: str, **fields) -> dict | None:
        """Append one event (checked against its declaration in workbench.distill.events on every rank; written by
        the writer alone); returns the line written, None on the other ranks."""
        if not self.writer:
            validate(type, fields)
            return None
        return self.events.append(type, **fields)

    def read_events(self, offset: int = 0) -> tuple[list[dict], int]:
        """The lines of events.jsonl from byte ``offset``, as written, and the offset to continue from."""
        return read_events(self.events_path, offset)

    def read_typed(self, offset: int = 0) -> tuple[list[Event | Unreadable], int]:
        """``read_events`` as typed events (workbench.distill.events.read_typed)."""
        return read_typed(self.events_path, offset)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
        """Write tensors and state for ``step``; only then point ``latest.json`` at them; prune old ones."""
        stem = self.checkpoint_dir / f"step-{step:09d}"
        if not self.writer:
            return stem
        save_tensors(stem.with_suffix(".safetensors"), tensors)
        save_json(stem.with_suffix(".json"), {"step": step, **state})
        save_json(self.checkpoint_dir / "latest.json", {"step": step, "name": stem.name})
        for old in sorted(self.checkpoint_dir.glob("step-*.json"))[:-KEEP_CHECKPOINTS]:
            old.unlink(missing_ok=True)
            old.with_suffix(".safetensors").unlink(missing_ok=True)
        return stem

    def latest_checkpoint(self, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, state) of the newest complete checkpoint, or None if the run has none yet."""
        pointer = self.checkpoint_dir / "latest.json"
        if not pointer.is_file():
            return None
        name = json.loads(pointer.read_text())["name"]
        stem = self.checkpoint_dir / name
        if not stem.with_suffix(".json").is_file():
            raise CorruptCheckpoint(f"{pointer} names {name} but its state file is missing")
        state = json.loads(stem.with_suffix(".json").read_text())
        return load_tensors(stem.with_suffix(".safetensors"), device), state

    # ---- summary ---------------------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        if self.writer:
            save_json(self.summary_path, summary)

    @property
    def summary(self) -> dict | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None
