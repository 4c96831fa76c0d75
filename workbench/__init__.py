"""workbench: distil pretrained Transformer LMs into subquadratic students (Hyena, Mamba, Mamba-2, hybrids).

The picture: a frozen teacher (``workbench.teachers``) -> a student builder that swaps chosen attention layers for
mixers (``workbench.students``) -> a run made of stages (``workbench.distill``) that writes an event stream and
checkpoints -> readers (notebooks, the Panel app, reports, benchmarks). ``docs/architecture.md`` has the picture of
which package may import which.

The entry points people type:

    from workbench import load_teacher, build_student, load_student, distill, generate
    teacher = load_teacher("smollm2-135m")
    student = build_student(teacher, "mamba2", keep_attention=[0, 15])
    summary = distill(RunConfig(...), "runs/a")          # workbench.distill.RunConfig; distill.run, .events ...
    result = generate(student, ids, max_new_tokens=64)

They are imported on first use (PEP 562 ``__getattr__``), so that ``import workbench`` and the ``workbench``
command's ``--help`` load no model library; the first use also registers the ``laughing-*`` mixers
(``workbench.laughing.student``), so saved Laughing students load.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_ENTRY_POINTS = {  # name -> the module that defines it (a module itself where the name is the module's)
    "load_teacher": "workbench.teachers",
    "build_student": "workbench.students",
    "load_student": "workbench.students",
    "distill": "workbench.distill",   # the package, callable as the distill function
    "generate": "workbench.generation",
    "laughing": "workbench.laughing",
}
__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name not in _ENTRY_POINTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module("workbench.laughing.student")  # registers the laughing-* mixers
    module = importlib.import_module(_ENTRY_POINTS[name])
    return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
