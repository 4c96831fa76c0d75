"""A linear layer whose output rows are padded to a multiple of 8 features for the GEMM, then sliced back.

cuBLAS and CUTLASS pick vectorised (16-byte) kernels only when every operand's leading dimension is a multiple of
8 bf16 elements. A Mamba-2 in_proj has 2E + 2GN + H outputs (1,545 for the default teacher's width: E = 576,
G·N = 192, H = 9), so its forward GEMM and both backward GEMMs ran as ``align1`` kernels, 15% of a training step on
an H200 (docs/results.md). Padding the weight with zero rows costs one small copy of the weight per call; the
result is the same numbers (the extra outputs are dropped), and the gradient of the padding rows is never used.

Shapes: (..., K) input, weight (M, K), bias (M,) -> (..., M).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

MULTIPLE = 8  # output features are padded to a multiple of this (16 bytes of bf16)


def aligned_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, multiple: int = MULTIPLE) -> Tensor:
    """F.linear(x, weight, bias), with the GEMM's output width padded to a multiple of ``multiple``."""
    M = weight.shape[0]
    pad = -M % multiple
    if pad == 0:
        return F.linear(x, weight, bias)
    weight = F.pad(weight, (0, 0, 0, pad))                                   # (M + pad, K): zero rows
    bias = None if bias is None else F.pad(bias, (0, pad))
    return F.linear(x, weight, bias)[..., :M]


def aligned_linear_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None, multiple: int = MULTIPLE) -> Tensor:
    """The reference: plain F.linear (``multiple`` ignored)."""
    return F.linear(x, weight, bias)


class AlignedLinear(nn.Linear):
    """nn.Linear (same parameters, same state-dict names) whose forward is ``aligned_linear``."""

    def forward(self, x: Tensor) -> Tensor:
        return aligned_linear(x, self.weight, self.bias)
