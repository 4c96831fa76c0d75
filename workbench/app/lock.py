"""Who holds a run's LOCK, and whether the app may signal that process.

The LOCK holds a bare pid, so a stale LOCK whose pid was taken by another process, or a LOCK written by hand, names
a live process that has nothing to do with the run. The app trusts the pid only when it can tell the process is the
run's writer:

  - a child this app process started for that folder (its Popen handle, kept by workbench.app.worker), or
  - (Linux) a process whose command line is a ``distill`` naming this folder (``--out`` / ``--resume``, relative
    paths taken from the process's working directory) and which started before the LOCK was written
    (/proc/PID/stat against the LOCK's modification time): a pid reused after the writer died started later.

Anything else is "locked by pid N, not started here": shown as such, never signalled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workbench.app.paths import inside_run
from workbench.distill.run_dir import pid_alive

LOCK_FILE = "LOCK"
START_SLACK_S = 1.0  # /proc's boot time has whole seconds: a writer may seem to start up to 1 s after its LOCK


@dataclass(frozen=True)
class LockHolder:
    pid: int
    verified: bool     # the process is this run's writer (started here, or its command line and start time match)
    started_here: bool  # a child of this app process
    reason: str = ""   # why it is not verified

    def refusal(self) -> str:
        return (f"locked by pid {self.pid}, not started here ({self.reason}): the app does not signal it; stop it "
                f"where it was started, or delete the LOCK file if that process is not the run's")


def lock_holder(folder: Path, child_pid: int | None = None) -> LockHolder | None:
    """The live process the LOCK of ``folder`` names (None: no LOCK, or its process is gone). ``child_pid`` is the
    pid of the child this app started for the folder, if one is alive. A LOCK linking outside the folder raises
    ValueError (workbench.app.paths.inside_run)."""
    folder = Path(folder).resolve()
    lock = inside_run(folder, LOCK_FILE)
    if not lock.is_file():
        return None
    text = lock.read_text(errors="replace").strip()
    if not text.isdigit() or not pid_alive(int(text)):
        return None
    pid = int(text)
    if pid == child_pid:
        return LockHolder(pid, verified=True, started_here=True)
    reason = writer_mismatch(pid, folder, lock.stat().st_mtime)
    return LockHolder(pid, verified=not reason, started_here=False, reason=reason)


def writer_mismatch(pid: int, folder: Path, lock_time: float) -> str:
    """Why process ``pid`` is not the writer of ``folder`` ("" if it is, as far as /proc tells)."""
    proc = Path("/proc") / str(pid)
    try:
        argv = (proc / "cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        cwd = Path(os.readlink(proc / "cwd"))
        started = process_start_time(pid)
    except OSError as err:
        return f"its command line cannot be read: {err.strerror or err}"
    if "distill" not in argv or not any(names_folder(arg, cwd, folder) for arg in argv):
        return f"its command line is not a distill run of this folder: {' '.join(argv).strip()[:120]!r}"
    if started > lock_time + START_SLACK_S:
        return "it started after the LOCK was written (a reused pid)"
    return ""


def names_folder(arg: str, cwd: Path, folder: Path) -> bool:
    """Whether a command-line argument (``PATH`` or ``--flag=PATH``) is ``folder``, relative paths from ``cwd``."""
    value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
    if not value or value.startswith("-"):
        return False
    return (cwd / Path(value).expanduser()).resolve() == folder


def process_start_time(pid: int) -> float:
    """When process ``pid`` started, in seconds since the epoch (Linux /proc; OSError elsewhere)."""
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])   # field 22, counted after the parenthesised command name
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
