"""The module that stands where a decoder layer's attention stood and runs a mixer instead (``MixerAttention``).

The swap. Each replaced attention module becomes a ``MixerAttention``: it takes the call the decoder layer makes to
its attention (hidden_states, position_embeddings, attention_mask, the cache, ...; only hidden_states is used) and
returns what the layer unpacks (``(y, None)`` in transformers 5; the count is read from one probe forward pass
through the teacher's own code at build time, not assumed). The student's config records the spec (mixer name,
mixer config, replaced and kept layers) under ``workbench_student``; ``load_student`` rebuilds the swapped
structure from it before loading the safetensors weights.

Decoding with a cache (``generate()``). Kept attention layers use the normal KV cache. A mixer layer keeps its
recurrent state in a per-layer store keyed by the cache object, and records its token count in the cache (through
``cache.update`` with a (B, 1, L, 1) marker) so the cache's sequence length, positions and masks stay right for the
attention layers. A prefill runs the parallel ``forward`` and remembers its input; the first decode step then brings
the state up to date with ``step`` over those inputs, and every later token costs one ``step``. A cropped cache
(assisted or speculative decoding) no longer matches the stored state, and that raises. A reordered cache (beam
search) cannot be detected: the mixers' states are not reordered with it, so beam search is not supported.
Mixers take no attention mask: every position, padding included, enters their state, so pad on the right (or not
at all); left-padded batched generation lets pad tokens into the mixer layers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from workbench.students.base import Mixer
from workbench.teachers import anatomy


@dataclass
class _DecodeState:
    """A mixer layer's decoding progress for one cache."""
    seen: int = 0                        # tokens this layer has consumed through the cache
    state: Any = None                    # the mixer's recurrent state after ``seen - len(pending)`` tokens
    pending: torch.Tensor | None = None  # (B, L', D) inputs not yet folded into ``state`` (the prefill's)


class MixerAttention(nn.Module):
    """Stands where a decoder layer's attention module stood and runs a mixer instead.

    ``forward(hidden_states, *args, **kwargs)`` accepts the layer's attention call; only hidden_states (B, L, D)
    and a cache (any argument that is a transformers ``Cache``) are read. It returns ``outputs`` values as the
    teacher's attention did (the mixer output, then Nones for the attention weights), or a bare tensor if that
    count is 0.
    """

    def __init__(self, mixer: Mixer, layer_idx: int, outputs: int = 2):
        super().__init__()
        self.mixer = mixer
        self.layer_idx = layer_idx  # this layer's index in the cache, like the attention module's
        self.outputs = outputs      # how many values the teacher's attention returned (0: a bare tensor)
        self._decoding: weakref.WeakKeyDictionary[Cache, _DecodeState] = weakref.WeakKeyDictionary()

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, outputs={self.outputs}"

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        caches = [a for a in (*args, *kwargs.values()) if isinstance(a, Cache)]
        y = self._with_cache(hidden_states, caches[0]) if caches else self.mixer(hidden_states)   # (B, L, D)
        return (y, *[None] * (self.outputs - 1)) if self.outputs else y

    def _with_cache(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D), continuing from what this layer saw through ``cache``."""
        past = cache.get_seq_length(self.layer_idx)
        progress = self._decoding.get(cache) if past else None
        if past and (progress is None or progress.seen != past):
            raise ValueError(
                f"layer {self.layer_idx} is a mixer and its recurrent state does not match the cache ({past} cached "
                f"tokens, state after {progress.seen if progress else 'no'} tokens): a cache cannot be cropped, "
                f"reordered or shared with another model once a mixer has read it; start a new cache")
        if progress is None:                                   # prefill: parallel forward, state built on demand
            y = self.mixer(x)
            progress = _DecodeState(pending=x.detach())
            self._decoding[cache] = progress
        else:                                                  # continuation: one recurrent step per token
            state = self._caught_up(progress, x)
            outputs = []
            for t in range(x.shape[1]):
                y_t, state = self.mixer.step(x[:, t], state)   # (B, D)
                outputs.append(y_t)
            progress.state = state
            y = torch.stack(outputs, dim=1)                    # (B, L, D)
        marker = x.new_zeros(x.shape[0], 1, x.shape[1], 1)     # (B, 1, L, 1): counts L tokens for this layer
        cache.update(marker, marker, self.layer_idx)
        progress.seen = past + x.shape[1]
        return y

    def _caught_up(self, progress: _DecodeState, x: torch.Tensor) -> Any:
        """The recurrent state after every input seen so far (stepping through the prefill's inputs once)."""
        state = progress.state
        if state is None:
            state = self.mixer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if progress.pending is not None:
            for t in range(progress.pending.shape[1]):
                _, state = self.mixer.step(progress.pending[:, t], state)
            progress.pending = None
        return state


def student_mixers(student: nn.Module) -> dict[int, Mixer]:
    """Layer index -> the mixer in that layer, for every replaced layer."""
    layers = anatomy.decoder_layers(student)
    found = {i: anatomy.attention_of(layer)[1] for i, layer in enumerate(layers)}
    return {i: module.mixer for i, module in found.items() if isinstance(module, MixerAttention)}
