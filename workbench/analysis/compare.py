"""Student vs teacher on the same windows: perplexity of each, KL(teacher ‖ student) and top-1 agreement per token."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from workbench.analysis.metrics import kl_divergence, top1_agreement
from workbench.analysis.perplexity import logits_fn, windows


@torch.no_grad()
def compare(teacher, student, ids, window: int = 512, batch_size: int = 4, max_tokens: int | None = None) -> dict:
    """Metrics over non-overlapping windows of ``ids`` (the perplexity convention), up to ``max_tokens`` tokens.

    Returns {"ppl_student", "ppl_teacher", "kl", "agreement", "tokens"}; KL and agreement are per-token means."""
    ids = torch.as_tensor(np.asarray(ids[: max_tokens] if max_tokens else ids, dtype=np.int64))
    device = next(student.parameters()).device
    t_logits, s_logits = logits_fn(teacher), logits_fn(student)
    spans = [(s, e) for s, e in windows(len(ids), window) if e - s == window + 1] or windows(len(ids), window)[:1]
    sums = {"nll_s": 0.0, "nll_t": 0.0, "kl": 0.0, "agree": 0.0}
    count = 0
    for i in range(0, len(spans), batch_size):
        batch = torch.stack([ids[s:e] for s, e in spans[i:i + batch_size]]).to(device)   # (B, W + 1)
        x, y = batch[:, :-1], batch[:, 1:]
        lt, ls = t_logits(x).float(), s_logits(x).float()                                 # (B, W, V)
        n = y.numel()
        sums["nll_t"] += F.cross_entropy(lt.flatten(0, 1), y.flatten(), reduction="sum").item()
        sums["nll_s"] += F.cross_entropy(ls.flatten(0, 1), y.flatten(), reduction="sum").item()
        sums["kl"] += kl_divergence(ls, lt).item() * n
        sums["agree"] += top1_agreement(ls, lt).item() * n
        count += n
    return {"ppl_student": math.exp(sums["nll_s"] / count), "ppl_teacher": math.exp(sums["nll_t"] / count),
            "kl": sums["kl"] / count, "agreement": sums["agree"] / count, "tokens": count}
