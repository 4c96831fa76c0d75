"""Teachers: load any causal LM (registry name, local folder, GGUF, hub id) as a frozen ``Teacher`` and capture its
per-layer attention and hidden states; ``anatomy`` finds its layers and each attention's projections
(``AttentionWeights``, what students are initialised from)."""

import importlib

from workbench.teachers.registry import DEFAULT_TEACHER, REGISTRY

# name -> the module of this package that defines it, imported on first use (PEP 562): the registry above imports
# no torch, so the ``workbench`` command's --help can name the teachers without loading a model library
_NAMES = {"load_teacher": "load", "teacher_config": "load", "TeacherNotFound": "load", "Teacher": "wrapper",
          "Capture": "wrapper"}
__all__ = [*_NAMES, "REGISTRY", "DEFAULT_TEACHER"]


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
