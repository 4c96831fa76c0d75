"""Untrained hybrids: how far a student stands from its teacher before any training, as a function of the share of
layers that keep attention and of the mixers' initialisation (attention weights or random)."""

from __future__ import annotations

import numpy as np
import torch

from workbench.analysis.compare import TeacherCache, compare
from workbench.students import build_student


def keep_for_share(n_layers: int, share: float) -> list[int]:
    """Evenly spaced layers that stay attention so that ``share`` of ``n_layers`` is attention (rounded)."""
    k = int(round(share * n_layers))
    if k == 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, k)})


def share_sweep(teacher, ids, shares, mixer: str = "mamba2", inits=("attention", "random"),
                max_tokens: int = 1024, window: int = 256) -> list[dict]:
    """For each attention share and init, build the student and compare it with the teacher on ``ids``. One row per
    (share, init): share, init, kept layers and the metrics of ``compare``."""
    rows = []
    kept = TeacherCache()   # the teacher's side of every comparison: computed once
    for share in shares:
        keep = keep_for_share(teacher.num_layers, share)
        for init in inits:
            torch.manual_seed(0)
            if len(keep) == teacher.num_layers:   # nothing replaced: the student is the teacher, whatever the init
                student = teacher.model
            else:
                student = build_student(teacher.model, mixer=mixer, keep_attention=keep, init=init).eval()
            metrics = compare(teacher, student, ids, window=window, max_tokens=max_tokens, teacher_cache=kept)
            rows.append({"attention share": share, "init": init, "kept": len(keep),
                         **metrics, "ppl ratio": metrics["ppl_student"] / metrics["ppl_teacher"]})
    return rows
