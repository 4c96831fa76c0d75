"""The engine's own attention for decode steps, the same on every transformers version.

A Hugging Face model's attention layers call the function its config names (``config._attn_implementation``,
looked up in transformers' ``AttentionInterface``); most models here run "sdpa". How transformers' sdpa function
decodes with grouped-query heads depends on its version: older ones copy every cached key and value once per query
head before each step (``repeat_kv``), newer ones pack the query heads of a group instead. The engine registers one
more implementation, ``ENGINE_ATTENTION``, and switches an sdpa model to it while a ``Session`` drives the model
(``engine_attention``):

- a step of a few new positions (one per decode step; a handful when speculative decoding verifies a draft) with a
  mask, or a single position, runs ``workbench.ops.decode_attention`` (the cache read once per group of query
  heads, no copy: on CUDA split over many programs by Triton kernels, flash-decoding; elsewhere the query heads of a
  group as rows of one fused attention call);
- everything else (the prompt's prefill, dropout, position biases, soft-capping) is transformers' own sdpa function,
  unchanged.

Masks are transformers' sdpa masks (the same function is registered for the new name), so padding, sliding windows
and a static cache's unwritten positions are hidden exactly as under sdpa. The model's own implementation is restored
when the session's forward (or the capture of its CUDA graph step) returns, so a model used elsewhere (training,
``model.generate``) runs as it was loaded. Models not on sdpa (eager, flash, flex) are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from workbench.ops.decode_attention import decode_attention

ENGINE_ATTENTION = "workbench_decode"   # the name the engine's attention is registered under
MAX_QUERY_POSITIONS = 16                # steps of at most this many new positions take the grouped path; a
                                        # longer one (a prefill) is a few large matmuls, where sdpa's kernels win


def engine_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """An attention function of transformers' interface: query (B, H, Lq, E), key and value (B, Hkv, S, E), the
    mask from ``sdpa_mask``; returns ((B, Lq, H, E), None). Decode-sized steps go through ``decode_attention``, the
    rest through transformers' sdpa function (see the module docstring)."""
    Lq = query.shape[2]
    plain = (dropout == 0.0 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
             and kwargs.get("s_aux") is None and not kwargs.get("output_attentions", False))
    fits = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1)
    # Without a mask sdpa would make a step of several positions causal: only a single position needs none.
    if plain and fits and Lq <= MAX_QUERY_POSITIONS and (attention_mask is not None or Lq == 1):
        return decode_attention(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def register() -> None:
    """Register ``ENGINE_ATTENTION`` with transformers (the attention function and, as the mask function,
    transformers' own ``sdpa_mask``). Idempotent."""
    if ENGINE_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ENGINE_ATTENTION, engine_attention_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ENGINE_ATTENTION, sdpa_mask)


def takes_engine_attention(model: nn.Module) -> bool:
    """Whether ``engine_attention`` switches ``model``: its attention implementation is sdpa (or already ours)."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", ENGINE_ATTENTION)


@contextlib.contextmanager
def engine_attention(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While active, an sdpa ``model`` (a Hugging Face model) attends through ``engine_attention_forward``; any other
    model, or ``enabled=False``, is unchanged."""
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if not enabled or previous != "sdpa":
        yield
        return
    register()
    config._attn_implementation = ENGINE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
