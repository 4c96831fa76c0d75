"""Where workbench keeps what it derives once and reuses (converted teachers, tokenised corpora), and how it is checked.

Location: ``$WORKBENCH_CACHE`` if set, else ``~/.cache/workbench``. Every cached folder carries a ``manifest.json``
listing each file's size and SHA-256 and the key it was built from; a folder whose manifest is missing, whose key
differs or whose files do not match is treated as absent and rebuilt. Builds happen in a temporary sibling folder that
is renamed into place only when complete, so an interrupted build never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "manifest.json"


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(*texts: str) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def write_manifest(folder: Path, key: dict) -> None:
    """Record every file's size and hash in ``folder/manifest.json`` together with the build ``key``."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1))


def verify(folder: Path, key: dict, hashes: bool = True) -> str | None:
    """None if ``folder`` is a complete cache built from ``key``; otherwise a sentence saying what is wrong."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{folder} has no {MANIFEST} (never completed)"
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return f"{manifest} is not valid JSON"
    if meta.get("key") != key:
        return f"{folder} was built from a different source ({meta.get('key')} != {key})"
    for name, info in meta.get("files", {}).items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != info["size"]:
            return f"{p} has {p.stat().st_size} bytes, expected {info['size']} (partial or corrupt)"
        if hashes and sha256_file(p) != info["sha256"]:
            return f"{p} does not match its recorded SHA-256 (corrupt)"
    return None


@contextlib.contextmanager
def building(folder: Path, key: dict) -> Iterator[Path]:
    """Build a cache folder atomically: yields a temporary folder to fill; on success it gets a manifest and replaces
    ``folder``; on failure it is removed and ``folder`` is left as it was."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        write_manifest(tmp, key)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
