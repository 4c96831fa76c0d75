"""Teachers: load any causal LM (registry name, local folder, GGUF, hub id) as a frozen ``Teacher`` and capture its
per-layer attention and hidden states; ``anatomy`` finds its layers and each attention's projections
(``AttentionWeights``, what students are initialised from)."""

from workbench.teachers.load import TeacherNotFound, load_teacher, teacher_config
from workbench.teachers.registry import DEFAULT_TEACHER, REGISTRY
from workbench.teachers.wrapper import Capture, Teacher

__all__ = ["load_teacher", "teacher_config", "Teacher", "Capture", "TeacherNotFound", "REGISTRY", "DEFAULT_TEACHER"]
