"""Support for the guided notebooks (``notebooks/01_tour.ipynb`` ... ``07_compare.ipynb``): the smoke-mode switch, one
budget preset per notebook, and the few small steps the notebooks repeat, so that every notebook cell stays one call.
The analyses the notebooks draw live in ``workbench.analysis``. ``notebook_kernel`` is the kernel the notebooks are
executed in by the tests and ``benchmarks/notebooks.py``.

Smoke mode runs every notebook end to end on a small CPU (a 2-core CI machine) with tiny budgets: short texts, two
replaced layers, a couple of optimiser steps per stage. It is on when no CUDA device is present; the environment
variable ``WORKBENCH_SMOKE=1`` or ``WORKBENCH_SMOKE=0`` forces it on or off. The full presets are sized for one GPU.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from workbench.analysis import mixing as analysis_mixing
from workbench.data import load_corpus, token_ids
from workbench.distill import recipes
from workbench.distill.config import RunConfig

if TYPE_CHECKING:
    from jupyter_client import KernelManager


def smoke() -> bool:
    """True when the notebooks should use their tiny budgets: WORKBENCH_SMOKE=1/0 if set, else no CUDA device."""
    value = os.environ.get("WORKBENCH_SMOKE", "").strip()
    if value in ("1", "0"):
        return value == "1"
    if value:
        raise ValueError(f"WORKBENCH_SMOKE must be 1 or 0, got {value!r}")
    return not torch.cuda.is_available()


@dataclass(frozen=True)
class Budget:
    """The knobs of one notebook. ``steps_per_stage`` set (smoke mode) gives every stage of a recipe that many
    optimiser steps instead of the recipe's own split of ``tokens``."""
    notebook: str
    smoke: bool
    text_tokens: int = 64                 # length of the held-out excerpt whose matrices are drawn
    layers: list[int] = field(default_factory=lambda: [10, 20])  # teacher layers replaced by mixers
    tokens: int = 2_000_000               # training tokens of a run (the recipe splits them over its stages)
    steps_per_stage: int | None = None    # smoke mode: this many steps per stage, whatever the recipe's split
    seq_len: int = 512                    # tokens per training sequence
    batch_size: int = 8                   # sequences per step
    eval_every: int = 50                  # steps between in-run evaluations on the valid split
    eval_tokens: int = 8192               # valid-split tokens per in-run evaluation
    eval_window: int = 512                # window of those evaluations
    final_eval_tokens: int | None = None  # held-out tokens of the final summary (None: the whole split)
    shares: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)  # 04: attention shares of the hybrid sweep
    orders: tuple[int, ...] = (2, 4, 8, 16, 32, 64)    # 06: state sizes of the distilled recurrences
    filter_len: int = 1024                # 05/06: taps of the long filters drawn and distilled
    fit_steps: int = 300                  # 06: Adam steps of each modal fit
    new_tokens: int = 128                 # 07: tokens generated per timing
    prompt_lengths: tuple[int, ...] = (128, 512, 2048)  # 07: prompt lengths of the speed comparison
    tasks: tuple[str, ...] = ("wb_cloze", "wb_cloze_gen", "wb_choice", "wb_choice_gen")  # 07: shipped eval tasks
    task_limit: int | None = 100          # 07: documents scored per task (None: all)
    task_batch_size: int = 16             # 07: requests per forward pass of the task scoring


SMOKE = dict(text_tokens=48, layers=[10, 20], tokens=4 * 2 * 64, steps_per_stage=2, seq_len=64, batch_size=2,
             eval_every=2, eval_tokens=128, eval_window=64, final_eval_tokens=128, shares=(1.0, 0.5),
             orders=(2, 4, 8, 16), filter_len=256, fit_steps=60, new_tokens=8, prompt_lengths=(16, 64),
             tasks=("wb_cloze", "wb_cloze_gen", "wb_choice"), task_limit=1, task_batch_size=1)

# The full presets (a GPU), sized for a tutorial: each notebook runs in a few minutes on one H200 (the times measured
# there are in each notebook's first cell; `python benchmarks/notebooks.py` measures them again). Training notebooks
# take 32 x 512 tokens per step, which keeps a GPU busier than 8 x 512 for the same number of tokens.
TRAIN = dict(text_tokens=256, batch_size=32, eval_every=25)
FULL: dict[str, dict] = {
    "01_tour": dict(text_tokens=256),
    "02_build_student": dict(text_tokens=256, layers=[4, 10, 16, 22]),
    "03_mohawk": dict(TRAIN, layers=list(range(1, 30, 2)), tokens=3_000_000),
    "04_mamba_in_the_llama": dict(TRAIN, layers=list(range(1, 30, 2)), tokens=4_000_000, eval_tokens=4096),
    "05_scavenging_hyena": dict(TRAIN, layers=list(range(30)), tokens=4_000_000),
    "06_laughing_hyena": dict(text_tokens=256, layers=list(range(30))),
    "07_compare": dict(TRAIN, layers=list(range(1, 30, 2)), tokens=2_000_000,
                       tasks=("wb_cloze", "wb_cloze_gen", "wb_choice", "wb_choice_gen", "wb_needle"), task_limit=50),
}

# The longer budgets of the training notebooks (``budget(name, long=True)``: their ``LONG_BUDGET`` variable), the
# full presets before they were sized for a tutorial: 20M training tokens at 8 x 512 per step, 19-20 minutes of
# training each on one H200. Still about 0.1-1% of the papers' budgets (MOHAWK 3B tokens, Mamba in the Llama 20B).
LONG: dict[str, dict] = {name: dict(tokens=20_000_000, batch_size=8, eval_every=50)
                         for name in ("03_mohawk", "04_mamba_in_the_llama", "05_scavenging_hyena", "07_compare")}


def budget(notebook: str, smoke_mode: bool | None = None, long: bool = False) -> Budget:
    """The preset of ``notebook`` (e.g. "03_mohawk"): its smoke budget in smoke mode, else its full budget, or with
    ``long`` its longer budget (notebooks that train; smoke mode ignores ``long``)."""
    if notebook not in FULL:
        raise KeyError(f"no preset for {notebook!r}; presets: {sorted(FULL)}")
    if long and notebook not in LONG:
        raise ValueError(f"{notebook} has no longer budget (it trains nothing); those that do: {sorted(LONG)}")
    on = smoke() if smoke_mode is None else smoke_mode
    settings = SMOKE if on else {**FULL[notebook], **(LONG[notebook] if long else {})}
    return Budget(notebook=notebook, smoke=on, **settings)


def run_folder(name: str) -> Path:
    """A fresh run folder: under $WORKBENCH_RUNS when set (to keep runs), else in a new temporary directory."""
    root = os.environ.get("WORKBENCH_RUNS")
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="workbench-"))
    return base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_config(b: Budget, recipe: str, mixer: str, replace: list[int] | None = None, **settings) -> RunConfig:
    """A RunConfig for ``recipe`` with ``mixer`` in the layers ``replace`` (default: the budget's layers), sized by
    the budget, with the recipe's measured dials (``recipes.default_dials``). Other RunConfig fields (``init``,
    ``mixer_config``, ...) pass through ``settings``."""
    layers = list(b.layers if replace is None else replace)
    stages = recipes.recipe(recipe, tokens=b.tokens, seq_len=b.seq_len, batch_size=b.batch_size,
                            **recipes.default_dials(recipe))
    if b.steps_per_stage is not None:
        step_tokens = b.batch_size * b.seq_len
        stages = [dataclasses.replace(s, tokens=b.steps_per_stage * step_tokens) for s in stages]
    return RunConfig(mixer=mixer, replace=layers, stages=stages, eval_every=b.eval_every, eval_tokens=b.eval_tokens,
                     eval_window=b.eval_window, checkpoint_every=10**9, **settings)


def heldout_excerpt(teacher, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` of the held-out split (2023 and 2024 addresses) as (1, n) ids on the teacher's device."""
    ids = token_ids(load_corpus("sotu", "heldout"), teacher.tokenizer)[:n_tokens]
    return torch.as_tensor(np.asarray(ids, dtype=np.int64))[None].to(teacher.device)


def valid_ids(teacher) -> np.ndarray:
    """The valid split's token ids (what the notebooks' quick comparisons are measured on)."""
    return token_ids(load_corpus("sotu", "valid"), teacher.tokenizer)


def mixing_matrices(student, capture, layers: list[int] | None = None, **options) -> dict[int, torch.Tensor]:
    """{layer: (B, H, L, L)} float32 CPU mixing matrices of the student's mixers on the teacher's attention inputs in
    ``capture``, whatever dtype the models run in (``workbench.analysis.mixing``); ``options`` go to the mixers'
    ``mixing_matrix`` (``channels=[0]`` for a Hyena mixer, whose matrices are per channel)."""
    return analysis_mixing.mixing_matrices(student, capture.attn_in, layers, **options)


def notebook_kernel() -> KernelManager:
    """A kernel manager whose "python3" kernel (the notebooks' kernel) is this interpreter's ipykernel, whatever
    ``python`` is on the PATH and whichever kernel specs are installed: executing a notebook through nbclient with it
    (``NotebookClient(nb, km=notebook_kernel(), ...)``) runs it in the same environment as the caller."""
    import ipykernel.kernelspec
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())
