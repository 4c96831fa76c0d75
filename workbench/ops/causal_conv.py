"""Causal depthwise 1-D convolution over (B, L, C): the short convolution of Mamba, Mamba-2 and Hyena.

    y[t, c] = bias[c] + Σ_{k=0..W-1} weight[c, k] · x[t - (W-1) + k, c]        (x before position 0 is zero)

Shapes: B batch, L length, C channels, W taps (a handful: 3-4).

Decoding keeps the last W inputs in a ring buffer (B, C, W), the input of position p in slot p mod W;
``causal_conv1d_step`` writes one token's input into it and returns that position's output.

``causal_conv1d`` computes it as W shifted multiply-adds on the (B, L, C) layout the mixers hold: no transposes, an
fp32 accumulator, and under ``torch.compile`` one fused element-wise kernel forward and one backward. ATen's
depthwise ``conv1d`` in bf16 (the reference, ``causal_conv1d_ref``) was among the largest non-GEMM kernels of a
Mamba-2 training step on an H200 (docs/results.md, "Where a training step's time goes"): 44 ms of a 500 ms step at
64 × 512 tokens, forward and both backward kernels, plus the transposes around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (B, L, C), weight (C, W), bias (C,) or None -> y (B, L, C) in x's dtype, accumulated in at least float32."""
    _check(x, weight, bias)
    L, W = x.shape[1], weight.shape[1]
    acc = torch.promote_types(x.dtype, torch.float32)
    w = weight.to(acc)
    padded = F.pad(x, (0, 0, W - 1, 0))                                      # (B, W-1+L, C): zeros before t = 0
    y = padded[:, :L].to(acc) * w[:, 0]
    for k in range(1, W):                                                    # tap k reads position t - (W-1) + k
        y = y + padded[:, k:k + L].to(acc) * w[:, k]
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``causal_conv1d`` as ATen's grouped ``conv1d`` on the (B, C, L) layout (the reference)."""
    _check(x, weight, bias)
    W = weight.shape[1]
    padded = F.pad(x.transpose(1, 2), (W - 1, 0))                            # (B, C, W-1+L)
    w = weight.to(x.dtype)[:, None, :]                                       # (C, 1, W): nn.Conv1d's depthwise layout
    return F.conv1d(padded, w, None if bias is None else bias.to(x.dtype), groups=x.shape[2]).transpose(1, 2)


def causal_conv1d_step(x_t: Tensor, buffer: Tensor, position: Tensor, weight: Tensor,
                       bias: Tensor | None = None) -> Tensor:
    """x_t (B, C), the input at ``position`` (a 0-dim integer tensor on the device), with ``buffer`` (B, C, W) the ring
    buffer of the inputs before it -> y_t (B, C). Writes x_t into its slot of ``buffer`` in place; nothing leaves
    the device (a CUDA graph can capture it)."""
    W = buffer.shape[-1]
    buffer.index_copy_(2, (position % W).reshape(1), x_t[..., None].to(buffer.dtype))
    oldest_first = (position + 1 + torch.arange(W, device=buffer.device)) % W  # slots of positions t-W+1 .. t
    y = (buffer.index_select(2, oldest_first) * weight).sum(-1)                # (B, C)
    return y if bias is None else y + bias


def _check(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"causal_conv1d takes x (B, L, C) and weight (C, W): got x {tuple(x.shape)}, weight "
                         f"{tuple(weight.shape)}")
    if bias is not None and bias.shape != (x.shape[2],):
        raise ValueError(f"bias must be (C,) = ({x.shape[2]},), got {tuple(bias.shape)}")
