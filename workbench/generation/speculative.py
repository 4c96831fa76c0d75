"""Greedy speculative decoding (as in Mamba in the Llama, arXiv 2408.15237): a drafter proposes k tokens, the target
checks all of them in one multi-token pass, and keeps the longest agreeing prefix plus its own next token. The output
is exactly the target's greedy output; only the time changes.

``in_rounds`` is the whole of a generation for both ``speculative_generate`` and ``lookup_generate`` (the target's
session, prefill, drafter and verification, then the rounds); one round of ``speculate``:
  1. the drafter proposes k tokens per row (``ModelDraft``: a draft model's greedy tokens; ``lookup.LookupDraft``:
     tokens copied from the context);
  2. the target reads [last token, k drafts] in one pass and predicts the token after each
     (``workbench.generation.verify``: in place and captured in a CUDA graph where the target allows, else by
     rolling back);
  3. the batch accepts the n leading drafts that every unfinished row's predictions agree with, plus the target's
     own token after them: n + 1 new tokens (so rows stay aligned; a row that would accept more gets the same tokens
     one round later); target and drafter move on by them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache

from workbench.device import sync
from workbench.generation.engine import GenerationResult, default_pad, prefill
from workbench.generation.graph import capture_step, static_state_problem
from workbench.generation.session import Session, unwrap
from workbench.generation.verify import plain_static, static_lengths, target_verifier, verification_session


@dataclass
class SpeculativeResult(GenerationResult):
    proposed: int = 0       # draft tokens that could be accepted (per sequence: k a round, fewer in the last)
    accepted: int = 0       # of those, accepted by the target
    rounds: int = 0         # verification passes of the target
    draft_seconds: float = 0.0    # of decode_seconds: the drafter proposing (device time on a GPU, ``PhaseClock``)
    verify_seconds: float = 0.0   # of decode_seconds: the target's verification passes (the rest: accepting,
                                  #   the host waiting for the device at each round's end)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class Drafter(Protocol):
    def propose(self, k: int) -> torch.Tensor:
        """(B, k) draft tokens on the device, to follow the last accepted token."""

    def accept(self, new: torch.Tensor, n: int) -> None:
        """The round's new tokens (B, n + 1): the first n drafts, then the target's own token."""


class ReadingDraft:
    """What the draft models' drafters share: a round reads the ``pending`` tokens (B, P) and then the round's own
    ``drafts`` (B, k) but the last, ``reads`` tokens in all; accepting n drafts keeps the pending tokens and n
    drafts, going back past the other reads (``back``, the drafter's own way), and the target's token becomes
    pending (after an all-accepted round, the last draft too)."""

    pending: torch.Tensor
    drafts: torch.Tensor
    reads: int

    def back(self, kept: int) -> None:
        """Keep the first ``kept`` of this round's reads, undo the others."""
        raise NotImplementedError

    def accept(self, new: torch.Tensor, n: int) -> None:
        wanted = self.pending.shape[1] + n
        if wanted <= self.reads:
            if wanted < self.reads:
                self.back(wanted)
            self.pending = new[:, -1:]
        else:                                          # every draft accepted: the last one is still to read
            self.pending = torch.cat([self.drafts[:, -1:], new[:, -1:]], dim=1)


class ModelDraft(ReadingDraft):
    """Drafts by a draft model's greedy tokens (any model with the target's vocabulary), in an engine ``Session``
    that marks each round's start and goes back to the accepted tokens after it (``Session.rollback``)."""

    def __init__(self, draft, input_ids: torch.Tensor, last: torch.Tensor):
        self.session = Session(unwrap(draft))
        prefill(self.session, input_ids)
        self.pending = last[:, None]                  # (B, P) tokens the draft has not read yet

    def propose(self, k: int) -> torch.Tensor:
        self.session.checkpoint()
        self.reads = self.pending.shape[1] + k - 1
        proposals, x = [], self.pending
        for _ in range(k):
            x = self.session.forward(x)[:, -1].argmax(-1)[:, None]                  # (B, 1)
            proposals.append(x)
        self.drafts = torch.cat(proposals, dim=1)                                   # (B, k)
        return self.drafts

    def back(self, kept: int) -> None:
        self.session.rollback(self.session.mark + kept)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, V) -> the greedy token (B,) (chosen inside a captured step)."""
    return logits.argmax(-1)


class SnapshotDraft(ReadingDraft):
    """Drafts as ``ModelDraft`` does, for a draft whose mixer steps update their states in place (an all-Mamba-2
    student, a hybrid, or a shallow model keeping the teacher's attention: ``workbench distill --depth``): one token
    per step, each step one replay of the draft's step captured in a CUDA graph with the argmax inside it (``graph``;
    else eager), and after every step a copy of what the step moved on into a slot, so that going back to the
    accepted tokens copies a slot back instead of running the kept tokens again. Nothing waits for the device.

    What a step moves on: the mixer states, and on the static cache of a captured draft its layers' length counters,
    which place every attention write and size every mask (so restoring them undoes the attention layers' reads too;
    the keys and values written past them are overwritten by later reads). Eagerly, on a dynamic cache, the undone
    reads are cropped from it instead.

    A round: slot 0 holds the states at the round's start; the draft reads its pending tokens (the target's token of
    the last round, after an all-accepted round also the last draft), then its own drafts but the last, each read
    saved to the next slot; accepting n drafts restores the slot of (pending + n) reads."""

    def __init__(self, session: Session, last: torch.Tensor, k: int, graph: bool):
        self.session = session                        # prefilled; static when ``graph``
        if graph:
            self.step = capture_step(session, last, compile=False, choose=greedy)
            self.next = self.step.first_token         # (B,) the draft's choice after the tokens it has read
        else:
            self.step = lambda token: session.forward(token[:, None])[:, -1].argmax(-1)
            self.next = self.step(last)
        self.pending = last[:, None][:, :0]           # (B, P) tokens the draft has not read yet (none: it read last)
        self.graph = graph
        # what a step moves on: the mixer states, and on a static cache its layers' length counters (the mixers'
        # markers place their writes by them)
        self.tensors = [v for m in session.mixers.values() for v in m.state.values() if torch.is_tensor(v)]
        self.tensors += static_lengths(session.cache) if graph else []
        self.slots = [torch.empty((k + 2, *t.shape), dtype=t.dtype, device=t.device) for t in self.tensors]

    @staticmethod
    def fits(session: Session, batch: int) -> bool:
        """Can ``session`` (prefilled) draft this way: every mixer step in place, and a dynamic or plain static
        cache?"""
        return (static_state_problem(session, batch) is None
                and (isinstance(session.cache, DynamicCache) or plain_static(session.cache)))

    def _save(self, slot: int) -> None:
        if self.tensors:                               # none: an eager draft of attention layers only
            torch._foreach_copy_([saved[slot] for saved in self.slots], self.tensors)

    def propose(self, k: int) -> torch.Tensor:
        self.start, self.reads = self.session.length, 0
        self._save(0)
        x = self.next
        for j in range(self.pending.shape[1]):
            x = self.step(self.pending[:, j])
            self.reads += 1
            self._save(self.reads)
        proposals = [x.clone()]                       # a captured step returns its one static output tensor
        for _ in range(k - 1):
            x = self.step(x)
            self.reads += 1
            self._save(self.reads)
            proposals.append(x.clone())
        self.drafts = torch.stack(proposals, dim=1)                                 # (B, k)
        return self.drafts

    def back(self, kept: int) -> None:
        if self.tensors:
            torch._foreach_copy_(self.tensors, [saved[kept] for saved in self.slots])
        if not self.graph:                             # the undone reads leave the dynamic cache and the counts
            self.session.cache.crop(kept - self.reads)
            for m in self.session.mixers.values():
                m.seen -= self.reads - kept
        self.session.length = self.start + kept


def model_drafter(draft, input_ids: torch.Tensor, last: torch.Tensor, k: int, max_length: int,
                  graph: bool) -> Drafter:
    """The drafter of a draft model: ``SnapshotDraft`` where it ``fits`` (captured when ``graph``), else
    ``ModelDraft``."""
    model = unwrap(draft)
    session = Session(model, max_length=max_length, static=True) if graph else Session(model)
    prefill(session, input_ids)
    if SnapshotDraft.fits(session, input_ids.shape[0]):
        return SnapshotDraft(session, last, k, graph)
    return ModelDraft(draft, input_ids, last)


class PhaseClock:
    """The time between marks, summed by phase over the rounds, without waiting for the device: on a GPU each mark
    is a CUDA event on the current stream (so the host still runs ahead), read once after the rounds; elsewhere the
    host clock, since work there is done when its call returns. A round marks its start and the end of each of its
    ``phases`` phases."""

    def __init__(self, device: torch.device, phases: int):
        self.cuda, self.phases = device.type == "cuda", phases
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def totals(self) -> list[float]:
        """Seconds in each phase, summed over the rounds marked."""
        if self.cuda and self.marks:
            self.marks[-1].synchronize()
        width = self.phases + 1
        totals = [0.0] * self.phases
        for r in range(0, len(self.marks) - self.phases, width):
            for j in range(self.phases):
                a, b = self.marks[r + j], self.marks[r + j + 1]
                totals[j] += a.elapsed_time(b) / 1e3 if self.cuda else b - a
        return totals


def speculate(verify, drafter: Drafter, last: torch.Tensor, max_new_tokens: int, k: int, stops: torch.Tensor,
              pad: int, prefill_seconds: float, capture_seconds: float = 0.0) -> SpeculativeResult:
    """The rounds of the module docstring from the prompt's next token ``last`` (B,) on: ``verify`` (a
    ``verify.Verifier`` or ``Rollback`` of the prefilled target), ``drafter`` (prefilled too)."""
    device = last.device
    out, produced = [last[:, None]], 1
    finished = rows_stopped(last[:, None], stops)
    proposed = accepted = rounds = 0
    per_token: list[float] = []
    clock = PhaseClock(device, phases=2)                                                       # drafting, verifying
    while produced < max_new_tokens and not (len(stops) and bool(finished.all())):
        t = time.perf_counter()
        clock.mark()
        drafts = drafter.propose(k)                                                            # 1. (B, k)
        clock.mark()
        predicted = verify(torch.cat([last[:, None], drafts], dim=1))                          # 2. (B, k + 1)
        clock.mark()
        agree = (predicted[:, :k] == drafts).long().cumprod(dim=1).sum(dim=1)                  # (B,)
        usable = min(k, max_new_tokens - produced - 1)                                         # the last round: fewer
        n = min(int(agree[~finished].min()) if bool((~finished).any()) else k, usable)         # 3.
        new = torch.cat([drafts[:, :n], predicted[:, n:n + 1]], dim=1)                         # (B, n + 1)
        verify.accept(n + 1)
        drafter.accept(new, n)
        out.append(new)
        produced += n + 1
        finished = finished | rows_stopped(new, stops)
        last = new[:, -1]
        proposed += usable
        accepted += n
        rounds += 1
        sync(device)
        per_token.extend([(time.perf_counter() - t) / (n + 1)] * (n + 1))
    tokens = torch.cat(out, dim=1)[:, :max_new_tokens]
    tokens, lengths = pad_after_stop(tokens, stops, pad)
    draft_seconds, verify_seconds = clock.totals()
    return SpeculativeResult(tokens=tokens, prefill_seconds=prefill_seconds, decode_seconds=float(sum(per_token)),
                             per_token_seconds=per_token[: tokens.shape[1] - 1], lengths=lengths,
                             proposed=proposed, accepted=accepted, rounds=rounds,
                             draft_seconds=draft_seconds, verify_seconds=verify_seconds,
                             cuda_graph=verify.graph is not None, graph_capture_seconds=capture_seconds)


def check_round(k: int, max_new_tokens: int, cuda_graph: bool | str, device: torch.device) -> None:
    """The checks both generators make of their arguments, with the fix in each message."""
    if k < 1:
        raise ValueError(f"k (draft tokens per round) must be at least 1, got {k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if cuda_graph not in ("auto", True, False):
        raise ValueError(f"cuda_graph must be 'auto', True or False, got {cuda_graph!r}")
    if cuda_graph is True and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; the prompt is on {device}")


def in_rounds(target, input_ids: torch.Tensor, max_new_tokens: int, k: int, stop_tokens: Sequence[int],
              pad_token_id: int | None, cuda_graph: bool | str,
              session_for: Callable[[torch.nn.Module, int], Session],
              drafter_for: Callable[[torch.Tensor, int, bool], Drafter]) -> SpeculativeResult:
    """The whole of a speculative generation: the target's session (``session_for(model, max_length)``), its
    prefill, the drafter (``drafter_for(last, max_length, graph)``, prefilled with it: both are timed as the prefill;
    ``graph``: whether steps may be captured), the target's
    verification (``verify.target_verifier``; captured and timed as the capture when ``cuda_graph`` allows), then
    the rounds (``speculate``)."""
    device = input_ids.device
    check_round(k, max_new_tokens, cuda_graph, device)
    target = unwrap(target)
    B, L = input_ids.shape
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    pad = default_pad(target, stop_tokens) if pad_token_id is None else pad_token_id
    max_length = L + max_new_tokens + k + 1
    session = session_for(target, max_length)
    sync(device)
    t0 = time.perf_counter()
    last = prefill(session, input_ids).argmax(-1)                                # (B,)
    graph = device.type == "cuda" and cuda_graph in ("auto", True)
    drafter = drafter_for(last, max_length, graph)
    sync(device)
    prefill_seconds = time.perf_counter() - t0
    verify = target_verifier(session, B, k + 1, max_length, graph)
    if cuda_graph is True and verify.graph is None:
        raise ValueError("cuda_graph=True: this target verifies by rolling back (mixers without Mixer.verify, or a "
                         "cache that is not plain static), which is not captured; pass cuda_graph='auto'")
    sync(device)
    capture_seconds = time.perf_counter() - t0 - prefill_seconds
    return speculate(verify, drafter, last, max_new_tokens, k, stops, pad, prefill_seconds, capture_seconds)


@torch.no_grad()
def speculative_generate(target, draft, input_ids: torch.Tensor, max_new_tokens: int, k: int = 4,
                         stop_tokens: Sequence[int] = (), pad_token_id: int | None = None,
                         cuda_graph: bool | str = "auto") -> SpeculativeResult:
    """The target's greedy continuation of ``input_ids`` (B, L), drafted ``k`` tokens a round by ``draft`` (any
    model with the same vocabulary; it may be the target itself) and checked by one pass of k + 1 tokens, in place
    where the target's layers allow (captured in a CUDA graph: ``cuda_graph`` "auto" captures on CUDA, True requires
    it, False runs eagerly), else by rolling back. Stop tokens and padding as in ``generate``."""
    return in_rounds(target, input_ids, max_new_tokens, k, stop_tokens, pad_token_id, cuda_graph,
                     session_for=verification_session,
                     drafter_for=lambda last, max_length, graph: model_drafter(draft, input_ids, last, k, max_length,
                                                                               graph))


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
