"""Choosing the next token from logits: greedy (temperature 0), or sampling with temperature, top-k and top-p.

Sampling draws through an explicit ``torch.Generator`` when one is given, so a seeded generator reproduces a run.
Two functions of one signature choose the same tokens from the same generator state:
- ``next_tokens``: ``torch.multinomial``, which first checks its input (waiting for the device in older torch
  versions, extra passes over the probabilities in newer ones);
- ``race_tokens``: the exponential race ``argmax(p / E)``, E ~ Exp(1), that ``torch.multinomial`` computes for one
  draw, without the checks: no host sync, so a decode step can choose its token inside its CUDA graph.
Both filter with ``filter_logits``, which sorts the vocabulary: the kept set is exactly top-k / top-p. (A partial
sort capped at k candidates would not be: at temperature 1 the default teacher's 0.95-nucleus often holds more than a
thousand tokens, at times several thousand.)
Shapes: B batch, V vocabulary.
"""

from __future__ import annotations

import torch


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (or None for no limit), got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """logits (B, V) with every token outside the top k, and outside the smallest set whose probability reaches
    top_p, set to -inf. The most likely token always survives."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]                        # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs                                        # mass of the better tokens
        drop_sorted = before >= top_p                                            # the first token is never dropped
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> tokens (B,): the argmax for temperature 0, else a draw from softmax(filtered logits / T)."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(scaled.softmax(-1), 1, generator=generator)[:, 0]


def race_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``next_tokens`` without a host sync (capturable in a CUDA graph): logits (B, V) -> tokens (B,), the same
    tokens from the same ``generator`` state, by the exponential race that ``torch.multinomial`` runs for one
    draw: argmax over the vocabulary of p / E, with p = softmax(filtered logits / T) and E ~ Exp(1) i.i.d."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)           # (B, V)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)                  # (B, V) E ~ Exp(1)
    return torch.div(probs, race).argmax(-1)
