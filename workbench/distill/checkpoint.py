"""Atomic, verifiable checkpoint files.

``atomic_write`` writes to a temporary file in the same folder, fsyncs it, renames it over the target and fsyncs the
folder: a reader sees either the old file or the new one, never a torn one, even if the process is killed mid-write.
A kill leaves at most the temporary file (``.NAME.XXXX.tmp``), which ``remove_temp_files`` deletes on the next start.
Tensors go to safetensors (no pickle); small state (step, RNG, optimiser scalars) to JSON beside them. ``sha256``
is the checksum a checkpoint's state records for its tensors file, so a reader can tell a file changed after it was
written (a flipped bit, a truncation, an edit) from the file the run wrote. ``BackgroundWriter`` writes one
checkpoint at a time on a thread of its own, from a copy of the tensors on the host, while training goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TEMP_PATTERN = ".*.tmp"  # the names atomic_write gives its temporary files


class CorruptCheckpoint(RuntimeError):
    pass


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a folder gone): the message says how much it needed,
    what the disk has free and how to go on."""


def disk_free(path: str | Path) -> int:
    """Bytes free on the file system holding ``path`` (its nearest existing folder)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


class BackgroundWriter:
    """One write at a time on a thread of its own, so that training goes on while a checkpoint reaches the disk
    (a checkpoint of the default student with its AdamW state took 2.4-5.7 s to write and checksum on an H200 host).
    ``submit`` first waits for the write before it; ``wait`` returns once none is in flight and raises the error the
    last one ended with (a full disk stops the run at its next checkpoint or at its end, not silently). The thread is
    not a daemon: a process that ends, even by an error, finishes the write first, and the atomic writes keep a
    killed one from leaving a torn file."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, work: Callable[[], None]) -> None:
        self.wait()

        def run():
            try:
                work()
            except BaseException as err:   # handed to the thread that waits
                self._error = err

        self._thread = threading.Thread(target=run, name="checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def join(self) -> None:
        """Wait for the write in flight, if any, and forget how it ended: for a process already leaving by an error
        (the one to report)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the result to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files interrupted ``atomic_write`` calls left in ``folder``; returns them. Only the
    process that writes the folder (its lock holder) may call this: another writer's temp file may be in use."""
    folder = Path(folder)
    stale = sorted(folder.glob(TEMP_PATTERN)) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256(path: str | Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_json(path: str | Path, obj) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1)))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt or truncated ({err})") from err
