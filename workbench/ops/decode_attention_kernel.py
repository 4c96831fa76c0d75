"""The Triton kernels of ``workbench.ops.decode_attention``'s "split" backend: attention of a few new query positions
over a key/value cache, the cache split along its positions over many programs (flash-decoding, Dao et al. 2023),
grouped-query heads read in place. Imported only where Triton is installed. Shapes as in ``decode_attention``;
R = G·Lq query rows per key/value head (head h = j·G + g of group j, position t: row g·Lq + t), NS splits of
``split`` cached positions each.

  1. ``split_kernel``, one program per (row b, key/value head j, split s): its R query rows against the split's keys
     in blocks of BLOCK_N (the counts of blocks and of splits are compile-time constants: a few kernels per model),
     the running max m, sum l and unnormalised output acc of an online softmax in float32; writes (acc, m, l) of the
     split.
  2. ``combine_kernel``, one program per (b, j): the splits' partial results rescaled to their common max and added,
     acc / l written as (B, Lq, H, E).
Both read only what the kernels just before them wrote (the new keys and values, the partial results), so with
programmatic dependent launch (``dependent_launch``) each waits first and gains only its launch's overlap.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from workbench.ops.dependent_launch import launch_pdl, wait_for_inputs

MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2    # what the mask holds: nothing, True where attended, a float bias


@triton.jit
def split_kernel(q, k, v, mask, acc_out, m_out, l_out,
                 s_qb, s_qh, s_ql, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_mb, s_ml, s_ms,
                 S, Lq, G, E, scale, SPLIT_BLOCKS: tl.constexpr,
                 MASK_KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
                 PDL: tl.constexpr):
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    j = tl.program_id(1)
    s = tl.program_id(2)
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < G * Lq
    head = j * G + rows // Lq
    pos = rows % Lq
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    qb = tl.load(q + b * s_qb + head[:, None] * s_qh + pos[:, None] * s_ql + e[None, :],
                 mask=row_ok[:, None] & e_ok[None, :], other=0.0)                     # (R, E)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_E], tl.float32)
    start = s * SPLIT_BLOCKS * BLOCK_N
    for i in range(0, SPLIT_BLOCKS):                               # the last split's blocks past S load nothing
        cols = start + i * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        kb = tl.load(k + b * s_kb + j * s_kh + cols[:, None] * s_ks + e[None, :],
                     mask=col_ok[:, None] & e_ok[None, :], other=0.0)                 # (N, E)
        scores = tl.dot(qb, tl.trans(kb), input_precision="ieee") * scale           # (R, N) float32
        seen = row_ok[:, None] & col_ok[None, :]
        if MASK_KIND == 1:
            attend = tl.load(mask + b * s_mb + pos[:, None] * s_ml + cols[None, :] * s_ms, mask=seen, other=0)
            seen = seen & (attend != 0)
        if MASK_KIND == 2:
            scores += tl.load(mask + b * s_mb + pos[:, None] * s_ml + cols[None, :] * s_ms, mask=seen,
                              other=0.0).to(tl.float32)
        scores = tl.where(seen, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)                     # a row with nothing seen yet
        p = tl.exp(scores - shift[:, None])
        alpha = tl.exp(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        vb = tl.load(v + b * s_vb + j * s_vh + cols[:, None] * s_vs + e[None, :],
                     mask=col_ok[:, None] & e_ok[None, :], other=0.0)                 # (N, E)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb, input_precision="ieee")
        m_i = m_new
    part = ((b * tl.num_programs(1) + j) * tl.num_programs(2) + s) * (G * Lq) + rows   # (B, Hkv, NS, R) contiguous
    tl.store(acc_out + part[:, None] * E + e[None, :], acc, mask=row_ok[:, None] & e_ok[None, :])
    tl.store(m_out + part, m_i, mask=row_ok)
    tl.store(l_out + part, l_i, mask=row_ok)


@triton.jit
def combine_kernel(acc_in, m_in, l_in, out, s_ob, s_ol, s_oh, Lq, G, E,
                   NS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    b = tl.program_id(0)
    j = tl.program_id(1)
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < G * Lq
    e = tl.arange(0, BLOCK_E)
    e_ok = e < E
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_E], tl.float32)
    for s in range(0, NS):
        part = ((b * tl.num_programs(1) + j) * NS + s) * (G * Lq) + rows
        m_s = tl.load(m_in + part, mask=row_ok, other=float("-inf"))
        l_s = tl.load(l_in + part, mask=row_ok, other=0.0)
        acc_s = tl.load(acc_in + part[:, None] * E + e[None, :], mask=row_ok[:, None] & e_ok[None, :], other=0.0)
        m_new = tl.maximum(m, m_s)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - shift)
        beta = tl.exp(m_s - shift)
        l_sum = l_sum * alpha + l_s * beta
        acc = acc * alpha[:, None] + acc_s * beta[:, None]
        m = m_new
    head = j * G + rows // Lq
    pos = rows % Lq
    tl.store(out + b * s_ob + pos[:, None] * s_ol + head[:, None] * s_oh + e[None, :],
             (acc / tl.where(row_ok, l_sum, 1.0)[:, None]).to(out.dtype.element_ty),   # padding rows: no 0 / 0
             mask=row_ok[:, None] & e_ok[None, :])


def launch(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, split: int, out: Tensor,
           acc: Tensor, m: Tensor, l_sum: Tensor, block_n: int) -> None:
    """Steps 1-2 into ``out`` (B, Lq, H, E); ``acc`` (B, Hkv, NS, R, E), ``m`` and ``l_sum`` (B, Hkv, NS, R)
    contiguous float32 scratch, NS = ceil(S / split), ``split`` a multiple of ``block_n``. q, k and v are read along
    contiguous rows of E."""
    B, H, Lq, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G, NS, R = H // Hkv, acc.shape[2], acc.shape[3]
    kind = MASK_NONE if mask is None else MASK_ADD if mask.dtype.is_floating_point else MASK_BOOL
    s_mb, s_ml, s_ms = (0, 0, 0) if mask is None else \
        (mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(2), mask.stride(3))
    block_r = max(16, triton.next_power_of_2(R))           # tl.dot takes blocks of 16 rows or more
    block_e = max(16, triton.next_power_of_2(E))
    pdl = launch_pdl(q.device)
    split_kernel[(B, Hkv, NS)](
        q, k, v, q if mask is None else mask, acc, m, l_sum,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), s_mb, s_ml, s_ms, S, Lq, G, E, scale,
        SPLIT_BLOCKS=split // block_n, MASK_KIND=kind, BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_E=block_e, PDL=pdl,
        launch_pdl=pdl)
    combine_kernel[(B, Hkv)](
        acc, m, l_sum, out, out.stride(0), out.stride(1), out.stride(2), Lq, G, E,
        NS=NS, BLOCK_R=block_r, BLOCK_E=block_e, PDL=pdl, launch_pdl=pdl)
