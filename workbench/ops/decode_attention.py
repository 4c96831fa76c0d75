"""Attention of a few new query positions over a key/value cache, with grouped-query heads read in place.

A decode step asks attention for one new position (or a few, when speculative decoding verifies several) against
every cached key and value. With grouped-query attention (GQA: H query heads share Hkv key/value heads, G = H / Hkv
query heads per group; the default teacher has H = 9, Hkv = 3) the usual path first copies every cached key and value
G times (transformers' ``repeat_kv``), so the step reads and writes the whole cache several times per layer: at batch
1024 that copy is most of a decode step. Here the G query heads of one group become G query rows of that group
instead (the "packed GQA" layout that multi-query decoding kernels use):

  1. q (B, H, Lq, E) -> (B, Hkv, G·Lq, E): head h = j·G + g of group j becomes rows g·Lq .. g·Lq + Lq − 1 of j
     (transformers' head order: key/value head j serves query heads j·G .. j·G + G − 1);
  2. the mask (B or 1, 1, Lq, S) -> (B or 1, 1, G·Lq, S): each query position's row repeated for the G heads;
  3. one fused attention call per group (``F.scaled_dot_product_attention``: softmax in float32 inside the kernel)
     over the cache as it is, each key and value read once per group;
  4. back to (B, Lq, H, E), the layout transformers' attention functions return.

The result is the same attention as the reference; only the order of the work changes. Three backends with one
signature, chosen by ``workbench.ops.backend`` (op "decode_attention"), in this order of preference:
  "split"    two Triton kernels (``decode_attention_kernel``): the cache split along its positions over many
             programs, each a partial softmax of the group's query rows, then one program per group combining them
             (flash-decoding): at batch 1 a fused attention call has too few (batch × group) rows to fill the GPU,
             and reads the cache at a fraction of the bandwidth. CUDA with Triton only; no gradient (decoding runs
             without one). ``benchmarks/decode_attention_speed.py`` on an H200 (the default teacher's heads, bf16):
             26 µs against the grouped call's 70 µs at batch 1 over 4,096 positions, and ahead at every shape
             measured up to batch 1,024 (docs/results.md);
  "grouped"  the steps above, on any device;
  "ref"      repeats the keys and values per query head and computes softmax(q kᵀ · scale + mask) v in float32.

Shapes: B batch, H query heads, Hkv key/value heads, G = H / Hkv, Lq new query positions, S cached positions (the
cache's capacity for a static cache: the mask hides what is not written yet), E head width. ``mask``: boolean (True:
attend) or additive float, broadcastable to (B, 1, Lq, S), or None (every cached position visible).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.ops import backend


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> None:
    """ValueError naming the fix for inputs the attention cannot take."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, L, E) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, H, Lq, E = q.shape
    if k.shape[:2] != v.shape[:2] or k.shape[2] != v.shape[2] or k.shape[0] != B or k.shape[3] != E:
        raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} do not fit queries {tuple(q.shape)}: "
                         f"expected (B, Hkv, S, E) with B = {B}, E = {E}")
    if H % k.shape[1]:
        raise ValueError(f"{H} query heads cannot share {k.shape[1]} key/value heads: the query heads must be a "
                         f"multiple of the key/value heads")
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, B)
                             or mask.shape[2] != Lq or mask.shape[3] != k.shape[2]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit queries {tuple(q.shape)} and keys {tuple(k.shape)}: "
                         f"expected (B or 1, 1, {Lq}, {k.shape[2]})")


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v with grouped-query heads: q (B, H, Lq, E), k and v (B, Hkv, S, E), the mask as
    in the module docstring; returns (B, Lq, H, E). ``scale`` defaults to E^-1/2."""
    return backend.select("decode_attention", q.device).fn(q, k, v, mask, scale)


def decode_attention_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                             scale: float | None = None) -> torch.Tensor:
    """``decode_attention`` with each group's query heads as rows of one attention call (steps 1-4)."""
    _check(q, k, v, mask)
    B, H, Lq, E = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    rows = q.reshape(B, Hkv, G * Lq, E)                                          # 1. (B, Hkv, G·Lq, E)
    if mask is not None and G > 1:                                               # 2. (B or 1, 1, G·Lq, S)
        mask = mask.expand(mask.shape[0], G, Lq, mask.shape[3]).reshape(mask.shape[0], 1, G * Lq, mask.shape[3])
    out = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask, scale=scale)  # 3. (B, Hkv, G·Lq, E)
    return out.reshape(B, H, Lq, E).transpose(1, 2).contiguous()                 # 4. (B, Lq, H, E)


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         scale: float | None = None) -> torch.Tensor:
    """``decode_attention`` by the definition: keys and values repeated per query head, float32 throughout."""
    _check(q, k, v, mask)
    B, H, Lq, E = q.shape
    G = H // k.shape[1]
    k = k.repeat_interleave(G, dim=1).float()                                    # (B, H, S, E)
    v = v.repeat_interleave(G, dim=1).float()
    scores = q.float() @ k.transpose(-1, -2) * (E ** -0.5 if scale is None else scale)   # (B, H, Lq, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    out = scores.softmax(-1) @ v                                                 # (B, H, Lq, E)
    return out.transpose(1, 2).to(q.dtype).contiguous()


def split_size(rows: int, S: int, programs: int, block: int) -> int:
    """Cached positions per split: ``block``-sized blocks shared so that ``rows`` (batch × key/value heads) times the
    splits come to about ``programs``, and no split is empty."""
    blocks = math.ceil(S / block)
    return block * math.ceil(blocks / min(blocks, max(1, programs // rows)))


SPLIT_BLOCK = 64        # cached positions per block of the "split" kernels' inner loop


def decode_attention_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           scale: float | None = None, split: int | None = None) -> torch.Tensor:
    """``decode_attention`` as the "split" backend's two Triton kernels (module docstring); ``split``: cached
    positions per program (a multiple of ``SPLIT_BLOCK``; default: enough splits for two programs per multiprocessor,
    ``split_size``)."""
    _check(q, k, v, mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("decode_attention_split has no backward: run it under torch.no_grad() (as decoding does), "
                           "or use decode_attention_grouped where a gradient is needed")
    if not backend.triton_installed():
        raise RuntimeError("decode_attention_split needs Triton (pip install triton); use decode_attention_grouped")
    from workbench.ops.decode_attention_kernel import launch  # imports Triton

    B, H, Lq, E = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if split is None:
        programs = 2 * torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 8
        split = split_size(B * Hkv, S, programs, SPLIT_BLOCK)
    if split % SPLIT_BLOCK:
        raise ValueError(f"split={split}: must be a multiple of {SPLIT_BLOCK} cached positions")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    NS, R = math.ceil(S / split), H // Hkv * Lq
    acc = q.new_empty(B, Hkv, NS, R, E, dtype=torch.float32)
    m, l_sum = (q.new_empty(B, Hkv, NS, R, dtype=torch.float32) for _ in range(2))
    out = q.new_empty(B, Lq, H, E)
    launch(q, k, v, mask, E ** -0.5 if scale is None else scale, split, out, acc, m, l_sum, SPLIT_BLOCK)
    return out


backend.register("decode_attention", backend.Backend(
    "split", decode_attention_split, lambda device: device.type == "cuda" and backend.triton_installed(),
    "flash-decoding: the cache split over many programs, then combined (Triton)"))
backend.register("decode_attention", backend.Backend(
    "grouped", decode_attention_grouped, lambda device: True,
    "query heads of a group as rows of one fused attention call, the cache read once per group"))
backend.register("decode_attention", backend.Backend(
    "ref", decode_attention_ref, lambda device: True, "keys and values repeated per query head, float32"))
