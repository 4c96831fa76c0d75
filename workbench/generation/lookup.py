"""Speculative decoding with drafts copied from the context (prompt lookup), verified by one captured pass per round.

At batch 1 a decode step of a model this small is bound by kernel launches, not by its weights: reading k + 1 tokens
in one pass costs about what reading one does. So a draft that costs nothing to make pays whenever some of it is
accepted. ``PromptLookup`` makes such drafts: the tokens that followed the most recent earlier occurrence of the
sequence's last n tokens (n from ``max_ngram`` down to ``min_ngram``), read on past the end of the known tokens into
the draft itself, so a loop shorter than k is drafted whole (greedy decoding of small models often loops; quoted
text, code and lists repeat their context).

One round of ``lookup_generate`` (greedy; the output is exactly the target's greedy output):
  1. each row drafts k tokens (``PromptLookup.propose``; a row with no match drafts copies of its last token);
  2. the target reads [last token, k drafts] in one pass (``Verifier``) and predicts the token after each;
  3. the batch accepts the n leading drafts that every unfinished row's predictions agree with, plus the target's
     own token after them: n + 1 new tokens.
Going back costs nothing. Attention layers: the verification pass writes a static cache by position and each pass
first sets the cache's length to where it starts, so entries past the accepted tokens are masked for every later
query and are overwritten by the next pass. Mixer layers: the pass runs ``Mixer.verify``, which leaves the state as
it was and returns the state after each drafted position; ``Mixer.accept`` then moves the state on by the accepted
ones (Mamba-2 and its discrete variant have them: ``verifies``; a target with other mixers decodes with
``speculative_generate``, which rebuilds states with ``Session.rollback``).

On CUDA the pass is captured in a CUDA graph once (``cuda_graph``: "auto" captures on CUDA), so a round is one
replay, one copy of the drafts to the device and one of the predictions back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers.cache_utils import StaticLayer

from workbench.device import sync
from workbench.generation.engine import default_pad, prefill
from workbench.generation.session import Session, unwrap
from workbench.generation.speculative import SpeculativeResult, pad_after_stop, rows_stopped
from workbench.students.base import verifies


class PromptLookup:
    """Drafts for one sequence copied from its own tokens (module docstring). ``extend`` adds tokens as they are
    decided; ``propose(k)`` drafts k of them, or none when no suffix of ``min_ngram`` or more tokens occurred before.
    Each token added updates an index of its n-grams (n-gram -> the position after its latest occurrence), so a
    draft costs O(max_ngram + k) whatever the length."""

    def __init__(self, tokens: Sequence[int] = (), max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.after: dict[tuple[int, ...], int] = {}   # n-gram -> position after its latest occurrence
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            i = len(self.tokens)          # the n-grams that end just before position i now continue at i
            for n in range(self.min_ngram, min(self.max_ngram, i) + 1):
                self.after[tuple(self.tokens[i - n:i])] = i
            self.tokens.append(int(token))

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` draft tokens: after the latest earlier occurrence of the longest suffix seen before, the
        tokens that followed it, read on into the draft itself past the known tokens; [] without a match."""
        for n in range(min(self.max_ngram, len(self.tokens)), self.min_ngram - 1, -1):
            j = self.after.get(tuple(self.tokens[-n:]))
            if j is not None:
                draft: list[int] = []
                for _ in range(k):
                    draft.append(self.tokens[j] if j < len(self.tokens) else draft[j - len(self.tokens)])
                    j += 1
                return draft
        return []


def static_lengths(cache) -> list[torch.Tensor]:
    """The length counters (0-d tensors) of a ``StaticCache``'s layers, which place every write and size every
    mask; ValueError for a cache with another kind of layer (sliding-window, mixer states)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not StaticLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or []})
        raise ValueError(f"lookup decoding verifies on a plain static attention cache; this target's cache holds "
                         f"{kinds or 'no layers'}: decode it with speculative_generate (a draft model) instead")
    return [layer.cumulative_length for layer in layers]


class Verifier:
    """The target's verification pass: ``tokens`` (B, T) read at positions [start, start + T) of the session's
    static cache (of ``max_length`` positions), the greedy prediction (B, T) after each position, on the device. The
    pass first sets every cache layer's length to ``start`` and hands the model its causal mask over the cache
    ((1, 1, T, max_length), True where a query may attend), made on the device: transformers' own mask for a few new
    positions would ask the host whether the cache is empty, which a CUDA graph cannot capture. ``graph``: captured in
    a CUDA graph (after one eager warm-up pass at the session's length, whose writes the first real pass
    overwrites), else run eagerly."""

    def __init__(self, session: Session, batch: int, width: int, max_length: int, graph: bool):
        device = next(session.model.parameters()).device
        self.session, self.width = session, width
        self.lengths = static_lengths(session.cache)
        self.ids = torch.zeros(batch, width, dtype=torch.long, device=device)     # (B, T)
        self.start = torch.full((), session.length, dtype=torch.long, device=device)
        self.offsets = torch.arange(width, device=device)                         # (T,)
        self.keys = torch.arange(max_length, device=device)                       # (S,) cache positions
        self.graph = None
        if graph:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                self._pass()                                                      # lazily made buffers
            torch.cuda.current_stream(device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.predicted = self._pass()

    def _pass(self) -> torch.Tensor:
        for length in self.lengths:
            length.copy_(self.start)
        session = self.session
        positions = self.start + self.offsets                                                      # (T,)
        mask = (self.keys[None, :] <= positions[:, None])[None, None]                             # (1, 1, T, S)
        kwargs = {**session.model_kwargs(), "position_ids": positions[None], "attention_mask": mask}
        if session.keeps_logits:
            kwargs["logits_to_keep"] = self.width
        for m in session.mixers.values():
            m.verifying = True
        try:
            with session.attention():
                logits = session.model(input_ids=self.ids, **kwargs).logits[:, -self.width:]      # (B, T, V)
        finally:
            for m in session.mixers.values():
                m.verifying = False
        return logits.argmax(-1)                                                                   # (B, T)

    def accept(self, n: int) -> None:
        """After a pass: the session moves on by its first ``n`` tokens (the mixer layers' states with them)."""
        for m in self.session.mixers.values():
            m.accept(n)
        self.session.length += n

    def __call__(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        self.ids.copy_(tokens)
        self.start.fill_(start)
        if self.graph is None:
            return self._pass()
        self.graph.replay()
        return self.predicted


@torch.no_grad()
def lookup_generate(target, input_ids: torch.Tensor, max_new_tokens: int, k: int = 4, max_ngram: int = 3,
                    min_ngram: int = 1, stop_tokens: Sequence[int] = (), pad_token_id: int | None = None,
                    cuda_graph: bool | str = "auto") -> SpeculativeResult:
    """The target's greedy continuation of ``input_ids`` (B, L), drafted ``k`` tokens a round by ``PromptLookup``
    (n-grams of ``min_ngram`` to ``max_ngram`` tokens) and checked by one ``Verifier`` pass of k + 1 tokens (see the
    module docstring). ``cuda_graph``: "auto" (capture on CUDA), True (required) or False. Stop tokens and padding as
    in ``generate``; ``proposed`` counts the draft positions verified (k a round), ``accepted`` those accepted."""
    if k < 1:
        raise ValueError(f"k (draft tokens per round) must be at least 1, got {k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if cuda_graph not in ("auto", True, False):
        raise ValueError(f"cuda_graph must be 'auto', True or False, got {cuda_graph!r}")
    target = unwrap(target)
    device = input_ids.device
    if cuda_graph is True and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; the prompt is on {device}")
    B, L = input_ids.shape
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    pad = default_pad(target, stop_tokens) if pad_token_id is None else pad_token_id
    drafts = [PromptLookup(row, max_ngram, min_ngram) for row in input_ids.tolist()]

    max_length = L + max_new_tokens + k + 1
    session = Session(target, max_length=max_length, static=True)
    cannot = {i: type(m.mixer).__name__ for i, m in session.mixers.items() if not verifies(m.mixer)}
    if cannot:
        raise ValueError(f"lookup decoding verifies drafts without moving the mixer layers' states (Mixer.verify); "
                         f"layers {sorted(cannot)} are {sorted(set(cannot.values()))} mixers, which cannot: decode "
                         f"this target with speculative_generate instead")
    sync(device)
    t0 = time.perf_counter()
    last = prefill(session, input_ids).argmax(-1)                                # (B,)
    sync(device)
    prefill_seconds = time.perf_counter() - t0
    verify = Verifier(session, B, k + 1, max_length, graph=device.type == "cuda" and cuda_graph in ("auto", True))
    sync(device)
    capture_seconds = time.perf_counter() - t0 - prefill_seconds
    out, produced = [last[:, None]], 1
    finished = rows_stopped(last[:, None], stops)
    for row, token in zip(drafts, last.tolist()):
        row.extend([token])
    proposed = accepted = rounds = 0
    per_token: list[float] = []
    while produced < max_new_tokens and not (len(stops) and bool(finished.all())):
        t = time.perf_counter()
        guesses = [row.propose(k) or [row.tokens[-1]] * k for row in drafts]                      # 1.
        block = torch.tensor([[row.tokens[-1], *g] for row, g in zip(drafts, guesses)])           # (B, k + 1)
        predicted = verify(block, session.length)                                                 # 2.
        drafted = verify.ids[:, 1:]                                                               # (B, k)
        agree = (predicted[:, :k] == drafted).long().cumprod(dim=1).sum(dim=1)                   # (B,)
        n = int(agree[~finished].min()) if bool((~finished).any()) else k                         # 3.
        n = min(n, max_new_tokens - produced - 1)
        new = torch.cat([drafted[:, :n], predicted[:, n:n + 1]], dim=1)                           # (B, n + 1)
        verify.accept(n + 1)
        for row, tokens in zip(drafts, new.tolist()):
            row.extend(tokens)
        out.append(new)
        produced += n + 1
        finished = finished | rows_stopped(new, stops)
        proposed += k
        accepted += n
        rounds += 1
        per_token.extend([(time.perf_counter() - t) / (n + 1)] * (n + 1))
    tokens = torch.cat(out, dim=1)[:, :max_new_tokens]
    tokens, lengths = pad_after_stop(tokens, stops, pad)
    return SpeculativeResult(tokens=tokens, prefill_seconds=prefill_seconds, decode_seconds=float(sum(per_token)),
                             per_token_seconds=per_token[: tokens.shape[1] - 1], lengths=lengths,
                             proposed=proposed, accepted=accepted, rounds=rounds,
                             cuda_graph=verify.graph is not None, graph_capture_seconds=capture_seconds)
