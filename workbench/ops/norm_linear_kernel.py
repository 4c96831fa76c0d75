"""The Triton kernel of ``workbench.ops.norm_linear``: y = (RMSNorm(x) ⊙ w) Wᵀ (+ b) in one pass over W, and the
norm's two helpers, which ``workbench.ops.gated_mlp_kernel`` uses for its own normalised input. Imported only where
Triton is installed. Shapes as there (x (M, K), w (K,), W (N, K), y (M, N)); K is a compile-time constant (one model
width per model).

One program per (block of BLOCK_M rows, block of BLOCK_N outputs):
  1. ``rms_inverse``: 1 / sqrt(mean(x²) + eps) of each of its rows, in float32, from one pass over the row (K is
     a few hundred to a few thousand numbers: the rows are re-read by every program, the weight once);
  2. for each block of BLOCK_K input channels: ``rms_normed`` rounds x · inverse to x's dtype and multiplies it by w
     as transformers' RMSNorm does, then the product with the block of W accumulates in float32;
  3. the bias, if any, and one rounding to y's dtype.

Step 2's product of a block of rows with a block of W is ``block_product``: ``tl.dot`` (tensor cores, 16 rows or
more), or for a few rows (up to ``GEMV_ROWS``) products summed along K in float32, which lets a program take fewer
outputs (``GEMV_BLOCK_N``) so that more programs share a small weight: the GEMV form of a batch-1 decode step.
``GEMV_ROWS`` is 0 (never) until the GEMV form is measured faster on a GPU (``benchmarks/decode_kernels.py``);
``WORKBENCH_GEMV_ROWS=N`` sets it for a whole process (a decode step's profile or bench with the GEMV form).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from torch import Tensor

BLOCK_M, BLOCK_N, BLOCK_K = 16, 32, 64      # tl.dot needs 16 or more along each side
GEMV_BLOCK_N, GEMV_BLOCK_K = 8, 256         # the GEMV form's outputs per program and inputs per step


def _gemv_rows(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"WORKBENCH_GEMV_ROWS={text!r}: give the number of rows up to which the decode kernels take "
                         f"their GEMV form (0: never)")
    return int(text)


GEMV_ROWS = _gemv_rows(os.environ.get("WORKBENCH_GEMV_ROWS", "0"))  # up to this many rows: the GEMV form; 0: never


def gemv_form(M: int, block_m: int, block_n: int, block_k: int) -> tuple[int, int, int, bool]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, DOT) for M rows: the given tiled blocks with ``tl.dot``, or up to ``GEMV_ROWS``
    rows the GEMV form (M rounded up to a power of two, ``GEMV_BLOCK_N`` outputs and ``GEMV_BLOCK_K`` inputs)."""
    if M <= GEMV_ROWS:
        return triton.next_power_of_2(M), GEMV_BLOCK_N, GEMV_BLOCK_K, False
    return block_m, block_n, block_k, True


@triton.jit
def block_product(xb, wb, DOT: tl.constexpr):
    """(BLOCK_M, BLOCK_N) float32 product of a (BLOCK_M, BLOCK_K) block of rows and a (BLOCK_N, BLOCK_K) block of W:
    ``tl.dot`` in IEEE float32, or (DOT false) the elementwise products summed along K."""
    if DOT:
        return tl.dot(xb.to(wb.dtype), tl.trans(wb), input_precision="ieee")
    return tl.sum(xb.to(tl.float32)[:, None, :] * wb.to(tl.float32)[None, :, :], axis=2)


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
                       BLOCK_K: tl.constexpr, DOT: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    n_ok = n < N
    inverse = rms_inverse(x, m, m_ok, s_xm, eps, K, BLOCK_M, BLOCK_K)                 # 1.
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):                                                 # 2.
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        xn = rms_normed(xb, inverse, norm_w, k, k_ok)
        wb = tl.load(weight + n[:, None] * s_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc += block_product(xn, wb, DOT)                                           # (BLOCK_M, BLOCK_N)
    if HAS_BIAS:                                                                    # 3.
        acc += tl.load(bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out + m[:, None] * s_om + n[None, :], acc.to(out.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def launch(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None, out: Tensor) -> None:
    """Write (RMSNorm(x) ⊙ w) Wᵀ (+ b) into ``out`` (M, N); x (M, K) and W (N, K) with contiguous rows."""
    M, K = x.shape
    N = weight.shape[0]
    block_m, block_n, block_k, dot = gemv_form(M, BLOCK_M, BLOCK_N, BLOCK_K)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    norm_linear_kernel[grid](x, norm_weight, weight, norm_weight if bias is None else bias, out, M, N, x.stride(0),
                             weight.stride(0), out.stride(0), eps, K=K, HAS_BIAS=bias is not None, BLOCK_M=block_m,
                             BLOCK_N=block_n, BLOCK_K=block_k, DOT=dot)
