"""Readings of a teacher's attention maps (``Teacher.capture(..., attn_probs=True)``): how far back each head looks.

Shapes: B batch, H heads, L length; attention probabilities are (B, H, L, L), query t by key s.
"""

from __future__ import annotations

import torch


def attention_reach(attn_probs: dict[int, torch.Tensor]) -> torch.Tensor:
    """Mean attention distance per (layer, head): Σ_s A[t, s] (t − s) averaged over queries t and the batch, in
    tokens. (n_layers, H), rows in sorted layer order. Small: the head looks at its neighbours; large: far back."""
    rows = []
    for i in sorted(attn_probs):
        a = attn_probs[i].float()                                         # (B, H, L, L)
        L = a.shape[-1]
        lag = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).clamp(min=0).to(a)   # (L, L): t − s
        rows.append((a * lag).sum(-1).mean(dim=(0, 2)).cpu())            # (H,)
    return torch.stack(rows)
