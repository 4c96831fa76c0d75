"""Models the page works with: teachers loaded once per app process (shared read-only by every session), students
built from a teacher, and the student of a run folder (``workbench.distill.load.load_run_student``, with the
process's teacher)."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from workbench.app.paths import teacher_source
from workbench.distill.config import RunConfig
from workbench.distill.load import load_run_student
from workbench.distill.run_dir import RunDir
from workbench.students import build_student, student_mixers
from workbench.students.base import Mixer
from workbench.teachers import Teacher, load_teacher

_TEACHERS: dict[tuple[str, str], Teacher] = {}
_LOCK = threading.Lock()


def get_teacher(source: str, device: str = "auto") -> Teacher:
    """The teacher ``source`` (checked by ``teacher_source``), loaded on first use and cached for the process."""
    key = (teacher_source(source), device)
    with _LOCK:
        if key not in _TEACHERS:
            _TEACHERS[key] = load_teacher(key[0], device=device, dtype="float32", progress=False)
        return _TEACHERS[key]


def cached_teacher(source: str, device: str = "auto") -> Teacher | None:
    """The teacher ``source`` if this process has loaded it already, else None (nothing is loaded; a source that
    ``teacher_source`` refuses is not held either)."""
    try:
        key = (teacher_source(source), device)
    except ValueError:
        return None
    with _LOCK:
        return _TEACHERS.get(key)


def make_student(teacher: Teacher, mixer: str, keep_attention: list[int], init: str, mixer_config: dict | None = None):
    """A float32 student on the teacher's device with ``mixer`` in every layer not in ``keep_attention``."""
    student = build_student(teacher.model, mixer=mixer, keep_attention=keep_attention, init=init,
                            **(mixer_config or {}))
    return student.to(teacher.device, torch.float32).eval()


def parameter_counts(teacher: Teacher, student) -> dict[str, int]:
    """Teacher and student totals, the mixers' parameters and the attention parameters they replaced."""
    mixers = student_mixers(student)
    teacher_total = teacher.num_parameters()
    student_total = sum(p.numel() for p in student.parameters())
    mixer_total = sum(p.numel() for m in mixers.values() for p in m.parameters())
    return {"teacher": teacher_total, "student": student_total, "mixers": mixer_total,
            "replaced_attention": mixer_total - (student_total - teacher_total), "replaced_layers": len(mixers)}


def student_from_run(path: str | Path, device: str = "auto") -> tuple[Teacher, torch.nn.Module, dict[int, Mixer], dict]:
    """(teacher, student, mixers, info) for a run folder: the student as its latest checkpoint left it (the run's
    starting point if it has none yet), float32, eval mode; info holds the run config and the checkpoint's step (0
    without one)."""
    config = RunConfig.from_dict(RunDir.open(path).config["run"])
    run = load_run_student(path, teacher=get_teacher(config.teacher, device), untrained=True)
    return run.teacher, run.student, student_mixers(run.student), {"config": run.config, "step": run.step}
