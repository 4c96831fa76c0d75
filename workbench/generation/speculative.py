"""Greedy speculative decoding (as in Mamba in the Llama, arXiv 2408.15237): a draft model proposes k tokens one by
one, the target checks all of them in one multi-token pass, and keeps the longest agreeing prefix plus its own next
token. The output is exactly the target's greedy output; only the time changes.

Going back. Both models run in engine ``Session``s: before each round they ``checkpoint``; after verification the
target rolls back to the last accepted token (its attention cache is cropped, its mixer states are rebuilt from the
checkpoint by ``Mixer.extend`` over the accepted tokens' recorded layer inputs), and so does the draft. A batch
accepts the number of tokens every unfinished sequence agrees on (so rows stay aligned; a row that would accept more
gets the same tokens one round later).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.device import sync
from workbench.generation.engine import GenerationResult, default_pad, prefill
from workbench.generation.session import Session, unwrap


@dataclass
class SpeculativeResult(GenerationResult):
    proposed: int = 0       # draft tokens proposed (per sequence, summed over rounds)
    accepted: int = 0       # of those, accepted by the target
    rounds: int = 0         # verification passes of the target

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@torch.no_grad()
def speculative_generate(target, draft, input_ids: torch.Tensor, max_new_tokens: int, k: int = 4,
                         stop_tokens: Sequence[int] = (), pad_token_id: int | None = None) -> SpeculativeResult:
    """The target's greedy continuation of ``input_ids`` (B, L), drafted ``k`` tokens at a time by ``draft`` (any
    model with the same vocabulary; it may be the target itself). Stop tokens and padding as in ``generate``."""
    if k < 1:
        raise ValueError(f"k (draft tokens per round) must be at least 1, got {k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    target, draft = unwrap(target), unwrap(draft)
    device = input_ids.device
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    pad = default_pad(target, stop_tokens) if pad_token_id is None else pad_token_id
    proposed = accepted = rounds = 0
    per_token: list[float] = []

    verifier, drafter = Session(target), Session(draft)
    sync(device)
    t0 = time.perf_counter()
    last = prefill(verifier, input_ids).argmax(-1)                           # (B,)
    prefill(drafter, input_ids)
    sync(device)
    prefill_seconds = time.perf_counter() - t0
    out = [last[:, None]]
    produced = 1
    pending = last[:, None]                                                   # tokens the draft has not read
    finished = rows_stopped(last[:, None], stops)
    while produced < max_new_tokens and not (len(stops) and bool(finished.all())):
        t = time.perf_counter()
        kk = min(k, max_new_tokens - produced - 1)
        verifier.checkpoint()
        drafter.checkpoint()
        proposals = []
        x = pending
        for _ in range(kk):
            x = drafter.forward(x)[:, -1].argmax(-1)[:, None]
            proposals.append(x)
        props = torch.cat(proposals, dim=1) if proposals else pending[:, :0]  # (B, kk)
        predicted = verifier.forward(torch.cat([last[:, None], props], dim=1), keep=kk + 1).argmax(-1)
        agree = (predicted[:, :kk] == props).long().cumprod(dim=1).sum(dim=1)  # (B,) leading matches
        n = int(agree[~finished].min()) if bool((~finished).any()) else kk
        new = torch.cat([props[:, :n], predicted[:, n:n + 1]], dim=1)         # (B, n + 1)
        verifier.rollback(verifier.mark + n + 1)                             # read: last, then n proposals
        read = torch.cat([pending, props], dim=1)                            # what the draft was to read
        wanted = pending.shape[1] + n
        done = drafter.length - drafter.mark
        if wanted <= done:
            drafter.rollback(drafter.mark + wanted)
            pending = new[:, -1:]
        else:
            pending = torch.cat([read[:, done:wanted], new[:, -1:]], dim=1)
        out.append(new)
        produced += n + 1
        finished = finished | rows_stopped(new, stops)
        last = new[:, -1]
        proposed += kk
        accepted += n
        rounds += 1
        sync(device)
        per_token.extend([(time.perf_counter() - t) / (n + 1)] * (n + 1))

    tokens = torch.cat(out, dim=1)[:, :max_new_tokens]
    tokens, lengths = pad_after_stop(tokens, stops, pad)
    return SpeculativeResult(tokens=tokens, prefill_seconds=prefill_seconds, decode_seconds=float(sum(per_token)),
                             per_token_seconds=per_token[: tokens.shape[1] - 1], lengths=lengths,
                             proposed=proposed, accepted=accepted, rounds=rounds)


def rows_stopped(tokens: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """(B, L) -> (B,): whether a row holds a stop token."""
    return torch.isin(tokens, stops).any(dim=1) if len(stops) else torch.zeros(tokens.shape[0], dtype=torch.bool,
                                                                                 device=tokens.device)


def pad_after_stop(tokens: torch.Tensor, stops: torch.Tensor, pad: int) -> tuple[torch.Tensor, list[int]]:
    """Tokens after each row's first stop token replaced by ``pad``, cut where every row has stopped (as
    ``generate`` stops); and each row's length with its stop token."""
    B, L = tokens.shape
    if not len(stops):
        return tokens, [L] * B
    hit = torch.isin(tokens, stops)
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((B,), L, device=tokens.device)).long()
    lengths = torch.minimum(first + 1, torch.full_like(first, L))
    keep = torch.arange(L, device=tokens.device)[None] < lengths[:, None]
    tokens = torch.where(keep, tokens, torch.full_like(tokens, pad))
    return tokens[:, : int(lengths.max())], lengths.tolist()
