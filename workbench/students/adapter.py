"""The module that stands where a decoder layer's attention stood and runs a mixer instead (``MixerAttention``), and
its decoding state per cache (``MixerLayerState``).

The swap. Each replaced attention module becomes a ``MixerAttention``: it takes the call the decoder layer makes to
its attention (hidden_states, position_embeddings, attention_mask, the cache, ...; only hidden_states is used) and
returns what the layer unpacks (``(y, None)`` in transformers 5; the count is read from one probe forward pass
through the teacher's own code at build time, not assumed). The student's config records the spec (mixer name,
mixer config, replaced and kept layers) under ``workbench_student``; ``load_student`` rebuilds the swapped
structure from it before loading the safetensors weights.

Decoding with a cache (transformers' ``generate()`` and ``workbench.generation``, alike). Kept attention layers use
the cache as usual. A mixer layer keeps one ``MixerLayerState`` per cache object (``state_for(cache)``; weak keys,
so it goes with the cache): the first call runs ``Mixer.prefill`` (one parallel pass that also returns the
recurrent state), a later call of one token runs ``Mixer.step``, and a later call of several tokens (a further
prompt chunk, drafted tokens to verify) runs ``Mixer.extend``. The layer records its token count in the cache
(a (B, 1, L, 1) marker through ``cache.update``; on an allocated static layer, its length counter alone) so the
cache's sequence length, positions and masks stay right for the attention layers. The state can mark a point
(``checkpoint``: a snapshot, then the layer inputs are recorded) and go back to any length after it (``rollback``:
the snapshot carried over the kept inputs by ``extend``).

A cache that no longer matches the state (cropped by assisted decoding, shared with another model) raises; a cache
that holds no tokens again (reset for reuse) starts the state over. A static (compileable) cache is not counted: its
count lives on the device, reading it would wait for the device (and cannot happen inside a CUDA-graph capture), and
some transformers versions count non-zero keys, which a marker is not; its state is trusted. A reordered cache (beam
search) cannot be detected: the mixers' states are not reordered with it, so beam search is not supported. Mixers
take no attention mask: every position, padding included, enters their state, so pad on the right (or not at all);
left-padded batched generation lets pad tokens into the mixer layers.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, StaticLayer

from workbench.students.base import Mixer
from workbench.teachers import anatomy


def clone_state(state: Any) -> Any:
    """A copy of a mixer state (a dict of tensors; other values are kept as they are)."""
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}


@dataclass(eq=False)
class MixerLayerState:
    """One mixer layer's decoding state for one cache (compared by identity)."""
    mixer: Mixer
    state: Any = None                                         # the mixer's state after ``seen`` tokens; None: none yet
    seen: int = 0                                             # tokens this layer has consumed
    saved: Any = None                                         # snapshot at the checkpoint
    mark: int = 0                                             # ``seen`` at the checkpoint
    inputs: list[torch.Tensor] = field(default_factory=list)  # (B, L_i, D) layer inputs since the checkpoint
    recording: bool = False                                   # whether inputs are recorded (after a checkpoint)
    verifying: bool = False                                   # calls verify drafted tokens (``Mixer.verify``): the
                                                              # state stays, ``accept`` moves it on
    pending: Any = None                                       # what the last verifying call left for ``accept``

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> y (B, L, D): ``prefill`` for the first call, then ``step`` for one token and ``extend`` for
        several (a later prompt chunk, or drafted tokens to verify); while ``verifying``, ``Mixer.verify``."""
        if self.verifying:
            if self.state is None:
                raise ValueError("a verification pass needs the prompt read first (the mixer has no state yet)")
            y, self.pending = self.mixer.verify(x, self.state)
            return y
        if self.state is None:
            y, self.state = self.mixer.prefill(x)
        elif x.shape[1] == 1:
            y_t, self.state = self.mixer.step(x[:, 0], self.state)   # (B, D)
            y = y_t[:, None]
        else:
            y, self.state = self.mixer.extend(x, self.state)
        if self.recording:
            self.inputs.append(x)
        self.seen += x.shape[1]
        return y

    def accept(self, n: int) -> None:
        """After a verifying call: the state moves on by its first ``n`` tokens (``Mixer.accept``)."""
        self.state = self.mixer.accept(self.state, self.pending, n)
        self.seen += n

    def checkpoint(self) -> None:
        """Remember the present, so that ``rollback`` can return to any length from here on."""
        self.saved = clone_state(self.state) if self.state is not None else None
        self.mark, self.inputs, self.recording = self.seen, [], True

    def rollback(self, length: int) -> None:
        """Return to ``length`` tokens, between the checkpoint and now (``Session.rollback`` checks it): the
        checkpoint's snapshot, carried over the recorded inputs of the kept tokens by one ``Mixer.extend``
        (``prefill`` if there was no state yet). Recording stops."""
        if length != self.seen:
            state = self.saved
            kept = torch.cat(self.inputs, dim=1)[:, : length - self.mark] if self.inputs else None  # (B, L_kept, D)
            if kept is not None and kept.shape[1]:
                _, state = self.mixer.prefill(kept) if state is None else self.mixer.extend(kept, state)
            self.state, self.seen = state, length
        self.saved, self.inputs, self.recording = None, [], False

    def restart(self) -> None:
        """Forget everything: the next call is a prefill."""
        self.state, self.seen, self.saved, self.mark, self.inputs, self.recording = None, 0, None, 0, [], False
        self.verifying, self.pending = False, None

    def nbytes(self) -> int:
        """Bytes held by the state's tensors (what a decode step reads of them)."""
        if self.state is None:
            return 0
        return sum(v.nbytes for v in self.state.values() if torch.is_tensor(v))


class MixerAttention(nn.Module):
    """Stands where a decoder layer's attention module stood and runs a mixer instead.

    ``forward(hidden_states, *args, **kwargs)`` accepts the layer's attention call; only hidden_states (B, L, D), a
    cache (any argument that is a transformers ``Cache``) and ``cache_position`` (handed on to the cache, as older
    transformers' static caches need it) are read. It returns ``outputs`` values as the teacher's attention did (the
    mixer output, then Nones for the attention weights), or a bare tensor if that count is 0.
    """

    def __init__(self, mixer: Mixer, layer_idx: int, outputs: int = 2):
        super().__init__()
        self.mixer = mixer
        self.layer_idx = layer_idx  # this layer's index in the cache, like the attention module's
        self.outputs = outputs      # how many values the teacher's attention returned (0: a bare tensor)
        self._states: weakref.WeakKeyDictionary[Cache, MixerLayerState] = weakref.WeakKeyDictionary()

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, outputs={self.outputs}"

    def state_for(self, cache: Cache) -> MixerLayerState:
        """This layer's decoding state for ``cache`` (a new, empty one the first time)."""
        if cache not in self._states:
            self._states[cache] = MixerLayerState(self.mixer)
        return self._states[cache]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        caches = [a for a in (*args, *kwargs.values()) if isinstance(a, Cache)]
        if caches:
            cache_kwargs = {k: v for k, v in kwargs.items() if k == "cache_position"}
            y = self._with_cache(hidden_states, caches[0], cache_kwargs)                      # (B, L, D)
        else:
            y = self.mixer(hidden_states)
        return (y, *[None] * (self.outputs - 1)) if self.outputs else y

    def _with_cache(self, x: torch.Tensor, cache: Cache, cache_kwargs: dict) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D), continuing from what this layer saw through ``cache``."""
        layer = self.state_for(cache)
        if not cache.is_compileable:                               # a dynamic cache: its count is a Python int
            past = cache.get_seq_length(self.layer_idx)
            if past == 0 and layer.seen:                           # emptied for reuse: start over
                layer.restart()
            elif past != layer.seen:
                raise ValueError(
                    f"layer {self.layer_idx} is a mixer and its recurrent state does not match the cache ({past} "
                    f"cached tokens, state after {layer.seen} tokens): a cache cannot be cropped, reordered or shared "
                    f"with another model once a mixer has read it; start a new cache")
        y = layer.run(x)
        self._count(cache, x, cache_kwargs)
        return y

    def _count(self, cache: Cache, x: torch.Tensor, cache_kwargs: dict) -> None:
        """Move this layer's length in ``cache`` on by the L tokens of x (B, L, D) (transformers reads it to place
        positions, and a static cache's counters are what speculative decoding restores). A static layer already
        allocated has its counter moved on alone, one tiny kernel (a decode step would otherwise write a marker into
        the layer and its counter through ``update``: five); any other layer takes a (B, 1, L, 1) marker through
        ``update``."""
        held = cache.layers[self.layer_idx] if self.layer_idx < len(cache.layers) else None   # a dynamic cache grows
        if type(held) is StaticLayer and held.is_initialized:
            held.cumulative_length.add_(x.shape[1])
            return
        marker = x.new_zeros(x.shape[0], 1, x.shape[1], 1)          # (B, 1, L, 1): counts L tokens for this layer
        cache.update(marker, marker, self.layer_idx, cache_kwargs)


def mixer_attentions(model: nn.Module) -> dict[int, MixerAttention]:
    """Layer index -> the ``MixerAttention`` in that layer, for every replaced layer."""
    layers = anatomy.decoder_layers(model)
    found = {i: anatomy.attention_of(layer)[1] for i, layer in enumerate(layers)}
    return {i: module for i, module in found.items() if isinstance(module, MixerAttention)}


def student_mixers(student: nn.Module) -> dict[int, Mixer]:
    """Layer index -> the mixer in that layer, for every replaced layer."""
    return {i: module.mixer for i, module in mixer_attentions(student).items()}
