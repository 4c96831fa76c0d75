"""The Triton kernel of ``workbench.ops.norm_linear``: y = (RMSNorm(x) ⊙ w) Wᵀ (+ b) in one pass over W, and the
norm's two helpers, which ``workbench.ops.gated_mlp_kernel`` uses for its own normalised input. Imported only where
Triton is installed. Shapes as there (x (M, K), w (K,), W (N, K), y (M, N)); K is a compile-time constant (one model
width per model).

One program per (block of BLOCK_M rows, block of BLOCK_N outputs):
  1. ``rms_inverse``: 1 / sqrt(mean(x²) + eps) of each of its rows, in float32, from one pass over the row (K is
     a few hundred to a few thousand numbers: the rows are re-read by every program, the weight once);
  2. for each block of BLOCK_K input channels: ``rms_normed`` rounds x · inverse to x's dtype and multiplies it by w
     as transformers' RMSNorm does, then the product with the block of W accumulates in float32 (the first block of W
     is loaded before ``dependent_launch.wait_for_inputs``: with PDL, while the kernel before runs);
  3. the bias, if any, and one rounding to y's dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from workbench.ops.dependent_launch import launch_pdl, wait_for_inputs

BLOCK_M, BLOCK_N, BLOCK_K = 16, 32, 256     # tl.dot needs 16 or more along each side; BLOCK_N, BLOCK_K: the fastest
NUM_WARPS, NUM_STAGES = 4, 3                # at 1 row on an H200 of decode_kernels.py's sweep (docs/results.md)


@triton.jit
def rms_inverse(x, m, m_ok, s_xm, eps, K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Step 1: (BLOCK_M,) float32 inverse RMS of rows m of x."""
    total = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & (k < K)[None, :],
                     other=0.0).to(tl.float32)
        total += tl.sum(xb * xb, axis=1)
    return 1.0 / tl.sqrt(total / K + eps)


@triton.jit
def rms_normed(xb, inverse, norm_w, k, k_ok):
    """Step 2's input: a (BLOCK_M, BLOCK_K) block of x normalised by its rows' ``inverse``, rounded to x's dtype,
    times w (k) and rounded again: transformers' RMSNorm, ``weight * (x * rsqrt(...)).to(dtype)``."""
    normed = (xb.to(tl.float32) * inverse[:, None]).to(xb.dtype)
    w = tl.load(norm_w + k, mask=k_ok, other=0.0)
    return (normed.to(tl.float32) * w.to(tl.float32)[None, :]).to(xb.dtype)


@triton.jit
def norm_linear_kernel(x, norm_w, weight, bias, out, M, N, s_xm, s_wn, s_om, eps, K: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    n_ok = n < N
    k = tl.arange(0, BLOCK_K)
    k_ok = k < K
    wb = tl.load(weight + n[:, None] * s_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    wait_for_inputs(PDL)
    inverse = rms_inverse(x, m, m_ok, s_xm, eps, K, BLOCK_M, BLOCK_K)                 # 1.
    xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    xn = rms_normed(xb, inverse, norm_w, k, k_ok)
    acc = tl.dot(xn.to(wb.dtype), tl.trans(wb), input_precision="ieee")            # 2. (BLOCK_M, BLOCK_N)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        xn = rms_normed(xb, inverse, norm_w, k, k_ok)
        wb = tl.load(weight + n[:, None] * s_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(xn.to(wb.dtype), tl.trans(wb), input_precision="ieee")
    if HAS_BIAS:                                                                    # 3.
        acc += tl.load(bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out + m[:, None] * s_om + n[None, :], acc.to(out.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def launch(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None, out: Tensor) -> None:
    """Write (RMSNorm(x) ⊙ w) Wᵀ (+ b) into ``out`` (M, N); x (M, K) and W (N, K) with contiguous rows."""
    M, K = x.shape
    N = weight.shape[0]
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    pdl = launch_pdl(x.device)
    norm_linear_kernel[grid](x, norm_weight, weight, norm_weight if bias is None else bias, out, M, N, x.stride(0),
                             weight.stride(0), out.stride(0), eps, K=K, HAS_BIAS=bias is not None, BLOCK_M=BLOCK_M,
                             BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PDL=pdl, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
                             launch_pdl=pdl)
