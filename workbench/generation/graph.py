"""The per-token decode step captured in a CUDA graph (``generate(..., cuda_graph="auto")`` on a CUDA device).

After the prefill and one eager decode step, the per-token forward is captured once into a CUDA graph with static
input, position and cache buffers (the session's ``StaticCache``), then replayed every token, so decoding is not
bound by kernel launches. That eager step and the capture are a one-off cost, reported as ``graph_capture_seconds``
and left out of ``decode_seconds``, ``per_token_seconds`` and the tokens/s. It needs every mixer's ``step`` to update
its state tensors in place with fixed shapes (Mamba, Mamba-2 and the Laughing mixers do; Hyena's history grows, so a
Hyena student decodes eagerly; ``static_state_problem`` says why, and the result carries it as ``graph_note``).

    problem = static_state_problem(session, batch)     # None: capturable
    step = capture_step(session, token, compile)       # runs the first decode step (step.first_logits), captures
    logits = step(token)                               # every later step: one replay

With ``choose`` (logits (B, V) -> token (B,), device work only: ``engine.Chosen.record`` after
``sampling.race_tokens``), choosing the token and recording it are captured in the same graph, so a step is one replay
and nothing waits for the device; ``step.first_token`` is the warm-up step's choice and ``step(token)`` returns the
next one. Random draws of a ``generator`` in ``choose`` are captured through it (its seed and offset are read at each
replay, so reseeding it between replays reseeds the graph's draws). A captured step serves later prompts of the same
batch: ``session.restart()``, prefill, ``step.rebind()``, then replays.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from workbench.generation.compile import no_recompile, step_context
from workbench.generation.session import Session
from workbench.students.adapter import clone_state


def static_state_problem(session: Session, batch_size: int) -> str | None:
    """Why the session's mixer steps cannot be captured (state tensors replaced or resized by a step), or None.
    Checked on a scratch copy of each state."""
    for i, m in session.mixers.items():
        mixer = m.mixer
        scratch = clone_state(m.state)
        before = {k: (v, v.shape) for k, v in scratch.items() if torch.is_tensor(v)}
        x = torch.zeros(batch_size, mixer.d_model, device=next(mixer.parameters()).device,
                        dtype=next(mixer.parameters()).dtype)
        _, after = mixer.step(x, scratch)
        for k, (tensor, shape) in before.items():
            if after.get(k) is not tensor or after[k].shape != shape:
                return (f"layer {i}: {type(mixer).__name__}.step replaces or resizes its state {k!r}, so its decode "
                        f"step cannot be captured in a CUDA graph")
    return None


class GraphStep:
    """The per-token forward captured in a CUDA graph: write the token and its position into the static inputs,
    replay, read the static logits (or, with ``choose``, the token chosen from them in the graph). Captured after one
    eager step so lazily created buffers exist (and compiled modules have compiled); ``warmup_seconds`` is that
    step's time, ``capture_context`` is entered around the capture. Replays advance ``session.length``; the mixer
    layers' own counts stay where the capture left them (a static cache is not counted, see
    ``workbench.students.adapter``)."""

    def __init__(self, session: Session, token: torch.Tensor,
                 capture_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 choose: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 generator: torch.Generator | None = None):
        model = session.model
        device = token.device
        self.session = session
        self.choose = choose
        self.ids = token.reshape(-1, 1).clone()                         # (B, 1)
        self.position = torch.full((1, 1), session.length, dtype=torch.long, device=device)
        kwargs = {**session.model_kwargs(), "position_ids": self.position}
        if session.takes_cache_position:
            kwargs["cache_position"] = self.position[0]
        if session.keeps_logits:
            kwargs["logits_to_keep"] = 1
        start = time.perf_counter()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), session.attention():             # the warm-up is a real decode step
            self.first_logits = model(input_ids=self.ids, **kwargs).logits[:, -1].clone()
            self.first_token = choose(self.first_logits) if choose is not None else None
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.warmup_seconds = time.perf_counter() - start
        session.length += 1
        self.position.fill_(session.length)
        self.graph = torch.cuda.CUDAGraph()
        if generator is not None and generator.device.type == "cuda":   # (the default one is always registered)
            self.graph.register_generator_state(generator)
        with capture_context(), session.attention(), torch.cuda.graph(self.graph):   # recorded, not run
            self.logits = model(input_ids=self.ids, **kwargs).logits[:, -1]
            self.token = choose(self.logits) if choose is not None else None
        self.states = {i: dict(m.state) for i, m in session.mixers.items()}  # the mixer state tensors it reads

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) -> logits (B, V) of the next position; with ``choose``, the token (B,) chosen from them."""
        self.ids.copy_(token.reshape(-1, 1))
        self.position.fill_(self.session.length)
        self.graph.replay()
        self.session.length += 1
        return self.logits if self.choose is None else self.token

    def rebind(self) -> None:
        """After ``session.restart()`` and the prefill of a new prompt (same batch): copy each mixer layer's new
        state into the tensors the graph reads and updates, and make them the layer's state again. (The attention
        cache was emptied in place and refilled by the prefill: nothing to do.)"""
        for i, m in self.session.mixers.items():
            captured = {k: v for k, v in self.states[i].items() if torch.is_tensor(v)}
            for k, tensor in captured.items():
                tensor.copy_(m.state[k])
            m.state = {**m.state, **captured}


def capture_step(session: Session, token: torch.Tensor, compile: bool,
                 choose: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 generator: torch.Generator | None = None) -> GraphStep:
    """The first decode step, run and captured as a ``GraphStep`` (a CUDA device). With ``compile`` (inside
    ``compiled_decoding``) its eager warm-up compiles (``first_compile``) and the capture may not recompile.
    ``choose`` and ``generator``: see ``GraphStep`` (the token chosen inside the graph)."""
    with step_context(compile, first=True):
        return GraphStep(session, token, no_recompile if compile else contextlib.nullcontext, choose, generator)
