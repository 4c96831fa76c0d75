"""A run folder: everything one distillation run writes, and all that readers need (docs/run-folders.md).

    RUN/config.json          the run's full configuration (written once, atomically)
    RUN/events.jsonl         the append-only event stream (workbench.distill.events)
    RUN/checkpoints/step-000000123.safetensors + .json   tensors + small state, each written atomically; the state
                                                         records the tensors file's size and SHA-256 ("files")
    RUN/checkpoints/latest.json                          points at the newest complete checkpoint (written last)
    RUN/checkpoints/diverged-step-*                      a checkpoint whose weights gave a non-finite loss, set aside
    RUN/summary.json         final numbers (written atomically at the end)
    RUN/LOCK                 held by the process that writes the run (pid inside); two writers never share a folder

A multi-process run has one writer, rank 0; the other ranks open the folder with ``writer=False``: they read its
config and checkpoints, and their ``log``, ``save_checkpoint`` and ``write_summary`` calls do nothing.

A checkpoint is complete only once ``latest.json`` names it, so a kill at any moment leaves the previous checkpoint
as the one to resume from; the temporary files of a killed write are deleted by the next writer
(``remove_temp_files``). ``load_checkpoint`` verifies what it loads against the recorded checksums and falls back
to the newest older checkpoint that verifies, saying which it skipped and why; with ``repair`` (the writer, on
resume) it also sets the skipped ones aside and points ``latest.json`` at the one loaded. Checkpoints written before
checksums existed load unverified, and say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from workbench.distill.checkpoint import (
    CheckpointWriteError,
    CorruptCheckpoint,
    disk_free,
    load_tensors,
    remove_temp_files,
    save_json,
    save_tensors,
    sha256,
)
from workbench.distill.events import Event, EventLog, Unreadable, read_events, read_typed, validate

KEEP_CHECKPOINTS = 2  # older complete checkpoints are deleted once a newer one is in place
# Files the dashboard writes into a run folder before the run it starts creates config.json (workbench.app.worker):
LAUNCH_FILE = "launch.json"   # the config handed to the child (it writes config.json itself)
LOG_FILE = "worker.log"       # the child's stdout and stderr
EXIT_FILE = "exit.json"       # {"pid", "returncode", "time"} once a child started by the app has exited
PREPARED_FILES = (LAUNCH_FILE, LOG_FILE, EXIT_FILE)


class RunLocked(RuntimeError):
    pass


def checkpoint_room(nbytes: int) -> str:
    """What a run needs on disk for checkpoints of ``nbytes`` each, in words."""
    return (f"A run keeps {KEEP_CHECKPOINTS} checkpoints and writes the next before it deletes the oldest: room for "
            f"{KEEP_CHECKPOINTS + 1}, about {(KEEP_CHECKPOINTS + 1) * nbytes / 1e9:.2f} GB.")


@dataclass
class LoadedCheckpoint:
    """A checkpoint as ``RunDir.load_checkpoint`` read it."""

    tensors: dict[str, torch.Tensor]             # "param/NAME" and "opt/NAME/FIELD" tensors
    state: dict                                  # its small state (step, stage_idx, stage_step, global_step, ...)
    name: str                                    # its stem, e.g. "step-000000123"
    verified: bool                               # checked against its recorded checksums (False: written before
                                                 #   checkpoints recorded them)
    skipped: list[str] = field(default_factory=list)  # newer checkpoints that failed verification: one line each

    @property
    def step(self) -> int:
        return self.state["step"]

    @property
    def notes(self) -> list[str]:
        """One line per thing a user should know about this load: fallbacks, and an unverified checkpoint."""
        lines = list(self.skipped)
        if self.skipped:
            lines.append(f"falling back to checkpoint {self.name} (step {self.step})")
        if not self.verified:
            lines.append(f"checkpoint {self.name} was written before checkpoints recorded checksums: loaded "
                         f"unverified")
        return lines


def _run_config(file: Path) -> dict | None:
    """The JSON object in ``file`` if it is a run's config.json (it holds a "run" object), else None (another
    program's config.json, such as a saved model's, or no JSON at all); FileNotFoundError if there is no file."""
    try:
        data = json.loads(file.read_bytes())
    except ValueError:  # not JSON (or not UTF-8)
        return None
    return data if isinstance(data, dict) and isinstance(data.get("run"), dict) else None


def _not_a_run(path: Path) -> ValueError:
    return ValueError(f"{path} is not a run folder: its config.json was not written by `workbench distill` (no "
                      f"\"run\" object; a saved model's?)")


def _checkpoint_step(stem: str) -> int:
    """The step of a checkpoint stem "step-000000123"."""
    return int(stem[len("step-"):])


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
        """A new run folder with ``config``, at a path that is new or an empty folder (or one holding only the
        dashboard's ``PREPARED_FILES``). Refuses a file or link, a folder that already holds a run (resume it
        instead) and a folder of other files, which are never written into."""
        run = cls(path)
        if run.path.is_symlink() or (run.path.exists() and not run.path.is_dir()):
            raise FileExistsError(f"{run.path} is {'a link' if run.path.is_symlink() else 'a file'}; a run needs a "
                                  f"folder path (new or empty)")
        if run.config_path.exists():
            raise FileExistsError(f"{run.path} already holds a run; resume it (--resume {run.path}) "
                                  f"or choose another --out")
        others = sorted(p.name for p in run.path.iterdir() if p.name not in PREPARED_FILES) if run.path.is_dir() else []
        if others:
            raise FileExistsError(f"{run.path} is a folder holding other files ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}): a run needs a new or empty folder; choose "
                                  f"another")
        run.path.mkdir(parents=True, exist_ok=True)
        save_json(run.config_path, config)
        return run

    @staticmethod
    def holds_run(path: str | Path) -> bool:
        """Whether ``path`` holds a run: a config.json of ``workbench distill`` (a JSON object with "run"), not some
        other program's (a saved student's, say)."""
        file = Path(path) / "config.json"
        return file.is_file() and _run_config(file) is not None

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder; FileNotFoundError without a config.json, ValueError if its config.json is not a
        run's (a saved model's folder)."""
        run = cls(path)
        if not run.config_path.is_file():
            raise FileNotFoundError(f"{run.path} is not a run folder (no config.json)")
        if not cls.holds_run(run.path):
            raise _not_a_run(run.path)
        return run

    @property
    def config(self) -> dict:
        """The run's config.json; ValueError if the file is not a run's (a saved model's config.json)."""
        data = _run_config(self.config_path)
        if data is None:
            raise _not_a_run(self.path)
        return data

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
    @property
    def pointer_path(self) -> Path:
        return self.checkpoint_dir / "latest.json"

    def checkpoint_names(self) -> list[str]:
        """Stems of the checkpoints with a state file, oldest first (complete or not: see ``latest.json``)."""
        return sorted(p.stem for p in self.checkpoint_dir.glob("step-*.json"))

    def latest_name(self) -> str | None:
        """The checkpoint ``latest.json`` names (None: no checkpoint yet); CorruptCheckpoint if it names none."""
        if not self.pointer_path.is_file():
            return None
        try:
            name = json.loads(self.pointer_path.read_text())["name"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpoint(f"{self.pointer_path} names no checkpoint ({err!r})") from None
        if not isinstance(name, str) or not name.startswith("step-") or not name[len("step-"):].isdigit():
            raise CorruptCheckpoint(f"{self.pointer_path} names {name!r}, not a checkpoint (step-NNNNNNNNN)")
        return name

    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files interrupted atomic writes left in the folder (the writer, on starting)."""
        if not self.writer:
            return []
        return remove_temp_files(self.path) + remove_temp_files(self.checkpoint_dir)

    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
        """Write tensors, then the state with the tensors file's size and checksum; only then point ``latest.json``
        at them; prune old ones (and any left from a discarded attempt beyond ``step``)."""
        stem = self.checkpoint_dir / f"step-{step:09d}"
        if not self.writer:
            return stem
        try:
            weights = save_tensors(stem.with_suffix(".safetensors"), tensors)
            files = {weights.name: {"bytes": weights.stat().st_size, "sha256": sha256(weights)}}
            save_json(stem.with_suffix(".json"), {"step": step, **state, "files": files})
            save_json(self.pointer_path, {"step": step, "name": stem.name})
        except (OSError, SafetensorError) as err:
            nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
            raise CheckpointWriteError(
                f"checkpoint {stem.name} of {self.path} could not be written ({err}): it holds {nbytes / 1e9:.2f} GB "
                f"and the disk there has {disk_free(self.checkpoint_dir) / 1e9:.2f} GB free. "
                f"{checkpoint_room(nbytes)} Free space there (or move the run folder to a larger disk), then "
                f"continue with `workbench distill --resume {self.path}`: the checkpoints before it are intact"
            ) from err
        older = [n for n in self.checkpoint_names() if n < stem.name]
        # beyond this step: files of an earlier attempt, killed before latest.json named them
        stems = {p.name.split(".")[0] for p in self.checkpoint_dir.glob("step-*")}
        beyond = [n for n in stems if n > stem.name]
        for old in older[:len(older) - (KEEP_CHECKPOINTS - 1)] + sorted(beyond):
            self._remove_checkpoint(old)
        return stem

    def checkpoint_room_problem(self, each: int) -> str | None:
        """Why the disk holding the run has no room for its checkpoints of up to ``each`` bytes
        (``KEEP_CHECKPOINTS`` of them plus the one being written; those in the folder already count as room), or
        None when it has."""
        held = sum(p.stat().st_size for p in self.checkpoint_dir.glob("step-*.safetensors"))
        free = disk_free(self.checkpoint_dir)
        if free >= max((KEEP_CHECKPOINTS + 1) * each - held, each):
            return None
        return (f"{self.path} is on a disk with {free / 1e9:.2f} GB free; its checkpoints hold up to "
                f"{each / 1e9:.2f} GB each. {checkpoint_room(each)}")

    def _remove_checkpoint(self, name: str) -> None:
        stem = self.checkpoint_dir / name
        stem.with_suffix(".json").unlink(missing_ok=True)
        stem.with_suffix(".safetensors").unlink(missing_ok=True)

    def _set_aside(self, name: str, prefix: str) -> None:
        """Rename checkpoint ``name``'s files to ``PREFIX-NAME.*``, out of the checkpoints readers consider."""
        for suffix in (".json", ".safetensors"):
            path = (self.checkpoint_dir / name).with_suffix(suffix)
            if path.exists():
                os.replace(path, path.with_name(f"{prefix}-{path.name}"))

    def _point_at(self, name: str | None) -> None:
        if name is None:
            self.pointer_path.unlink(missing_ok=True)
        else:
            save_json(self.pointer_path, {"step": _checkpoint_step(name), "name": name})

    def _read_checkpoint(self, name: str, device) -> tuple[dict[str, torch.Tensor], dict, bool]:
        """(tensors, state without its checksums, verified) of checkpoint ``name``; CorruptCheckpoint saying what
        is wrong if a file is missing, truncated, or differs from its recorded checksum."""
        stem = self.checkpoint_dir / name
        try:
            state = json.loads(stem.with_suffix(".json").read_text())
        except FileNotFoundError:
            raise CorruptCheckpoint(f"checkpoint {name}: its state file {stem.with_suffix('.json').name} is "
                                    f"missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptCheckpoint(f"checkpoint {name}: its state file is not valid JSON ({err})") from None
        files = state.pop("files", None)
        for file, recorded in (files or {}).items():
            path = self.checkpoint_dir / file
            if not path.is_file():
                raise CorruptCheckpoint(f"checkpoint {name}: {file} is missing")
            size = path.stat().st_size
            if size != recorded["bytes"]:
                raise CorruptCheckpoint(f"checkpoint {name}: {file} is truncated or altered ({size} bytes, "
                                        f"{recorded['bytes']} written)")
            if sha256(path) != recorded["sha256"]:
                raise CorruptCheckpoint(f"checkpoint {name}: {file} does not match its recorded SHA-256 (altered "
                                        f"after it was written)")
        try:
            tensors = load_tensors(stem.with_suffix(".safetensors"), device)
        except FileNotFoundError:
            raise CorruptCheckpoint(f"checkpoint {name}: {stem.name}.safetensors is missing") from None
        return tensors, state, files is not None

    def load_checkpoint(self, device: str | torch.device = "cpu", repair: bool = False) -> LoadedCheckpoint | None:
        """The newest complete checkpoint that verifies, or None if the run has none yet (no ``latest.json``).

        The one ``latest.json`` names is tried first, then older ones, newest first; those that fail verification
        are listed in ``skipped``. ``repair`` (the writer only): set the skipped ones aside (renamed
        ``corrupt-step-*``) and point ``latest.json`` at the one loaded. CorruptCheckpoint if none verifies."""
        if not self.pointer_path.is_file():
            return None
        skipped: list[str] = []
        try:
            latest = self.latest_name()
        except CorruptCheckpoint as err:       # the pointer itself damaged: every checkpoint is a candidate
            skipped.append(str(err))
            latest = None
        candidates = [n for n in reversed(self.checkpoint_names()) if latest is None or n <= latest]
        if latest is not None and latest not in candidates:
            skipped.append(f"checkpoint {latest}, which {self.pointer_path.name} names, does not exist")
        for name in candidates:
            try:
                tensors, state, verified = self._read_checkpoint(name, device)
            except CorruptCheckpoint as err:
                skipped.append(str(err))
                continue
            loaded = LoadedCheckpoint(tensors, state, name, verified, skipped)
            if repair and self.writer and name != latest:
                for bad in candidates[:candidates.index(name)]:
                    self._set_aside(bad, "corrupt")
                self._point_at(name)
            return loaded
        raise CorruptCheckpoint(f"run folder {self.path} has no intact checkpoint: {'; '.join(skipped)}; move "
                                f"{self.checkpoint_dir} away to resume this run from step 0, or start a new run "
                                f"with another --out")

    def latest_checkpoint(self, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict] | None:
        """(tensors, state) of the newest complete checkpoint that verifies, or None if the run has none yet."""
        loaded = self.load_checkpoint(device)
        return None if loaded is None else (loaded.tensors, loaded.state)

    def set_aside_diverged(self, step: int) -> str | None:
        """Checkpoint ``step`` gave a non-finite loss: if ``latest.json`` names it, rename it ``diverged-step-*``
        and point ``latest.json`` at the newest older one. Returns the checkpoint left to resume from (None:
        none)."""
        latest = self.latest_name()
        if latest is None or not self.writer:
            return latest
        if _checkpoint_step(latest) != step:
            return latest
        older = [n for n in self.checkpoint_names() if n < latest]
        self._set_aside(latest, "diverged")
        self._point_at(older[-1] if older else None)
        return older[-1] if older else None

    # ---- summary ---------------------------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        if self.writer:
            save_json(self.summary_path, summary)

    @property
    def summary(self) -> dict | None:
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else None
