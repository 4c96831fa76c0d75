"""Loading a student saved with ``save_pretrained``: one loader behind both entry points.

    student.save_pretrained(path)
    student = load_student(path)                              # same structure, same weights
    student = AutoModelForCausalLM.from_pretrained(path)      # the same loader, once workbench is imported

``from_folder`` loads the teacher-shaped part with the teacher's own class's ``from_pretrained`` (key renaming, dtype,
device placement, tied weights), swaps the attention of the replaced layers for mixers as the saved spec says, and
reads the mixers' weights from the same safetensors files; it is strict about unknown or missing keys. transformers'
AutoModelForCausalLM reaches it through the student model type (``workbench.students.hf``). A folder saved before
students had a model type of their own (config.json with the teacher's model_type and the spec) loads the same way,
and is written with the student type when saved again.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PreTrainedConfig
from transformers import logging as transformers_logging
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from workbench.students import hf
from workbench.students.build import Student, install
from workbench.students.spec import SPEC_KEY, StudentSpec, student_spec
from workbench.teachers import anatomy


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lacks {missing}, which model.safetensors.index.json lists: copy the "
                                    f"whole folder that save_pretrained wrote")
        return files
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


def _spec(config: PreTrainedConfig, source: object) -> StudentSpec:
    spec = student_spec(config)
    if spec is None:
        raise ValueError(f"{source} holds no workbench student (its config has no {SPEC_KEY!r}); load a plain model "
                         f"with transformers' AutoModelForCausalLM.from_pretrained")
    return spec


def _teacher_model_class(config: PreTrainedConfig) -> type[Student]:
    """The teacher's *ForCausalLM class for a student config."""
    return MODEL_FOR_CAUSAL_LM_MAPPING[hf.teacher_config_class(config)]


def from_folder(path: str | Path, config: PreTrainedConfig | None = None, *model_args,
                output_loading_info: bool = False, **kwargs) -> Student | tuple[Student, dict]:
    """The student saved in the folder ``path``: the loader of ``load_student`` and of AutoModelForCausalLM for a
    student config. ``config``: the folder's (read when None). ``model_args`` and ``kwargs`` go to the teacher class's
    ``from_pretrained`` (``dtype``, ``device_map``, ``attn_implementation`` ...). ``output_loading_info``: also return
    transformers' loading info, for the whole student (nothing missing or unexpected: anything else raises)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: a student loads from the folder save_pretrained wrote "
                                f"(huggingface_hub.snapshot_download(repo_id) fetches one from the Hub)")
    config = AutoConfig.from_pretrained(path) if config is None else config
    spec = _spec(config, path)
    files = _weight_files(path)
    hf.run_before_load()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the mixer weights are "unused" and the replaced q/k/v/o "missing"
    try:
        model, info = _teacher_model_class(config).from_pretrained(path, *model_args, config=config,
                                                                   output_loading_info=True, **kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
    layers = anatomy.decoder_layers(model)
    replaced = {id(anatomy.attention_of(layers[i])[1]) for i in spec.layers}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in replaced)
    attention_params = {k for k in model.state_dict() if k.startswith(prefixes)}  # replaced q/k/v/o: not loaded
    install(model, spec, spec.mixer_config)
    mixer_params = {k for k in model.state_dict() if k.startswith(prefixes)}
    weights = _read(files, mixer_params)
    model.load_state_dict(weights, strict=False)
    not_loaded = (set(info["missing_keys"]) - attention_params) | (mixer_params - set(weights))
    problems = {"not loaded": sorted(not_loaded), "not used": sorted(set(info["unexpected_keys"]) - mixer_params)}
    if any(problems.values()):
        raise ValueError(f"{path} does not match the student its config describes: {problems}")
    return (model, {**info, "missing_keys": [], "unexpected_keys": []}) if output_loading_info else model


def from_config(config: PreTrainedConfig, **kwargs) -> Student:
    """A student of ``config``'s shape with fresh weights (AutoModelForCausalLM.from_config for a student config):
    the teacher's class built from the config, its replaced layers' attention swapped for mixers as the spec says."""
    spec = _spec(config, "the config")
    hf.run_before_load()
    model = _teacher_model_class(config)._from_config(config, **kwargs)
    install(model, spec, spec.mixer_config)
    return model


def load_student(path: str | Path, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Student:
    """A student saved with ``save_pretrained`` (``from_folder``), on ``device`` (None: the CPU) in ``dtype`` (None:
    as saved)."""
    model = from_folder(path, dtype=dtype or "auto")
    return model.to(device) if device is not None else model
