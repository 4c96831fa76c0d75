"""Student mixers (one per file) and the builder that swaps them into a teacher.

    from workbench.students import build_student, load_student, student_mixers
    student = build_student(teacher, "mamba2", keep_attention=[0, 15])   # or replace=[10, 20]

- ``base.Mixer``: the face every mixer shows (forward, step, init_state, prefill, extend, mixing_matrix, mix_io)
- ``hyena``, ``multihyena``, ``mamba``, ``mamba2``: the mixers; ``init``: their initialisation from attention
- ``registry``: mixer names -> classes; ``spec``: which layers are swapped, and the spec a student carries
- ``adapter.MixerAttention``: the module in an attention's place; ``build``, ``io``: making and loading students
- ``calibrate``: per-head output scales after an attention init
"""

from workbench.students.adapter import MixerAttention, student_mixers
from workbench.students.base import Mixer
from workbench.students.build import Student, build_student
from workbench.students.calibrate import calibrate_output_scale
from workbench.students.io import load_student
from workbench.students.registry import MIXERS, PRESETS, mixer_class, mixer_names, register_mixer
from workbench.students.spec import INITS, SPEC_KEY, StudentSpec, split_layers, student_spec

__all__ = ["Mixer", "MixerAttention", "Student", "build_student", "load_student", "student_mixers", "student_spec",
           "StudentSpec", "split_layers", "SPEC_KEY", "INITS", "MIXERS", "PRESETS", "mixer_class", "mixer_names",
           "register_mixer", "calibrate_output_scale"]
