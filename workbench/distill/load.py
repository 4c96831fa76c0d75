"""The student of a run folder, rebuilt as its run built it: the one way every reader (generation, the app, the
Laughing Hyena command) gets a run's trained model, and the build a run itself uses.

    run = load_run_student("runs/a")              # RunStudent(teacher, student, config, step)
    run.student                                   # the checkpoint's student, eval mode, no gradients

The rebuild: the run's teacher in float32; ``random``, ``numpy`` and ``torch`` seeded with the run's seed right before
the student is built (``build_run_student``, as the run does), so parameters drawn at random come out the same; the
replaced layers from the run config (``RunConfig.replaced_layers``; a shallow student's source layers,
``RunConfig.source_layers``); then the newest checkpoint's tensors
("param/NAME", verified against the checksums the checkpoint recorded; a checkpoint that fails falls back to the
newest older one that verifies, with one line on stderr per checkpoint skipped), which must be exactly the
parameters the run's stages train: a name the student does not have, or a
trained parameter the checkpoint lacks, is an error. Everything is built in float32 (the dtype of checkpoints); only
then is the student cast to the ``dtype`` asked for.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.data import load_corpus, token_ids
from workbench.device import resolve_dtype
from workbench.distill.config import RunConfig
from workbench.distill.run_dir import RunDir
from workbench.distill.step import trained_names
from workbench.students import Student, build_student, student_mixers
from workbench.teachers import Teacher, anatomy, load_teacher


@dataclass
class RunStudent:
    teacher: Teacher        # the run's teacher, frozen, float32 (or the one passed in)
    student: Student        # the student as the checkpoint left it, eval mode, no gradients
    config: RunConfig       # the run's config (config.json's "run")
    step: int               # global step of the checkpoint loaded; 0: none yet, the student as the run began


def calibration_ids(config: RunConfig, train_ids, device: torch.device) -> torch.Tensor | None:
    """(1, calibration_tokens) ids the run calibrates its mixers' output scales on: the first training tokens, for an
    attention init with calibration on; else None."""
    if config.init != "attention" or not config.calibration_tokens:
        return None
    first = np.asarray(train_ids[:config.calibration_tokens], dtype=np.int64)
    return torch.from_numpy(first)[None].to(device)                                 # (1, calibration_tokens)


def build_run_student(config: RunConfig, teacher: Teacher, calibration: torch.Tensor | None = None) -> Student:
    """The student ``config`` describes, built from ``teacher`` as a run builds it: seeded with ``config.seed`` first,
    float32, on the teacher's device, every parameter trainable; ``calibration`` ids from ``calibration_ids``."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    n = teacher.num_layers
    student = build_student(teacher.model, mixer=config.mixer, replace=config.replaced_layers(n),
                            source_layers=config.source_layers(n) if config.depth is not None else None,
                            init=config.init, calibration_ids=calibration, **config.mixer_config)
    return student.to(torch.float32)


def load_trained(student: Student, tensors: dict[str, torch.Tensor], trained: list[str], source: str | Path) -> None:
    """Copy a checkpoint's "param/NAME" ``tensors`` into ``student``; they must be exactly the ``trained`` names."""
    params = dict(student.named_parameters())
    saved = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise ValueError(f"{source}: checkpoint parameters {unknown[:5]} do not exist in the student its config "
                         f"builds")
    missing = sorted(set(trained) - set(saved))
    if missing:
        raise ValueError(f"{source}: the checkpoint lacks parameters the run trains: {missing[:5]}; it was not "
                         f"written by this run's config")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def load_run_student(path: str | Path, device: str | torch.device | None = "auto",
                     dtype: str | torch.dtype | None = "float32", teacher: Teacher | None = None,
                     untrained: bool = False) -> RunStudent:
    """The teacher, student, config and step of the run in ``path`` (see the module docstring).

    ``device``: where the teacher is loaded and the student built (auto: cuda if present); ``dtype``: the student's
    (auto: bf16 on GPU, fp32 on CPU). ``teacher``: the run's teacher already loaded (a reader that keeps teachers),
    used instead of loading it. A run without a checkpoint yet is an error, unless ``untrained``: then the student is
    the run's starting point (with its calibration) and ``step`` is 0."""
    run_dir = RunDir.open(path)
    config = RunConfig.from_dict(run_dir.config["run"])
    config.validate()
    if teacher is None:
        teacher = load_teacher(config.teacher, device=device, dtype="float32", progress=False)
    checkpoint = run_dir.load_checkpoint(teacher.device)
    for line in checkpoint.notes if checkpoint is not None else []:
        print(f"workbench: {run_dir.path}: {line}", file=sys.stderr, flush=True)
    if checkpoint is None and not untrained:
        raise FileNotFoundError(f"run folder {run_dir.path} has no checkpoint yet (checkpoints/latest.json): nothing "
                                f"trained to load")
    calibration = None
    if checkpoint is None:  # with a checkpoint, every parameter calibration sets is a trained one, read from it
        train_ids = token_ids(load_corpus(config.corpus, "train", config.corpus_weights), teacher.tokenizer)
        calibration = calibration_ids(config, train_ids, teacher.device)
    student = build_run_student(config, teacher, calibration)
    step = 0
    if checkpoint is not None:
        trained = trained_names(student, anatomy.decoder_layers(student), student_mixers(student), config.stages)
        load_trained(student, checkpoint.tensors, trained, run_dir.path)
        step = checkpoint.state["global_step"]
    student = student.to(resolve_dtype(dtype, teacher.device)).eval().requires_grad_(False)
    return RunStudent(teacher, student, config, step)
