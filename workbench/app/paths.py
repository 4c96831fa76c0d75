"""Checks on every path or model name typed into the page: run folders stay inside the runs root, the files the app
reads or writes in a run folder stay inside that folder (a symlink out of it is refused), teachers are registry
names or existing local Hugging Face model folders (never hub ids: nothing is downloaded from the page)."""

from __future__ import annotations

import re
from pathlib import Path

from workbench.teachers.registry import REGISTRY

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def run_folder(root: str | Path, name: str) -> Path:
    """The folder of run ``name`` directly inside ``root``; names that would leave the root are refused."""
    name = name.strip()
    if not RUN_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"run name {name!r}: use letters, digits, '-', '_' and '.' (no '/', no leading '.', "
                         f"at most 100 characters)")
    return inside_root(root, Path(root) / name)


def inside_root(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, if it lies inside ``root``; a ValueError otherwise."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise ValueError(f"{path} is not inside the runs root {base}")
    return resolved


def inside_run(folder: str | Path, name: str) -> Path:
    """The file ``name`` of run ``folder``, resolved, if it lies inside the folder; a ValueError if a link leads it
    out (the app then neither shows nor writes it)."""
    base = Path(folder).resolve()
    resolved = (base / name).resolve()
    if not resolved.is_relative_to(base):
        raise ValueError(f"{base.name}/{name} links outside the run folder (to {resolved}): not read or written")
    return resolved


def check_run_files(folder: str | Path) -> Path:
    """``folder`` resolved, once no file in it or in its checkpoints/ links outside it (a ValueError naming the
    first that does): a run the app starts there reads and writes only its own files."""
    base = Path(folder).resolve()
    for sub in (base, inside_run(base, "checkpoints")):
        if sub.is_dir():
            for entry in sorted(sub.iterdir()):
                inside_run(base, str(entry.relative_to(base)))
    return base


def teacher_source(text: str) -> str:
    """A registry name as it is, or an existing local model folder (with config.json) as an absolute path."""
    text = text.strip()
    if text in REGISTRY:
        return text
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return str(path.resolve())
    raise ValueError(f"teacher {text!r}: choose a registry name ({', '.join(sorted(REGISTRY))}) or an existing "
                     f"local Hugging Face model folder with a config.json")
