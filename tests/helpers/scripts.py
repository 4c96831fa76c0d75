"""The benchmark scripts (benchmarks/*.py, not a package) as modules, so that tests can call their functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_script(name: str, module: str | None = None) -> ModuleType:
    """benchmarks/``name``.py loaded as the module ``module`` (default: ``name``), registered in sys.modules
    (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(module or name, BENCHMARKS / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded
