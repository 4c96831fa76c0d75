"""The Triton kernel of ``workbench.ops.linear_residual``: out = r + x Wᵀ in one pass over W, the residual added in
the epilogue instead of by a kernel of its own. Imported only where Triton is installed. Shapes as there (r (M, N),
x (M, K), W (N, K)); K is a compile-time constant (one projection width per model).

One program per (block of BLOCK_M rows, block of BLOCK_N outputs):
  1. for each block of BLOCK_K input channels, the product of x's block with W's block accumulates in float32 (the
     first block of W is loaded before ``dependent_launch.wait_for_inputs``: with PDL, while the kernel before runs);
  2. the product is rounded to the output's dtype (what the projection alone returns), then the residual is added in
     float32 and the sum rounded once more: the two roundings of the layer's projection and its add.
A decode step's projections that end a branch have few outputs (the model width: 576 for the default teacher), so
BLOCK_N is small to give the GPU's SMs more programs.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from workbench.ops.dependent_launch import launch_pdl, wait_for_inputs

BLOCK_M, BLOCK_N, BLOCK_K = 16, 16, 256     # tl.dot needs 16 or more along each side; BLOCK_N, BLOCK_K: the fastest
NUM_WARPS, NUM_STAGES = 4, 3                # at 1 row on an H200 of decode_kernels.py's sweep (docs/results.md)


@triton.jit
def linear_residual_kernel(x, weight, residual, out, M, N, s_xm, s_wn, s_rm, s_om, K: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    n_ok = n < N
    k = tl.arange(0, BLOCK_K)
    k_ok = k < K
    wb = tl.load(weight + n[:, None] * s_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    wait_for_inputs(PDL)
    xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    acc = tl.dot(xb.to(wb.dtype), tl.trans(wb), input_precision="ieee")            # 1. (BLOCK_M, BLOCK_N)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        wb = tl.load(weight + n[:, None] * s_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(xb.to(wb.dtype), tl.trans(wb), input_precision="ieee")
    mn_ok = m_ok[:, None] & n_ok[None, :]                                           # 2.
    r = tl.load(residual + m[:, None] * s_rm + n[None, :], mask=mn_ok, other=0.0)
    product = acc.to(out.dtype.element_ty).to(tl.float32)
    tl.store(out + m[:, None] * s_om + n[None, :], (r.to(tl.float32) + product).to(out.dtype.element_ty), mask=mn_ok)


def launch(residual: Tensor, x: Tensor, weight: Tensor, out: Tensor) -> None:
    """Write r + x Wᵀ into ``out`` (M, N); r (M, N), x (M, K) and W (N, K) with contiguous rows."""
    M, K = x.shape
    N = weight.shape[0]
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    pdl = launch_pdl(x.device)
    linear_residual_kernel[grid](x, weight, residual, out, M, N, x.stride(0), weight.stride(0), residual.stride(0),
                                 out.stride(0), K=K, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                                 PDL=pdl, num_warps=NUM_WARPS, num_stages=NUM_STAGES, launch_pdl=pdl)
