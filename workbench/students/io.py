"""Loading a student saved with ``save_pretrained``: the teacher-shaped part through transformers, the mixers as
the saved spec says.

    student.save_pretrained(path)
    student = load_student(path)           # same structure, same weights; strict about unknown or missing keys
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM
from transformers import logging as transformers_logging

from workbench.students.build import Student, install
from workbench.students.spec import SPEC_KEY, student_spec
from workbench.teachers import anatomy


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise FileNotFoundError(f"{path} has no model.safetensors (or index): save the student with "
                            f"student.save_pretrained(path)")


def _read(files: list[Path], names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors called ``names`` from safetensors ``files``."""
    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            found.update({name: f.get_tensor(name) for name in names & set(f.keys())})
    return found


def load_student(path: str | Path, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Student:
    """A student saved with ``save_pretrained``. transformers' own ``from_pretrained`` loads the teacher-shaped
    part (with its key renaming, dtype and tied weights), the attention of the replaced layers is swapped for mixers
    as the saved spec says, and the mixers' weights are read from the same safetensors files."""
    path = Path(path)
    spec = student_spec(AutoConfig.from_pretrained(path))
    if spec is None:
        raise ValueError(f"{path} holds no workbench student (its config has no {SPEC_KEY!r}); load a plain model "
                         f"with transformers' AutoModelForCausalLM.from_pretrained")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the mixer weights are "unused" and the replaced q/k/v/o "missing"
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    layers = anatomy.decoder_layers(model)
    replaced = {id(anatomy.attention_of(layers[i])[1]) for i in spec.layers}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in replaced)
    attention_params = {k for k in model.state_dict() if k.startswith(prefixes)}  # replaced q/k/v/o: not loaded
    install(model, spec, spec.mixer_config)
    mixer_params = {k for k in model.state_dict() if k.startswith(prefixes)}
    weights = _read(_weight_files(path), mixer_params)
    model.load_state_dict(weights, strict=False)
    not_loaded = (set(info["missing_keys"]) - attention_params) | (mixer_params - set(weights))
    problems = {"not loaded": sorted(not_loaded), "not used": sorted(set(info["unexpected_keys"]) - mixer_params)}
    if any(problems.values()):
        raise ValueError(f"{path} does not match the student its config describes: {problems}")
    return model.to(device) if device is not None else model
