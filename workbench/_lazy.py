"""Names of a package imported on first use (PEP 562), so that importing the package loads none of its heavy modules.

    __getattr__, __dir__ = lazy_names(__name__, {"load_teacher": "load", "Teacher": "wrapper"})

Each name maps to the module of the package that defines it, spelled relative to the package (``"load"`` is
``<package>.load``); a name that is its module's own name (``{"distill": "distill"}``) gives the module itself. Only
the package's own modules can be named, so the imports these faces make stay inside their package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_names(package: str, names: Mapping[str, str], before: Callable[[], None] | None = None
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package ``package`` (its ``__name__``): ``__getattr__(name)``
    imports ``names[name]`` (a module of the package, relative to it) on first use and returns the name from it,
    running ``before`` first when given; an unknown name raises AttributeError as a module does. ``__dir__`` lists the
    package's own names and ``names``."""
    modules = {name: f"{package}.{module}" for name, module in names.items()}

    def __getattr__(name: str) -> object:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before()
        module = importlib.import_module(modules[name])
        return module if names[name] == name else getattr(module, name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
