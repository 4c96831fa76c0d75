"""The event stream: one JSON object per line in a run's ``events.jsonl``, appended and never rewritten.

Every reader (notebooks, the Panel app, reports) reads this file; nothing that draws reaches into a training loop.
An event has at least ``type`` (e.g. "step", "eval", "stage_start", "sample", "error"), ``time`` (unix seconds) and
``wall`` (seconds since the log was opened by this writer); "step" events also carry ``step``, ``stage`` and metrics.

Writers flush and fsync each line, so a crash loses at most the line being written. Readers leave a partial last
line (a writer mid-append) for their next read, and skip the fragment a killed writer left behind (the next writer
ends it with a newline before appending).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Iterator


def _clean(value):
    """JSON cannot hold NaN/inf: write them as strings so a diverging loss is still visible to readers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _clean(value.item())
    return value


class EventLog:
    """Append-only JSON-lines writer."""

    def __init__(self, path: str | Path, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._start = time.time()
        self._repair_tail()

    def _repair_tail(self) -> None:
        """If a previous writer died mid-line, end that fragment so our first event starts on a fresh line."""
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(self.path, "ab") as g:
                        g.write(b"\n")

    def append(self, type: str, **fields) -> dict:
        event = {"type": type, "time": time.time(), "wall": time.time() - self._start, **_clean(fields)}
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        return event


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events from byte ``offset`` on, and the offset to continue from next time (for live readers)."""
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            continue  # the fragment of a writer killed mid-line (see EventLog._repair_tail)
    return events, offset + end


def iter_events(path: str | Path, type: str | None = None) -> Iterator[dict]:
    events, _ = read_events(path)
    return (e for e in events if type is None or e.get("type") == type)
