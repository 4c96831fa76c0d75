"""``load_model(spec)``: a model to generate with, from whatever names one.

    spec = a run folder (config.json with a "run" entry, from ``workbench distill``): the run's teacher, the student
           built from the run config as the run built it, and the latest checkpoint's tensors;
         = a saved student folder (``save_pretrained`` of a student): ``load_student``;
         = a plain Hugging Face folder (config.json): ``AutoModelForCausalLM`` (tokenizer when the folder has one);
         = anything ``load_teacher`` accepts (registry name, .gguf file, hub id).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.teachers.load import resolve_device, resolve_dtype

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedModel:
    model: nn.Module         # a Hugging Face causal LM (a student is one), eval mode
    tokenizer: object | None  # None where the source has none
    name: str                # the spec as given
    kind: str                # "run", "student", "model" or "teacher"
    teacher: str | None = None  # the teacher a run or student came from, where known


def _is_run_folder(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "run" in json.loads(config.read_text())


def _tokenizer_of(path: Path):
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _load_run(path: Path, device, dtype) -> LoadedModel:
    from workbench.distill.config import RunConfig
    from workbench.distill.run_dir import RunDir
    from workbench.students import build_student
    from workbench.teachers import load_teacher

    run_dir = RunDir.open(path)
    cfg = RunConfig.from_dict(run_dir.config["run"])
    random.seed(cfg.seed)                      # as the run seeded itself before building: parameters no stage
    np.random.seed(cfg.seed)                   # trains (absent from checkpoints) come out the same
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.teacher, device=device, dtype="float32", progress=False)
    n = teacher.num_layers
    keep = list(cfg.keep_attention) if cfg.replace is None else sorted(set(range(n)) - set(cfg.replace))
    student = build_student(teacher.model, mixer=cfg.mixer, keep_attention=keep, init=cfg.init, **cfg.mixer_config)
    checkpoint = run_dir.latest_checkpoint(teacher.device)
    if checkpoint is None:
        raise FileNotFoundError(f"run folder {path} has no checkpoint yet: nothing trained to load")
    tensors, _ = checkpoint
    params = dict(student.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param/"):
                params[key[len("param/"):]].copy_(value)
    model = student.to(dtype=resolve_dtype(dtype, teacher.device)).eval().requires_grad_(False)
    return LoadedModel(model, teacher.tokenizer, str(path), "run", cfg.teacher)


def load_model(spec: str, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto"
               ) -> LoadedModel:
    """The model ``spec`` names (see the module docstring), on ``device`` in ``dtype`` (auto: bf16 on GPU, fp32 on
    CPU), in eval mode without gradients."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.students import load_student, student_spec
    from workbench.teachers import load_teacher

    path = Path(spec).expanduser()
    if path.is_dir() and _is_run_folder(path):
        return _load_run(path, device, dtype)
    if path.is_dir() and (path / "config.json").is_file():
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        if student_spec(AutoConfig.from_pretrained(path)) is not None:
            model, kind = load_student(path, device=device, dtype=dtype), "student"
        else:
            model, kind = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device), "model"
        return LoadedModel(model.eval().requires_grad_(False), _tokenizer_of(path), str(spec), kind)
    teacher = load_teacher(spec, device=device, dtype=dtype, progress=False)
    return LoadedModel(teacher.model, teacher.tokenizer, str(spec), "teacher", str(spec))
