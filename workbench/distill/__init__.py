"""Distillation: typed run configs and recipes, pure loss functions, the run (a list of stages writing an event
stream, atomic checkpoints and a summary to a run folder), and the readers' view of run folders.

    from workbench.distill import RunConfig, recipe, distill, load_run_student
    summary = distill(RunConfig(mixer="mamba2", keep_attention=[0, 15], stages=recipe("kd", tokens=1_000_000)),
                      "runs/a")
    run = load_run_student("runs/a")        # its teacher, trained student, config and step
"""

import sys
import types
from pathlib import Path

from workbench.distill.config import RunConfig, StageConfig, parse_tokens
from workbench.distill.load import RunStudent, load_run_student
from workbench.distill.recipes import RECIPES, recipe
from workbench.distill.run import Run


def distill(config: RunConfig, out: str | Path, progress: bool = True) -> dict:
    """Run ``config`` into the run folder ``out`` (resuming the run already there) and return its summary."""
    return Run(config, out, progress=progress).execute()


class _DistillPackage(types.ModuleType):
    """``workbench.distill`` is this package and, called, the ``distill`` function: ``from workbench import distill``
    then gives the entry point while ``workbench.distill.run`` and ``import workbench.distill.events`` keep working
    (a function bound to the same name at the top level would hide the package)."""

    def __call__(self, config: RunConfig, out: str | Path, progress: bool = True) -> dict:
        return distill(config, out, progress=progress)


sys.modules[__name__].__class__ = _DistillPackage

__all__ = ["RunConfig", "StageConfig", "parse_tokens", "RECIPES", "recipe", "Run", "distill", "RunStudent",
           "load_run_student"]
