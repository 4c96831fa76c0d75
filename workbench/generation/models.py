"""``load_model(spec)``: a model to generate with, from whatever names one.

    spec = a run folder (config.json with a "run" entry, from ``workbench distill``): the student of its latest
           checkpoint, rebuilt as the run built it (``workbench.distill.load.load_run_student``);
         = a saved student folder (``save_pretrained`` of a student): ``load_student``;
         = a plain Hugging Face folder (config.json): ``AutoModelForCausalLM`` (tokenizer when the folder has one);
         = anything ``load_teacher`` accepts (registry name, .gguf file, hub id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from workbench.device import resolve_device, resolve_dtype
from workbench.distill.run_dir import RunDir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedModel:
    model: nn.Module         # a Hugging Face causal LM (a student is one), eval mode
    tokenizer: object | None  # None where the source has none
    name: str                # the spec as given
    kind: str                # "run", "student", "model" or "teacher"
    teacher: str | None = None  # the teacher a run or student came from, where known


def _tokenizer_of(path: Path):
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _load_run(path: Path, device, dtype) -> LoadedModel:
    from workbench.distill.load import load_run_student

    run = load_run_student(path, device=device, dtype=dtype)
    return LoadedModel(run.student, run.teacher.tokenizer, str(path), "run", run.config.teacher)


def load_model(spec: str, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto"
               ) -> LoadedModel:
    """The model ``spec`` names (see the module docstring), on ``device`` in ``dtype`` (auto: bf16 on GPU, fp32 on
    CPU), in eval mode without gradients."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.students import load_student, student_spec
    from workbench.teachers import load_teacher

    path = Path(spec).expanduser()
    if path.is_dir() and RunDir.holds_run(path):
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
