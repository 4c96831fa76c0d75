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

from workbench._lazy import lazy_names

_NAMES = {  # name -> the module of this package that defines it
    "Mixer": "base",
    "MixerAttention": "adapter",
    "student_mixers": "adapter",
    "Student": "build",
    "build_student": "build",
    "calibrate_output_scale": "calibrate",
    "load_student": "io",
    "MIXERS": "registry",
    "PRESETS": "registry",
    "mixer_class": "registry",
    "mixer_names": "registry",
    "register_mixer": "registry",
    "INITS": "spec",
    "SPEC_KEY": "spec",
    "StudentSpec": "spec",
    "split_layers": "spec",
    "student_spec": "spec",
}
__all__ = list(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
