"""Student mixers (one per file) and the builder that swaps them into a teacher.

    from workbench.students import build_student, load_student, student_mixers
    student = build_student(teacher, "mamba2", keep_attention=[0, 15])   # or replace=[10, 20]

- ``base.Mixer``: the face every mixer shows (forward, step, init_state, prefill, extend, mixing_matrix, mix_io, filter)
- ``hyena``, ``multihyena``, ``mamba``, ``mamba2``: the mixers; ``init``: their initialisation from attention
- ``registry``: mixer names -> classes; ``spec``: which layers are swapped, and the spec a student carries
- ``adapter.MixerAttention``: the module in an attention's place; ``build``, ``io``: making and loading students
- ``hf``: the student model type transformers' AutoConfig / AutoModelForCausalLM load a saved student through
- ``calibrate``: per-head output scales after an attention init

The names below are imported on first use (PEP 562 ``__getattr__``), so that importing ``workbench.students.hf``
(which ``import workbench`` arranges when transformers loads its AutoConfig) loads none of the mixers and none of
transformers' model code.
"""

from __future__ import annotations

import importlib

_NAMES = {  # name -> the module that defines it
    "Mixer": "workbench.students.base",
    "MixerAttention": "workbench.students.adapter",
    "student_mixers": "workbench.students.adapter",
    "Student": "workbench.students.build",
    "build_student": "workbench.students.build",
    "calibrate_output_scale": "workbench.students.calibrate",
    "load_student": "workbench.students.io",
    "MIXERS": "workbench.students.registry",
    "PRESETS": "workbench.students.registry",
    "mixer_class": "workbench.students.registry",
    "mixer_names": "workbench.students.registry",
    "register_mixer": "workbench.students.registry",
    "INITS": "workbench.students.spec",
    "SPEC_KEY": "workbench.students.spec",
    "StudentSpec": "workbench.students.spec",
    "split_layers": "workbench.students.spec",
    "student_spec": "workbench.students.spec",
}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})
