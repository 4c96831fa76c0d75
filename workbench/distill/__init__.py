"""Distillation: typed run configs and recipes, pure loss functions, the run (a list of stages writing an event
stream, atomic checkpoints and a summary to a run folder), and the readers' view of run folders.

    from workbench.distill import RunConfig, recipe, distill
    summary = distill(RunConfig(mixer="mamba2", keep_attention=[0, 15], stages=recipe("kd", tokens=1_000_000)),
                      "runs/a")
"""

from pathlib import Path

from workbench.distill.config import RunConfig, StageConfig, parse_tokens
from workbench.distill.recipes import RECIPES, recipe
from workbench.distill.run import Run


def distill(config: RunConfig, out: str | Path, progress: bool = True) -> dict:
    """Run ``config`` into the run folder ``out`` (resuming the run already there) and return its summary."""
    return Run(config, out, progress=progress).execute()


__all__ = ["RunConfig", "StageConfig", "parse_tokens", "RECIPES", "recipe", "Run", "distill"]
