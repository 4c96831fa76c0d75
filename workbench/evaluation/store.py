"""Task scores kept in run folders, where notebooks, the dashboard and ``workbench eval --compare`` find them.

    RUN/eval/tasks.json      the run's student (its latest checkpoint when scored), one results JSON (harness)
    RUN/eval/teacher.json    the run's teacher on the same tasks: the reference of retention

    from workbench.evaluation import store
    scores = store.score_run("runs/a", ["wb_cloze", "wb_cloze_gen"], limit=50)      # scored and saved
    teacher = store.score_teacher("runs/a", ["wb_cloze", "wb_cloze_gen"], limit=50)
    store.run_results("runs/a"), store.teacher_results("runs/a")                   # read back (None: none yet)

Each file is a results JSON of ``workbench.evaluation.harness``. A later evaluation merges into it task by task: a task
scored again replaces its entry (and its per-document samples), the other tasks stay. Every task entry carries the
``settings`` of the evaluation that scored it and ``step``, the run's checkpoint step then (None for a teacher); the
top-level ``model``, ``settings`` and ``versions`` are the newest evaluation's. Files are written to a temporary file
and renamed over the old one, under an exclusive lock on ``RUN/eval/.lock``, so that a reader never sees a torn file
and two evaluations of one run do not lose each other's tasks.

A run without its own ``teacher.json`` takes the teacher scores of a run beside it (the same parent folder) whose
``teacher.json`` scored the same teacher (its ``model.name`` is this run's ``config.json`` teacher): one teacher
evaluation serves every run distilled from it.

This module imports only the standard library and the harness (which loads torch and lm_eval only to evaluate), so the
``workbench eval`` command checks a run folder before any model library loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from workbench.evaluation import harness

EVAL_DIR = "eval"                 # inside a run folder
RUN_FILE = "tasks.json"           # the run's student
TEACHER_FILE = "teacher.json"     # the run's teacher
LOCK_FILE = ".lock"               # held while a file of EVAL_DIR is merged and written
DEFAULT_TASKS = ("wb_cloze", "wb_cloze_gen", "wb_choice", "wb_choice_gen")  # the short shipped tasks


def run_config(run: str | Path) -> dict:
    """The "run" object of the run folder's config.json; a FileNotFoundError or ValueError naming the folder if it is
    not a run folder."""
    path = Path(run)
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a run folder of `workbench distill`")
    try:
        data = json.loads(file.read_bytes())
    except ValueError as err:
        raise ValueError(f"{file} is not JSON ({err}): not a run folder") from err
    if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
        raise ValueError(f"{path} is not a run folder: its config.json holds no \"run\" object (a saved model's?)")
    return data["run"]


def run_teacher(run: str | Path) -> str:
    """The teacher the run distils (its config.json's ``teacher``: a registry name, a model folder or a .gguf)."""
    teacher = run_config(run).get("teacher")
    if not isinstance(teacher, str) or not teacher:
        raise ValueError(f"{Path(run) / 'config.json'} names no teacher (run.teacher)")
    return teacher


def results_file(run: str | Path, teacher: bool = False) -> Path:
    """Where the run's task scores live: ``RUN/eval/tasks.json``, or ``RUN/eval/teacher.json`` for its teacher."""
    return Path(run) / EVAL_DIR / (TEACHER_FILE if teacher else RUN_FILE)


def merge_results(old: dict | None, new: dict) -> dict:
    """``new`` merged into ``old`` task by task (the module docstring): the new tasks replace the old entries of the
    same name and their samples; every new task entry gets the ``settings`` and the model's ``step`` of ``new``."""
    stamp = {"settings": new.get("settings"), "step": new.get("model", {}).get("step")}
    fresh = {name: {**entry, **stamp} for name, entry in new["tasks"].items()}
    merged = {key: value for key, value in new.items() if key not in ("tasks", "samples", "seconds", "load_seconds")}
    merged["tasks"] = {**(old or {}).get("tasks", {}), **fresh}
    samples = {name: rows for name, rows in (old or {}).get("samples", {}).items() if name not in fresh}
    samples.update(new.get("samples", {}))
    if samples:
        merged["samples"] = samples
    return merged


def _write_json(path: Path, data: dict) -> None:
    """``data`` into ``path`` atomically: a temporary file beside it, fsynced, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(folder: Path):
    with open(folder / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_run_results(run: str | Path, result: dict, teacher: bool = False) -> Path:
    """Merge ``result`` (``harness.evaluate``'s) into the run's ``tasks.json`` (or ``teacher.json``) and return the
    file. The folder must be a run folder; an existing file that is not a results file is refused, not replaced."""
    run_config(run)
    file = results_file(run, teacher)
    file.parent.mkdir(exist_ok=True)
    with _locked(file.parent):
        old = _read(file) if file.exists() else None
        _write_json(file, merge_results(old, result))
    return file


def _read(file: Path) -> dict:
    """The results file ``file``; a ValueError naming the command that writes it again if it is not one."""
    try:
        return harness.load_results(file)
    except ValueError as err:
        flag = " --teacher" if file.name == TEACHER_FILE else ""
        again = f"workbench eval --model {file.parents[1]} --tasks ...{flag}"
        raise ValueError(f"{err}; delete it and score again (`{again}`)") from err


def run_results(run: str | Path) -> dict | None:
    """The run's task scores (``RUN/eval/tasks.json``), None if it has none yet."""
    file = results_file(run)
    return _read(file) if file.exists() else None


def teacher_results(run: str | Path, others: Iterable[str | Path] | None = None) -> dict | None:
    """Scores of the run's teacher: its own ``RUN/eval/teacher.json``, else the newest ``teacher.json`` among the run
    folders ``others`` (default: the folders beside ``run``) whose model is the run's teacher; None if there is
    none."""
    own = results_file(run, teacher=True)
    if own.exists():
        return _read(own)
    name = run_teacher(run)
    here = Path(run).resolve()
    folders = here.parent.iterdir() if others is None else map(Path, others)
    files = [results_file(p, teacher=True) for p in folders if p.resolve() != here]
    found = sorted((f for f in files if f.is_file()), key=lambda f: f.stat().st_mtime_ns, reverse=True)
    return next((data for data in map(_read, found) if data["model"].get("name") == name), None)


def results_stamp(root: str | Path) -> tuple:
    """(path, modification time, size) of every results file in the run folders of ``root``: it changes whenever
    scores are saved there (what a reader that shows them watches)."""
    files = sorted(Path(root).glob(f"*/{EVAL_DIR}/*.json"))
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


def eval_command(run: str | Path, names: Sequence[str] = DEFAULT_TASKS, limit: int | None = None,
                 teacher: bool = False) -> str:
    """The command that scores the run (and with ``teacher`` its teacher) on ``names`` and saves it here."""
    words = ["workbench", "eval", "--model", str(run), "--tasks", ",".join(names)]
    words += ["--limit", str(limit)] if limit is not None else []
    words += ["--teacher"] if teacher else []
    return shlex.join(words)


def score(spec: str, names: Sequence[str], limit: int | None = None, device: str = "auto", dtype: str = "auto",
          batch_size: int = 1, samples: bool = False, progress: bool = True) -> dict:
    """``harness.evaluate`` of the model ``spec`` (``harness.load_lm``) on the tasks ``names``, with the seconds
    loading took (``load_seconds``)."""
    t0 = time.time()
    model = harness.load_lm(spec, device=device, dtype=dtype, batch_size=batch_size)
    load_s = time.time() - t0
    result = harness.evaluate(model, names, limit=limit, samples=samples, progress=progress)
    result["load_seconds"] = round(load_s, 2)
    return result


def score_run(run: str | Path, names: Sequence[str], limit: int | None = None, device: str = "auto",
              dtype: str = "auto", batch_size: int = 1, samples: bool = False, progress: bool = True) -> dict:
    """Score the run's student (its latest checkpoint) on ``names``, save it into ``RUN/eval/tasks.json`` and
    return the file's content (earlier tasks included)."""
    run_config(run)
    harness.check_tasks(names)
    save_run_results(run, score(str(run), names, limit, device, dtype, batch_size, samples, progress))
    return run_results(run)


def score_teacher(run: str | Path, names: Sequence[str], limit: int | None = None, device: str = "auto",
                  dtype: str = "auto", batch_size: int = 1, samples: bool = False, progress: bool = True) -> dict:
    """Score the run's teacher on ``names``, save it into ``RUN/eval/teacher.json`` and return the file's
    content."""
    harness.check_tasks(names)
    result = score(run_teacher(run), names, limit, device, dtype, batch_size, samples, progress)
    return _read(save_run_results(run, result, teacher=True))
