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

Importing workbench also makes a saved student load through transformers' own entry points
(``AutoModelForCausalLM.from_pretrained(folder)``, ``AutoConfig``): ``workbench.students.hf`` registers the student
model type with them. That needs transformers' AutoConfig module, which imports torch (seconds), so it is not imported
here: if the module has already run, the registration happens now; otherwise ``_AfterImport``, a ``sys.meta_path``
finder, runs it right after transformers executes that module, whichever import brings it in.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from workbench._lazy import lazy_names

__version__ = "0.1.0"

_ENTRY_POINTS = {  # name -> the package that defines it (the package itself where the name is the package's)
    "load_teacher": "teachers",
    "build_student": "students",
    "load_student": "students",
    "distill": "distill",   # the package, callable as the distill function
    "generate": "generation",
    "laughing": "laughing",
}
__all__ = ["__version__", *_ENTRY_POINTS]


def _register_laughing_mixers() -> None:
    importlib.import_module("workbench.laughing.student")  # registers the laughing-* mixers on import


__getattr__, __dir__ = lazy_names(__name__, _ENTRY_POINTS, before=_register_laughing_mixers)


def _register_students() -> None:
    """The student model type in transformers' Auto classes; a student they load registers the laughing-* mixers
    first, as a ``load_student`` taken from this package does."""
    importlib.import_module("workbench.students.hf").register(before_load=_register_laughing_mixers)


class _ThenCall:
    """The loader of one module, wrapped: after the module executes, it gets its own loader back and ``then`` runs."""

    def __init__(self, loader, then: Callable[[], None]):
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        self.then()

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class _AfterImport:
    """A ``sys.meta_path`` finder that runs ``then`` once, right after the module ``name`` first executes: asked for
    that module, it finds the module's spec with the other finders and wraps its loader; it leaves the path once
    ``then`` has run (a spec asked for without an import, e.g. by ``importlib.util.find_spec``, leaves it in place)."""

    def __init__(self, name: str, then: Callable[[], None]):
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            find_spec = None if finder is self else getattr(finder, "find_spec", None)  # as the import system skips
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                spec.loader = _ThenCall(spec.loader, self._ran)
                return spec
        return None

    def _ran(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.then()


_AUTO_CONFIG = "transformers.models.auto.configuration_auto"  # defines AutoConfig and its table of model types
if _AUTO_CONFIG in sys.modules:
    _register_students()
else:
    sys.meta_path.insert(0, _AfterImport(_AUTO_CONFIG, _register_students))
