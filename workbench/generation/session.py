"""A decoding session: one model, one batch, its attention cache and every mixer layer's state.

    session = Session(model, max_length=L + new, static=False)
    logits = session.forward(ids)          # (B, keep, V) of the last ``keep`` positions; moves on by L tokens
    session.checkpoint(); ...; session.rollback(length)
    session.restart()                      # empty again, for the next prompt of the same batch

The model is driven through its own Hugging Face forward (so positions, masks and rotary embeddings are its own).
Kept attention layers use a transformers cache (``DynamicCache`` eagerly, ``StaticCache`` for a CUDA graph) and,
during the session's forward, the engine's own attention for decode steps (``workbench.generation.attention``: the
same speed on every transformers version; ``engine_attention=False`` keeps the version's own). Each
mixer layer's ``MixerAttention`` keeps its ``MixerLayerState`` for that cache (``workbench.students.adapter``): the
prompt goes through ``Mixer.prefill``, every later token through ``Mixer.step``, several later tokens at once
through ``Mixer.extend``, and its token count is recorded in the cache, so the cache's length (hence positions and
mask sizes) is right whichever layers are mixers. The session reaches those states through the cache
(``MixerAttention.state_for``) as ``mixers`` (layer index -> state).

Going back. A session can mark a point (``checkpoint``) and later go back to any length after it (``rollback``): the
attention cache is cropped, and each mixer layer's state is restored from its snapshot and carried over the layer
inputs it recorded since, up to the kept length, by ``Mixer.extend``. Speculative decoding uses this
(``workbench.generation.speculative``).

Prompts in a batch have one length (no padding): mixers take no attention mask, so pad tokens would enter their state.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache, StaticCache

from workbench.generation.attention import engine_attention
from workbench.students.adapter import MixerLayerState, mixer_attentions
from workbench.teachers.wrapper import Teacher


def unwrap(model) -> nn.Module:
    """The Hugging Face model of a workbench Teacher, or the model itself."""
    return model.model if isinstance(model, Teacher) else model


def _forward_parameters(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def cache_keyword(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes its cache: "cache" in newer transformers (which deprecate
    "past_key_values"), else "past_key_values"."""
    return "cache" if "cache" in _forward_parameters(unwrap(model)) else "past_key_values"


class Session:
    """Decoding state of one model for one batch: the attention cache and every mixer layer's state.

    ``forward(ids)`` feeds (B, L) new tokens and returns the logits of the last ``keep`` of them. ``static``: a
    preallocated ``StaticCache`` of ``max_length`` tokens (what a CUDA graph needs), else a ``DynamicCache``.
    ``engine_attention``: decode steps of kept attention layers through ``workbench.generation.attention`` (an sdpa
    model), else through the model's own attention implementation."""

    def __init__(self, model: nn.Module, max_length: int | None = None, static: bool = False,
                 engine_attention: bool = True):
        self.model = unwrap(model)
        config = self.model.config
        if static:
            if max_length is None:
                raise ValueError("a static cache needs max_length (prompt + new tokens)")
            self.cache = StaticCache(config=config, max_cache_len=max_length)
        else:
            self.cache = DynamicCache(config=config)
        self.mixers: dict[int, MixerLayerState] = {i: attention.state_for(self.cache)
                                                   for i, attention in mixer_attentions(self.model).items()}
        self.engine_attention = engine_attention
        self.length = 0              # tokens consumed
        self.mark = 0                # length at the last checkpoint
        params = _forward_parameters(self.model)
        self.cache_argument = cache_keyword(self.model)
        self.keeps_logits = "logits_to_keep" in params
        self.takes_cache_position = "cache_position" in params

    def model_kwargs(self) -> dict:
        return {self.cache_argument: self.cache, "use_cache": True}

    def attention(self):
        """Context for a forward of the model in this session (the session's attention for its kept layers)."""
        return engine_attention(self.model, self.engine_attention)

    def forward(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """ids (B, L) -> logits (B, keep, V) of the last ``keep`` positions; the session moves on by L tokens."""
        kwargs = self.model_kwargs()
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        with self.attention():
            logits = self.model(input_ids=ids, **kwargs).logits[:, -keep:]
        self.length += ids.shape[1]
        return logits

    def restart(self) -> None:
        """Forget every token, to read a new prompt of the same batch: the cache is emptied in place (a static cache
        keeps its tensors, so a step captured on it stays valid) and every mixer layer's next call is a prefill."""
        self.cache.reset()
        for m in self.mixers.values():
            m.restart()
        self.length = self.mark = 0

    def state_bytes(self) -> int:
        """Bytes held by the mixer layers' states (what a decode step reads of them)."""
        return sum(m.nbytes() for m in self.mixers.values())

    # ---- going back ----------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Remember the present, so that ``rollback`` can return to any length from here on."""
        self.mark = self.length
        for m in self.mixers.values():
            m.checkpoint()

    def rollback(self, length: int) -> None:
        """Return to ``length`` tokens (between the checkpoint and now): crop the attention cache, rebuild the
        mixer states from the checkpoint's snapshot by running ``Mixer.extend`` over the recorded inputs of the kept
        tokens."""
        if not self.mark <= length <= self.length:
            raise ValueError(f"can roll back only to a length between the checkpoint ({self.mark}) and now "
                             f"({self.length}), got {length}")
        removed = self.length - length
        if removed:
            self.cache.crop(-removed)
        for m in self.mixers.values():
            m.rollback(length)
        self.length = length
