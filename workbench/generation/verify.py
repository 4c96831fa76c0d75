"""The target's side of speculative decoding: one pass reads the last accepted token and k drafts, (B, k + 1), and
predicts the greedy token after each; the session then keeps the first n of them (``accept(n)``).

Two ways to do it, chosen by ``target_verifier``:
- ``Verifier``, in place: on a static cache, each pass first sets every attention layer's length to where it starts
  (entries past the accepted tokens are masked for every later query and overwritten by the next pass), and every
  mixer layer runs ``Mixer.verify``, which leaves its state as it was and returns the state after each drafted
  position; ``accept`` moves the states on by the kept ones (``Mixer.accept``). Nothing is recomputed, and on CUDA the
  pass is captured in a CUDA graph once, so a round is one replay. Needs mixers that verify (Mamba-2 and its discrete
  variant: ``verifies``) and a plain static attention cache (``static_lengths``).
- ``Rollback``, for other targets (Hyena or Mamba-1 layers, sliding-window attention): the session checkpoints,
  reads the block eagerly and rolls back to the kept tokens (``Session.rollback``: the attention cache cropped, the
  mixer states rebuilt from the checkpoint by ``Mixer.extend``).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import StaticLayer

from workbench.generation.session import Session, unwrap
from workbench.students.adapter import mixer_attentions
from workbench.students.base import verifies


def plain_static(cache) -> bool:
    """Is ``cache`` a ``StaticCache`` of plain static layers only (no sliding-window ones)?"""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is StaticLayer for layer in layers)


def static_lengths(cache) -> list[torch.Tensor]:
    """The length counters (0-d tensors) of a ``StaticCache``'s layers, which place every write and size every
    mask; ValueError for a cache with another kind of layer (sliding-window, mixer states)."""
    if not plain_static(cache):
        kinds = sorted({type(layer).__name__ for layer in getattr(cache, "layers", None) or []})
        raise ValueError(f"lookup decoding verifies on a plain static attention cache; this target's cache holds "
                         f"{kinds or 'no layers'}: decode it with speculative_generate (a draft model) instead")
    return [layer.cumulative_length for layer in cache.layers]


def unverifiable_mixers(model) -> dict[int, str]:
    """Layer index -> mixer class of the model's mixer layers that cannot verify drafts in place."""
    return {i: type(m.mixer).__name__ for i, m in mixer_attentions(unwrap(model)).items() if not verifies(m.mixer)}


def verifies_in_place(session: Session) -> bool:
    """Can ``Verifier`` run on ``session``: every mixer verifies and its cache is plain static?"""
    return plain_static(session.cache) and not unverifiable_mixers(session.model)


class Verifier:
    """The in-place verification pass (module docstring): ``tokens`` (B, T) read at positions [length, length + T)
    of the session's static cache (of ``max_length`` positions), the greedy prediction (B, T) after each position, on
    the device. The pass hands the model its causal mask over the cache ((1, 1, T, max_length), True where a query
    may attend), made on the device: transformers' own mask for a few new positions would ask the host whether the
    cache is empty, which a CUDA graph cannot capture. ``graph``: captured in a CUDA graph (after one eager warm-up
    pass at the session's length, whose writes the first real pass overwrites), else run eagerly."""

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

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) at the session's length -> the greedy token after each (B, T); the session stays put."""
        self.ids.copy_(tokens)
        self.start.fill_(self.session.length)
        if self.graph is None:
            return self._pass()
        self.graph.replay()
        return self.predicted

    def accept(self, n: int) -> None:
        """After a pass: the session moves on by its first ``n`` tokens (the mixer layers' states with them)."""
        for m in self.session.mixers.values():
            m.accept(n)
        self.session.length += n


class Rollback:
    """Verification for any target (module docstring): read the block eagerly after a checkpoint, then roll back
    to the kept tokens."""

    graph = None   # never captured

    def __init__(self, session: Session):
        self.session = session

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> the greedy token after each (B, T); ``accept`` says how many the session keeps."""
        self.session.checkpoint()
        return self.session.forward(tokens, keep=tokens.shape[1]).argmax(-1)

    def accept(self, n: int) -> None:
        self.session.rollback(self.session.mark + n)


def verification_session(target, max_length: int) -> Session:
    """A session of ``target`` to verify drafts in: static (``max_length`` tokens) where ``Verifier`` can run on it,
    else dynamic (for ``Rollback``; mixers that cannot verify are known before any cache is made)."""
    if unverifiable_mixers(target):
        return Session(target)
    session = Session(target, max_length=max_length, static=True)
    return session if plain_static(session.cache) else Session(target)


def target_verifier(session: Session, batch: int, width: int, max_length: int, graph: bool) -> Verifier | Rollback:
    """The verification of ``session`` (prefilled) for blocks of ``width`` tokens: in place (captured when
    ``graph``) where it can, else by rolling back."""
    if verifies_in_place(session):
        return Verifier(session, batch, width, max_length, graph)
    return Rollback(session)
