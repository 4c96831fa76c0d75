"""Teachers: load any causal LM (registry name, local folder, GGUF, hub id) as a frozen ``Teacher`` and capture its
per-layer attention and hidden states; ``anatomy`` finds its layers and each attention's projections
(``AttentionWeights``, what students are initialised from)."""

from workbench._lazy import lazy_names
from workbench.teachers.registry import DEFAULT_TEACHER, REGISTRY

# name -> the module of this package that defines it, imported on first use (PEP 562): the registry above imports
# no torch, so the ``workbench`` command's --help can name the teachers without loading a model library
_NAMES = {"load_teacher": "load", "teacher_config": "load", "TeacherNotFound": "load", "Teacher": "wrapper",
          "Capture": "wrapper"}
__all__ = [*_NAMES, "REGISTRY", "DEFAULT_TEACHER"]

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
