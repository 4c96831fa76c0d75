"""Speculative decoding against plain greedy (``bench_speculative``, ``workbench bench speculative``).

Plain greedy ``generate`` of a target against ``speculative_generate`` with a draft model, or against
``lookup_generate`` with drafts copied from the context (draft "lookup", or "lookup:N" for n-grams of up to N tokens,
default 3), per number of draft tokens k: decode tokens/s of both, the speed-up, the acceptance rate, and whether
the greedy tokens are identical (where not, the first position that differs). With several prompts (``prompts``),
each is decoded in turn and the numbers are pooled over them: tokens over seconds, accepted over proposed drafts;
one prompt's acceptance depends much on its text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from workbench.device import device_name
from workbench.generation.bench.facts import corpus_tokens, prompts
from workbench.generation.engine import generate
from workbench.generation.lookup import lookup_generate
from workbench.generation.models import load_model
from workbench.generation.speculative import speculative_generate
from workbench.teachers import anatomy


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first position (B, L) token tensors differ at in any row (or where one ends), or None if equal."""
    if torch.equal(a, b):
        return None
    n = min(a.shape[1], b.shape[1])
    differs = (a[:, :n] != b[:, :n]).any(0).nonzero()
    return int(differs[0]) if len(differs) else n


LOOKUP = "lookup"   # the draft of ``lookup_generate`` ("lookup" or "lookup:N")


def lookup_ngram(draft: str) -> int | None:
    """N of a "lookup[:N]" draft (3 for "lookup"), None for a draft model; ValueError for a malformed one."""
    name, _, size = draft.partition(":")
    if name != LOOKUP:
        return None
    if size and not (size.isdigit() and int(size) >= 1):
        raise ValueError(f"draft {draft!r}: give lookup or lookup:N with N >= 1 (the longest n-gram looked up)")
    return int(size) if size else 3


def _pooled(results: Sequence) -> tuple[float, float]:
    """(decode tokens, decode seconds) of ``results`` together."""
    seconds = sum(r.decode_seconds for r in results)
    return sum(r.decode_tokens_per_s * r.decode_seconds for r in results), seconds


def bench_speculative(target: str, draft: str, ks: Sequence[int], batch: int = 1, context: int = 512,
                      new: int = 128, device="auto", dtype="auto", cuda_graph="auto", warmup: int = 8,
                      n_prompts: int = 1, progress: bool = True) -> dict:
    """Plain greedy ``generate`` of ``target`` against ``speculative_generate`` with the draft model ``draft`` (or
    ``lookup_generate`` for a "lookup[:N]" draft), for each k in ``ks``, on ``n_prompts`` sets of (batch, context) SOTU
    held-out prompts (the target's tokenizer; each set from its own place in the text) and ``new`` tokens. Each call
    is preceded by an untimed one of ``warmup`` tokens. Returns {"target", "draft", "batch", "context",
    "new_tokens", "prompts", "device", "device_name", "dtype", "target_decode_tokens_per_s", "target_cuda_graph",
    "results": [{"k", "speculative_decode_tokens_per_s", "speculative_cuda_graph", "target_decode_tokens_per_s",
    "speedup", "acceptance_rate", "rounds", "identical", "first_difference", "draft_share", "verify_share",
    "per_prompt"}]}. Tokens/s count the decode steps after the first token (per sequence times batch), as
    ``GenerationResult.decode_tokens_per_s``, pooled over the prompts (their tokens over their seconds);
    ``speedup`` is speculative over plain; ``acceptance_rate`` the accepted drafts over the proposed ones of every
    prompt; ``identical`` whether every prompt's tokens are plain greedy's (``first_difference``: the first position
    that differs, in the first prompt that does); ``draft_share`` and ``verify_share``: the shares of the decode time
    spent drafting and verifying (``SpeculativeResult.draft_seconds``, ``verify_seconds``); ``per_prompt``: each
    prompt's speed-up, acceptance, rounds and identity."""
    if any(k < 1 for k in ks):
        raise ValueError(f"every k (draft tokens per round) must be at least 1, got {list(ks)}")
    if n_prompts < 1:
        raise ValueError(f"prompts={n_prompts}: decode at least one prompt")
    ngram = lookup_ngram(draft)
    loaded_target = load_model(target, device=device, dtype=dtype)
    model_device = next(loaded_target.model.parameters()).device
    if ngram is None:
        loaded_draft = load_model(draft, device=device, dtype=dtype)
        draft_device = next(loaded_draft.model.parameters()).device
        if draft_device != model_device:
            raise ValueError(f"the target is on {model_device} but the draft on {draft_device}")

    def speculative(ids, new, k):
        if ngram is None:
            return speculative_generate(loaded_target.model, loaded_draft.model, ids, new, k=k, cuda_graph=cuda_graph)
        return lookup_generate(loaded_target.model, ids, new, k=k, max_ngram=ngram, cuda_graph=cuda_graph)

    limit = anatomy.context_length(anatomy.text_config(loaded_target.model))
    if limit is not None and context + new > limit:
        raise ValueError(f"context {context} + {new} new tokens exceeds the target's maximum context {limit}")
    tokens = corpus_tokens(loaded_target)
    sets = [prompts(np.roll(tokens, -p * batch * 997), batch, context, model_device) for p in range(n_prompts)]
    generate(loaded_target.model, sets[0], min(warmup, new), cuda_graph=cuda_graph)
    plains = [generate(loaded_target.model, ids, new, cuda_graph=cuda_graph) for ids in sets]
    plain_tokens, plain_seconds = _pooled(plains)
    plain_speed = plain_tokens / plain_seconds
    report = {"target": target, "draft": draft, "batch": batch, "context": context, "new_tokens": new,
              "prompts": n_prompts, "device": str(model_device), "device_name": device_name(model_device),
              "dtype": str(loaded_target.model.dtype).replace("torch.", ""),
              "target_decode_tokens_per_s": plain_speed, "target_cuda_graph": plains[0].cuda_graph, "results": []}
    for k in ks:
        speculative(sets[0], min(warmup, new), k)
        results = [speculative(ids, new, k) for ids in sets]
        decoded, seconds = _pooled(results)
        speed = decoded / seconds
        differences = [_first_difference(p.tokens, r.tokens) for p, r in zip(plains, results)]
        entry = {"k": k, "speculative_decode_tokens_per_s": speed, "speculative_cuda_graph": results[0].cuda_graph,
                 "target_decode_tokens_per_s": plain_speed, "speedup": speed / plain_speed,
                 "acceptance_rate": sum(r.accepted for r in results) / max(1, sum(r.proposed for r in results)),
                 "rounds": sum(r.rounds for r in results), "identical": all(d is None for d in differences),
                 "first_difference": next((d for d in differences if d is not None), None),
                 "draft_share": sum(r.draft_seconds for r in results) / seconds if seconds else 0.0,
                 "verify_share": sum(r.verify_seconds for r in results) / seconds if seconds else 0.0,
                 "per_prompt": [{"speedup": r.decode_tokens_per_s / p.decode_tokens_per_s,
                                 "acceptance_rate": r.acceptance_rate, "rounds": r.rounds, "identical": d is None}
                                for p, r, d in zip(plains, results, differences)]}
        report["results"].append(entry)
        if progress:
            print(f"k={k}: {speed:.1f} tokens/s vs {plain_speed:.1f} plain (x{entry['speedup']:.2f}), "
                  f"acceptance {entry['acceptance_rate']:.2f}, identical {entry['identical']}; of the time, "
                  f"drafting {entry['draft_share']:.0%}, verifying {entry['verify_share']:.0%}")
    return report
