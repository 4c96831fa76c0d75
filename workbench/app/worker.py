"""Training runs as child processes: ``python -m workbench distill --config ... --out ...`` (``--resume`` to go
on), so training never runs inside a page callback and a slow run never freezes the page.

Each child is the leader of its own process group; stopping a run terminates that group. A run the app did not
start is stopped only when its LOCK's process is verified as the run's writer (workbench.app.lock: a ``distill``
of that folder, started before the LOCK was written); an unverified LOCK is refused, never signalled. Resume
refuses a folder with a file linking outside it (workbench.app.paths.check_run_files). A new run reserves its
folder with an atomic ``mkdir``: two runs never share one.
When a child started here exits, its status is written to ``RUN/exit.json`` (read by workbench.app.runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from workbench.app.lock import LockHolder, lock_holder
from workbench.app.paths import check_run_files, inside_root, inside_run, run_folder
from workbench.distill.checkpoint import save_json
from workbench.distill.config import RunConfig
from workbench.distill.run_dir import EXIT_FILE, LAUNCH_FILE, LOG_FILE, RunDir, pid_alive

_CHILDREN: dict[Path, subprocess.Popen] = {}  # run folder -> child, for every session of this app process
_LOCK = threading.Lock()


class Launcher:
    """Starts, stops and resumes the runs inside ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # ---- state -----------------------------------------------------------------------------------------------
    def reap(self) -> None:
        """Collect children that have exited (no zombies) and record how each ended."""
        with _LOCK:
            for path, proc in list(_CHILDREN.items()):
                code = proc.poll()
                if code is not None:   # save_json replaces the name (a link put there is replaced, not followed)
                    save_json(path / EXIT_FILE, {"pid": proc.pid, "returncode": code, "time": time.time()})
                    del _CHILDREN[path]

    def launching(self, path: Path) -> bool:
        """Whether a child started here for ``path`` is still alive."""
        self.reap()
        with _LOCK:
            return Path(path).resolve() in _CHILDREN

    def child_pid(self, path: Path) -> int | None:
        """The pid of the live child started here for ``path``, if any."""
        self.reap()
        with _LOCK:
            proc = _CHILDREN.get(Path(path).resolve())
        return None if proc is None else proc.pid

    def holder(self, path: Path) -> LockHolder | None:
        """The live process named by the LOCK of ``path``, verified or not (workbench.app.lock)."""
        return lock_holder(path, self.child_pid(path))

    def running(self, path: Path) -> bool:
        return self.launching(path) or self.holder(path) is not None

    # ---- actions ---------------------------------------------------------------------------------------------
    def start(self, name: str, config: RunConfig, final_eval_tokens: int | None = None) -> Path:
        """Start a new run ``name`` (a folder created inside the root) with ``config``."""
        config.validate()
        out = run_folder(self.root, name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            out.mkdir()
        except FileExistsError as err:
            raise FileExistsError(f"run folder {out.name!r} already exists: choose another name, or resume it") \
                from err
        launch = out / LAUNCH_FILE
        save_json(launch, config.to_dict())
        command = ["distill", "--config", str(launch), "--out", str(out)]
        if final_eval_tokens:
            command += ["--final-eval-tokens", str(int(final_eval_tokens))]
        self._spawn(out, command)
        return out

    def resume(self, path: str | Path) -> Path:
        """Continue a stopped run from its last checkpoint."""
        out = check_run_files(inside_root(self.root, path))
        RunDir.open(out)
        holder = self.holder(out)
        if holder is not None and not holder.verified:
            raise RuntimeError(f"run {out.name!r} is {holder.refusal()}")
        if self.running(out):
            raise RuntimeError(f"run {out.name!r} is running already")
        if RunDir(out).summary is not None:
            raise RuntimeError(f"run {out.name!r} has finished; start a new run instead")
        self._spawn(out, ["distill", "--resume", str(out)])
        return out

    def stop(self, path: str | Path, timeout: float = 15.0) -> bool:
        """Terminate the run's writer: SIGTERM, on which ``workbench distill`` finishes its step in progress,
        checkpoints it and exits (status -15, read as stopped), then SIGKILL if it still runs after ``timeout`` s.
        Sent to the process group of a child started here, or to the process alone of a verified LOCK; False if none
        ran. A RuntimeError, signalling nothing, for a LOCK whose process cannot be verified as the run's writer."""
        out = inside_root(self.root, path)
        self.reap()
        with _LOCK:
            proc = _CHILDREN.get(out)
        if proc is None:
            holder = lock_holder(out)
            if holder is None:
                return False
            if not holder.verified:
                raise RuntimeError(f"run {out.name!r} is {holder.refusal()}")
        pid = proc.pid if proc is not None else holder.pid
        self._signal(pid, signal.SIGTERM, group=proc is not None)
        deadline = time.time() + timeout
        while time.time() < deadline and self._alive(pid, proc):
            time.sleep(0.05)
        if self._alive(pid, proc):
            self._signal(pid, signal.SIGKILL, group=proc is not None)
            if proc is not None:
                proc.wait()
        self.reap()
        return True

    # ---- pieces ----------------------------------------------------------------------------------------------
    def _spawn(self, out: Path, command: list[str]) -> None:
        inside_run(out, EXIT_FILE).unlink(missing_ok=True)
        with open(inside_run(out, LOG_FILE), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "workbench", *command], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with _LOCK:
            _CHILDREN[out] = proc

    @staticmethod
    def _signal(pid: int, sig: int, group: bool) -> None:
        """The whole group of a child started here (it leads one), else the process alone."""
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _alive(pid: int, proc: subprocess.Popen | None) -> bool:
        if proc is not None:
            return proc.poll() is None
        return pid_alive(pid)
