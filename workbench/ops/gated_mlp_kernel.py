"""The Triton kernel of ``workbench.ops.gated_mlp``: h = act(x W_gᵀ) ⊙ (x W_uᵀ) in one pass over both weights.
Imported only where Triton is installed. Shapes as there (x (M, K), weights (I, K), h (M, I)); K is a
compile-time constant (one model width per model).

One program per (block of BLOCK_M rows, block of BLOCK_I inner channels):
  0. with a norm: the rows' inverse RMS (``norm_linear_kernel.rms_inverse``);
  1. for each block of BLOCK_K input channels: the rows' x (normalised by ``norm_linear_kernel.rms_normed`` with a
     norm), and the channels' rows of W_g and W_u (each weight element read once per row block), multiplied into two
     float32 accumulators (the first blocks of W_g and W_u are loaded before ``dependent_launch.wait_for_inputs``:
     with PDL, while the kernel before runs);
  2. act(gate) · up in float32, rounded once to h's dtype and written.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from workbench.ops.dependent_launch import launch_pdl, wait_for_inputs
from workbench.ops.norm_linear_kernel import rms_inverse, rms_normed

ACT_CODES = {"silu": 0, "gelu_tanh": 1}
BLOCK_M, BLOCK_I, BLOCK_K = 16, 16, 256     # tl.dot needs 16 or more along each side; BLOCK_I, BLOCK_K: the fastest
NUM_WARPS, NUM_STAGES = 4, 3                # at 1 row on an H200 of decode_kernels.py's sweep (docs/results.md)


@triton.jit
def gated_up_kernel(x, w_gate, w_up, out, norm_w, M, I, s_xm, s_gi, s_ui, s_om, eps, K: tl.constexpr,
                    ACT: tl.constexpr, NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
                    BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    m_ok = m < M
    i_ok = i < I
    k = tl.arange(0, BLOCK_K)                                                    # 1. (K a compile-time constant:
    k_ok = k < K                                                                 # one model width per model)
    wg = tl.load(w_gate + i[:, None] * s_gi + k[None, :], mask=i_ok[:, None] & k_ok[None, :], other=0.0)
    wu = tl.load(w_up + i[:, None] * s_ui + k[None, :], mask=i_ok[:, None] & k_ok[None, :], other=0.0)
    wait_for_inputs(PDL)
    if NORM:                                                                     # 0.
        inverse = rms_inverse(x, m, m_ok, s_xm, eps, K, BLOCK_M, BLOCK_K)
    xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    if NORM:
        xb = rms_normed(xb, inverse, norm_w, k, k_ok)
    acc_g = tl.dot(xb.to(wg.dtype), tl.trans(wg), input_precision="ieee")       # (BLOCK_M, BLOCK_I)
    acc_u = tl.dot(xb.to(wu.dtype), tl.trans(wu), input_precision="ieee")
    for k0 in range(BLOCK_K, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        xb = tl.load(x + m[:, None] * s_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            xb = rms_normed(xb, inverse, norm_w, k, k_ok)
        wg = tl.load(w_gate + i[:, None] * s_gi + k[None, :], mask=i_ok[:, None] & k_ok[None, :], other=0.0)
        wu = tl.load(w_up + i[:, None] * s_ui + k[None, :], mask=i_ok[:, None] & k_ok[None, :], other=0.0)
        acc_g += tl.dot(xb.to(wg.dtype), tl.trans(wg), input_precision="ieee")
        acc_u += tl.dot(xb.to(wu.dtype), tl.trans(wu), input_precision="ieee")
    if ACT == 0:                                                                 # 2. SiLU
        gate = acc_g * tl.sigmoid(acc_g)
    else:                                                                        # GELU, tanh form:
        z = 0.7978845608028654 * (acc_g + 0.044715 * acc_g * acc_g * acc_g)    # ½x(1 + tanh z) = x·σ(2z)
        gate = acc_g * tl.sigmoid(2.0 * z)
    h = gate * acc_u
    tl.store(out + m[:, None] * s_om + i[None, :], h.to(out.dtype.element_ty), mask=m_ok[:, None] & i_ok[None, :])


def launch(x: Tensor, w_gate: Tensor, w_up: Tensor, out: Tensor, act: str, norm_weight: Tensor | None = None,
           eps: float = 1e-6) -> None:
    """Write act(x W_gᵀ) ⊙ (x W_uᵀ) into ``out`` (M, I), x RMS-normalised first where ``norm_weight`` (K,) is given;
    x (M, K) and the weights (I, K) with contiguous rows."""
    M, K = x.shape
    I = w_gate.shape[0]
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(I, BLOCK_I))
    pdl = launch_pdl(x.device)
    gated_up_kernel[grid](x, w_gate, w_up, out, w_gate if norm_weight is None else norm_weight, M, I, x.stride(0),
                          w_gate.stride(0), w_up.stride(0), out.stride(0), eps, K=K, ACT=ACT_CODES[act],
                          NORM=norm_weight is not None, BLOCK_M=BLOCK_M, BLOCK_I=BLOCK_I, BLOCK_K=BLOCK_K,
                          PDL=pdl, num_warps=NUM_WARPS, num_stages=NUM_STAGES, launch_pdl=pdl)
