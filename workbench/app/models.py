"""Models the page works with: teachers loaded once per app process (shared read-only by every session), students
built from a teacher, and the student of a run folder rebuilt from its config and latest checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from workbench.app.paths import teacher_source
from workbench.distill.config import RunConfig
from workbench.distill.run_dir import RunDir
from workbench.students.base import Mixer
from workbench.students import build_student, student_mixers
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


def kept_layers(config: RunConfig, num_layers: int) -> list[int]:
    """The layers that keep attention in ``config`` (``replace`` wins over ``keep_attention``, as in a run)."""
    if config.replace is not None:
        return sorted(set(range(num_layers)) - set(config.replace))
    return list(config.keep_attention)


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
    """(teacher, student, mixers, info) for a run folder: the student as its latest checkpoint left it (its
    initialisation if it has none yet); info holds the run config and the checkpoint's step (0 without one)."""
    run = RunDir.open(path)
    config = RunConfig.from_dict(run.config["run"])
    teacher = get_teacher(config.teacher, device)
    torch.manual_seed(config.seed)  # as the run seeds before building: a random init without a checkpoint matches
    student = make_student(teacher, config.mixer, kept_layers(config, teacher.num_layers), config.init,
                           config.mixer_config)
    step = 0
    ckpt = run.latest_checkpoint(teacher.device)
    if ckpt is not None:
        tensors, state = ckpt
        params = dict(student.named_parameters())
        for key, value in tensors.items():
            if key.startswith("param/"):
                params[key[len("param/"):]].data.copy_(value)
        step = state["global_step"]
    return teacher, student, student_mixers(student), {"config": config, "step": step}
