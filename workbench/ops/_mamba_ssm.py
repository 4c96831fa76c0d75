"""Import one module of mamba-ssm without running its package ``__init__``.

Why this exists. ``mamba_ssm/__init__.py`` imports the compiled ``selective_scan_cuda`` extension, which the pure
(Triton-only) wheel lacks, so ``import mamba_ssm`` fails even on machines where its Triton SSD kernels work. A lasting
stand-in for the package is no answer: transformers binds its Mamba and Mamba-2 models to mamba_ssm's functions
whenever ``import mamba_ssm`` succeeds, and would then call CUDA kernels that do not exist.

What it does. ``import_submodule("mamba_ssm.ops.triton.ssd_combined")`` puts a bare package object for ``mamba_ssm``
(right ``__path__``, no code run) into ``sys.modules``, imports the requested module the ordinary way (its absolute
imports of sibling modules resolve through that bare package; the sub-packages' own ``__init__`` files are empty), and
then removes every ``mamba_ssm`` entry it added to ``sys.modules``, whether the import worked or not. The returned
module keeps working: its functions reach their globals through the module object, not through ``sys.modules``.
Afterwards ``import mamba_ssm`` behaves exactly as before (it fails where it failed).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

PACKAGE = "mamba_ssm"


# why a kernel could not be loaded, by the module asked for (shown in error messages and by `workbench doctor`)
IMPORT_ERRORS: dict[str, str] = {}


def try_import(name: str, attribute: str):
    """``import_submodule(name).<attribute>``, or None when it cannot be imported (the reason goes to IMPORT_ERRORS)."""
    if not is_installed():
        IMPORT_ERRORS[name] = f"{PACKAGE} is not installed"
        return None
    try:
        return getattr(import_submodule(name), attribute)
    except ImportError as err:
        IMPORT_ERRORS[name] = f"{type(err).__name__}: {err}"
        return None


def is_installed() -> bool:
    """Is the mamba-ssm distribution importable at all (without importing it)?"""
    return importlib.util.find_spec(PACKAGE) is not None


def import_submodule(name: str) -> ModuleType:
    """Import ``name`` (a ``mamba_ssm.…`` module) without executing ``mamba_ssm/__init__.py``.

    Raises ImportError when mamba-ssm is not installed or the module's own imports fail (e.g. no triton).
    """
    if not name.startswith(PACKAGE + "."):
        raise ValueError(f"{name!r} is not a module of {PACKAGE}")
    if PACKAGE in sys.modules:  # the real package is already imported (a full install with its CUDA extension)
        return importlib.import_module(name)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE} is not installed (pip install mamba-ssm; see docs for the pure-wheel build)")

    bare_spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    bare_spec.submodule_search_locations = list(spec.submodule_search_locations)
    before = set(sys.modules)
    sys.modules[PACKAGE] = importlib.util.module_from_spec(bare_spec)
    try:
        return importlib.import_module(name)
    finally:
        for key in set(sys.modules) - before:
            if key == PACKAGE or key.startswith(PACKAGE + "."):
                del sys.modules[key]
