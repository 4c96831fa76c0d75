"""Atomic, verifiable checkpoint files.

``atomic_write`` writes to a temporary file in the same folder, fsyncs it, renames it over the target and fsyncs the
folder: a reader sees either the old file or the new one, never a torn one, even if the process is killed mid-write.
Tensors go to safetensors (no pickle); small state (step, RNG, optimiser scalars) to JSON beside them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CorruptCheckpoint(RuntimeError):
    pass


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
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt or truncated ({err}); delete it to resume from the "
                                f"previous checkpoint, or start the run again") from err
