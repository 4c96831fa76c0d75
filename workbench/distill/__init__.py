"""Distillation: typed run configs and recipes, pure loss functions, the run (a list of stages writing an event
stream, atomic checkpoints and a summary to a run folder), and the readers' view of run folders.

    from workbench.distill import RunConfig, recipe, distill, load_run_student
    summary = distill(RunConfig(mixer="mamba2", keep_attention=[0, 15], stages=recipe("kd", tokens=1_000_000)),
                      "runs/a")
    run = load_run_student("runs/a")        # its teacher, trained student, config and step

The names below are imported on first use (PEP 562 ``__getattr__``), so that a run config can be read and checked
(``workbench.distill.config``) without loading torch: the ``workbench`` command refuses bad flags that way.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

from workbench._lazy import lazy_names

_NAMES = {  # name -> the module of this package that defines it
    "RunConfig": "config",
    "StageConfig": "config",
    "parse_tokens": "config",
    "RunStudent": "load",
    "load_run_student": "load",
    "RECIPES": "recipes",
    "recipe": "recipes",
    "Run": "run",
}

__getattr__, __dir__ = lazy_names(__name__, _NAMES)


def distill(config, out: str | Path, progress: bool = True) -> dict:
    """Run ``config`` (a ``RunConfig``) into the run folder ``out`` (resuming the run already there) and return its
    summary."""
    from workbench.distill.run import Run

    return Run(config, out, progress=progress).execute()


class _DistillPackage(types.ModuleType):
    """``workbench.distill`` is this package and, called, the ``distill`` function: ``from workbench import distill``
    then gives the entry point while ``workbench.distill.run`` and ``import workbench.distill.events`` keep working
    (a function bound to the same name at the top level would hide the package)."""

    def __call__(self, config, out: str | Path, progress: bool = True) -> dict:
        return distill(config, out, progress=progress)


sys.modules[__name__].__class__ = _DistillPackage

__all__ = [*_NAMES, "distill"]
