"""Held-out perplexity over fixed windows, for any causal LM (teacher, student, or a plain transformers model).

Convention, so numbers compare across tools: tokenise the whole text once without special tokens; take
non-overlapping windows of W + 1 tokens starting at 0, W, 2W, ...; each window predicts its last W tokens (a shorter
final window predicts what it has). Perplexity = exp(total NLL / predicted tokens). With N tokens, N - 1 are predicted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.teachers.anatomy import context_length


@dataclass
class PerplexityResult:
    ppl: float         # exp(nll / predicted)
    nll: float         # summed negative log-likelihood, nats
    tokens: int        # predicted tokens
    window: int        # W
    windows: int       # number of windows

    def as_dict(self) -> dict:
        return asdict(self)


def windows(n_tokens: int, window: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the evaluation windows: starts 0, W, 2W, ...; each of length <= W + 1, >= 2."""
    if window < 1:
        raise ValueError("window must be at least 1")
    return [(s, min(s + window + 1, n_tokens)) for s in range(0, max(n_tokens - 1, 0), window)]


def logits_fn(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function (B, L) ids -> (B, L, V) logits for a Teacher, a student or any transformers causal LM."""
    if hasattr(model, "logits"):  # workbench Teacher
        return model.logits
    return lambda ids: model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def perplexity(model, ids, window: int = 1024, batch_size: int = 4, device: torch.device | str | None = None,
               progress: bool = True, desc: str = "perplexity") -> PerplexityResult:
    """Perplexity of ``model`` on token ids (1-D array or tensor) with the windowing convention above."""
    limit = context_length(model.config)
    if limit is not None and window + 1 > limit:
        raise ValueError(f"window {window} needs {window + 1} positions but the model's context limit is {limit}; "
                         f"use --window {limit - 1} or less")
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError("perplexity needs a 1-D sequence of at least 2 token ids")
    if device is None:
        device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else model.device
    forward = logits_fn(model)
    spans = windows(len(ids), window)
    # full-length windows are batched; the shorter final window (if any) runs alone
    groups = [spans[i:i + batch_size] for i in range(0, len(spans), batch_size)]
    groups = [g for grp in groups for g in ([grp] if len({e - s for s, e in grp}) == 1 else [[x] for x in grp])]
    nll, predicted = 0.0, 0
    for group in tqdm(groups, desc=desc, disable=not progress, unit="batch"):
        batch = torch.stack([ids[s:e] for s, e in group]).to(device)    # (B, W + 1)
        logits = forward(batch[:, :-1]).float()                          # (B, W, V)
        nll += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        predicted += batch[:, 1:].numel()
    return PerplexityResult(ppl=math.exp(nll / predicted), nll=nll, tokens=predicted, window=window,
                            windows=len(spans))
