"""The output gate of the SSM mixers: y ⊙ silu(z + b), optionally RMS-normalised over G groups of channels and scaled
(mamba_ssm's RMSNormGated with norm_before_gate=False, the Mamba-2 layer's; without the norm, Mamba-1's gate and
MOHAWK's). Shapes: E channels in G groups of E/G."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gated_rms_norm(y: Tensor, z: Tensor, bias: Tensor | None, weight: Tensor | None, groups: int,
                   eps: float) -> Tensor:
    """y (..., E), z (..., E), bias (E,) or None, weight (E,) or None (no norm) -> (..., E) in y's dtype: the gate
    in y's dtype, the norm in at least float32."""
    g = y * F.silu(z if bias is None else z + bias)
    return g if weight is None else group_rms_norm(g, weight, groups, eps)


def group_rms_norm(g: Tensor, weight: Tensor, groups: int, eps: float) -> Tensor:
    """g (..., E) RMS-normalised over each of G groups of E/G channels, in at least float32, then scaled by weight
    (E,) -> (..., E) in g's dtype."""
    g32 = g.to(torch.promote_types(g.dtype, torch.float32)).unflatten(-1, (groups, -1))   # (..., G, E/G)
    g32 = g32 * torch.rsqrt(g32.pow(2).mean(-1, keepdim=True) + eps)
    return (g32.flatten(-2) * weight).to(g.dtype)
