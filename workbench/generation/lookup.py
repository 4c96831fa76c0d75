"""Speculative decoding with drafts copied from the context (prompt lookup), verified by one captured pass per round.

At batch 1 a decode step of a model this small is bound by kernel launches, not by its weights: reading k + 1 tokens
in one pass costs about what reading one does. So a draft that costs nothing to make pays whenever some of it is
accepted. ``PromptLookup`` makes such drafts: the tokens that followed the most recent earlier occurrence of the
sequence's last n tokens (n from ``max_ngram`` down to ``min_ngram``), read on past the end of the known tokens into
the draft itself, so a loop shorter than k is drafted whole (greedy decoding of small models often loops; quoted
text, code and lists repeat their context).

``lookup_generate`` runs the rounds of ``workbench.generation.speculative`` with ``LookupDraft`` (a row with no
match drafts copies of its last token) and the in-place verification of ``workbench.generation.verify`` (a static
cache, ``Mixer.verify`` in the mixer layers, the pass captured in a CUDA graph on CUDA: a round is one replay, one
copy of the drafts to the device and one of the predictions back). A target whose layers cannot verify in place
(Hyena or Mamba-1 mixers, sliding-window attention) is refused: ``speculative_generate`` decodes it with a draft
model, rolling back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.generation.session import Session
from workbench.generation.speculative import SpeculativeResult, in_rounds
from workbench.generation.verify import static_lengths, unverifiable_mixers


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


class LookupDraft:
    """Drafts for a batch, one ``PromptLookup`` per row over its prompt and the tokens accepted since."""

    def __init__(self, input_ids: torch.Tensor, last: torch.Tensor, max_ngram: int, min_ngram: int):
        self.device = input_ids.device
        self.rows = [PromptLookup([*row, token], max_ngram, min_ngram)
                     for row, token in zip(input_ids.tolist(), last.tolist())]

    def propose(self, k: int) -> torch.Tensor:
        guesses = [row.propose(k) or [row.tokens[-1]] * k for row in self.rows]
        return torch.tensor(guesses, device=self.device)                           # (B, k)

    def accept(self, new: torch.Tensor, n: int) -> None:
        for row, tokens in zip(self.rows, new.tolist()):
            row.extend(tokens)


@torch.no_grad()
def lookup_generate(target, input_ids: torch.Tensor, max_new_tokens: int, k: int = 4, max_ngram: int = 3,
                    min_ngram: int = 1, stop_tokens: Sequence[int] = (), pad_token_id: int | None = None,
                    cuda_graph: bool | str = "auto") -> SpeculativeResult:
    """The target's greedy continuation of ``input_ids`` (B, L), drafted ``k`` tokens a round by ``PromptLookup``
    (n-grams of ``min_ngram`` to ``max_ngram`` tokens) and checked by one ``Verifier`` pass of k + 1 tokens (see the
    module docstring). ``cuda_graph``: "auto" (capture on CUDA), True (required) or False. Stop tokens and padding as
    in ``generate``."""
    return in_rounds(target, input_ids, max_new_tokens, k, stop_tokens, pad_token_id, cuda_graph,
                     session_for=lookup_session,
                     drafter_for=lambda last, *_: LookupDraft(input_ids, last, max_ngram, min_ngram))


def lookup_session(target, max_length: int) -> Session:
    """A static session of ``target`` in which drafts are verified in place; ValueError naming the layers that
    cannot (and ``speculative_generate``, which can decode that target)."""
    cannot = unverifiable_mixers(target)
    if cannot:
        raise ValueError(f"lookup decoding verifies drafts without moving the mixer layers' states (Mixer.verify); "
                         f"layers {sorted(cannot)} are {sorted(set(cannot.values()))} mixers, which cannot: decode "
                         f"this target with speculative_generate instead")
    session = Session(target, max_length=max_length, static=True)
    static_lengths(session.cache)                                                # a plain static cache, or why not
    return session
