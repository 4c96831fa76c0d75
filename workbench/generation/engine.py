"""One decode loop for teachers, students and hybrids.

    result = generate(model, input_ids, max_new_tokens=64, temperature=0.7, top_p=0.9, stop_tokens=[eos])
    result.tokens                # (B, L_new) new tokens, padded after each sequence's stop token
    result.decode_tokens_per_s   # and prefill_seconds, decode_seconds, per_token_seconds, graph_capture_seconds

The model is driven through its own Hugging Face forward (so positions, masks and rotary embeddings are its own).
Kept attention layers use a transformers cache (``DynamicCache`` eagerly, ``StaticCache`` under a CUDA graph). Mixer
layers keep their recurrent state in the decoding ``Session``: inside ``mixer_slots(model)`` each ``MixerAttention``
is swapped for an ``EngineMixerAttention`` on the same mixer, which reads and writes the state of the session bound
to it: the prompt goes through ``Mixer.prefill`` (one parallel pass that also returns the state), every later token
through ``Mixer.step``, and several later tokens at once (a further prompt chunk, drafted tokens to verify) through
``Mixer.extend``. Like ``MixerAttention`` it records its token count in the cache with a (B, 1, L, 1) marker,
so the cache's length (hence positions and mask sizes) is right whichever layers are mixers.

A session can mark a point (``checkpoint``) and later go back to any length after it (``rollback``): the attention
cache is cropped, and each mixer layer's state is restored from its snapshot and carried over the layer inputs it
recorded since, up to the kept length, by ``Mixer.extend``. Speculative decoding uses this
(``workbench.generation.speculative``).

CUDA graph (``cuda_graph="auto"`` on a CUDA device): after the prefill and one eager decode step, the per-token
forward is captured once into a CUDA graph with static input, position and cache buffers, then replayed every token,
so decoding is not bound by kernel launches. That eager step and the capture are a one-off cost, reported as
``graph_capture_seconds`` and left out of ``decode_seconds``, ``per_token_seconds`` and the tokens/s. It needs
every mixer's ``step`` to update its state tensors in place with fixed shapes (Mamba, Mamba-2 do; Hyena's history
grows, so a Hyena student decodes eagerly; the result says why in ``graph_note``).

Compiled decode step (``compile=True``): after the prefill, every mixer's ``step`` and every decoder layer's other
parameterised children (MLP, norms; the attention is left as it is) are wrapped in ``torch.compile`` (inductor,
static shapes, fullgraph), so each runs as a few fused kernels instead of dozens of small ones. They compile in the
first decode step, which runs eagerly (before the CUDA graph's capture, if any) and is reported as
``compile_seconds``, kept out of the decode time; later steps (the capture included) must reuse that code, and a
recompilation raises ``CompileError``. The layers share code: one compilation serves all layers of one shape. A
mixer whose step changes its state's shapes (Hyena) keeps an eager step (``compile_note`` says why). The model's
modules are restored on exit.

Prompts in a batch have one length (no padding): mixers take no attention mask, so pad tokens would enter their state.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import Cache

from workbench.generation.sampling import check_sampling, next_tokens
from workbench.students.base import Mixer
from workbench.students.adapter import MixerAttention
from workbench.teachers import anatomy
from workbench.teachers.wrapper import Teacher


@dataclass
class GenerationResult:
    tokens: torch.Tensor                  # (B, L_new) new tokens; pad after a sequence's first stop token
    prefill_seconds: float                # prompt forward and first token (time to first token)
    decode_seconds: float                 # every later token, except the CUDA graph's warm-up and capture step
    per_token_seconds: list[float]        # one entry per decode step (after the first token), that step excepted
    lengths: list[int] = field(default_factory=list)  # new tokens per sequence, its stop token included
    cuda_graph: bool = False              # whether decode steps replayed a CUDA graph
    graph_note: str | None = None         # why not, where a graph was asked for ("auto") and not used
    state_bytes: int = 0                  # bytes of the mixer layers' recurrent states at the end
    graph_capture_seconds: float = 0.0    # the step that captured the CUDA graph (an eager warm-up step, whose
                                          # token is kept, and the capture; with compile, the capture only);
                                          # 0 without a graph
    compiled: bool = False                # whether decode steps ran torch.compile'd modules
    compile_seconds: float = 0.0          # the first decode step with them: compilation and that step's run
                                          # (with a graph, its eager warm-up); 0 without compile
    compile_note: str | None = None       # what was left uncompiled and why, where compile was asked for

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced by the timed decode steps (all sequences) per second of their time (``decode_seconds``:
        the CUDA graph's one-off warm-up and capture excluded)."""
        steps = len(self.per_token_seconds)
        return self.tokens.shape[0] * steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def latency_percentiles(self, *qs: float) -> list[float | None]:
        """Per-token latency percentiles (e.g. 50, 95) in seconds; None without decode steps."""
        if not self.per_token_seconds:
            return [None for _ in qs]
        return [float(np.percentile(self.per_token_seconds, q)) for q in qs]


def unwrap(model) -> nn.Module:
    """The Hugging Face model of a workbench Teacher, or the model itself."""
    return model.model if isinstance(model, Teacher) else model


def clone_state(state: Any) -> Any:
    """A copy of a mixer state (a dict of tensors; other values are kept as they are)."""
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}


# ---- mixer layers driven by a session -------------------------------------------------------------------------------

@dataclass
class MixerLayerState:
    """One mixer layer's decoding state in one session."""
    state: Any = None                                       # the mixer's state after every token seen; None: none yet
    saved: Any = None                                       # snapshot at the session's checkpoint
    inputs: list[torch.Tensor] = field(default_factory=list)  # (B, L_i, D) layer inputs since the checkpoint
    recording: bool = False

    def run(self, mixer: Mixer, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> y (B, L, D): prefill for the first call, then ``step`` for one token and ``extend`` for
        several (a later prompt chunk, or drafted tokens to verify)."""
        if self.recording:
            self.inputs.append(x)
        if self.state is None:
            y, self.state = mixer.prefill(x)
            return y
        if x.shape[1] == 1:
            y_t, self.state = mixer.step(x[:, 0], self.state)
            return y_t[:, None]
        y, self.state = mixer.extend(x, self.state)
        return y


class EngineMixerAttention(MixerAttention):
    """A ``MixerAttention`` whose recurrent state lives in the session bound to it (``bound``), not in its
    per-cache store. Without a cache or a bound session it runs the mixer's parallel forward."""

    def __init__(self, original: MixerAttention):
        super().__init__(original.mixer, original.layer_idx, original.outputs)
        self.original = [original]  # a list, so the replaced module is not registered as a child
        self.bound: MixerLayerState | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        caches = [a for a in (*args, *kwargs.values()) if isinstance(a, Cache)]
        if not caches or self.bound is None:
            y = self.mixer(hidden_states)
        else:
            y = self.bound.run(self.mixer, hidden_states)
            marker = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache_kwargs = {k: v for k, v in kwargs.items() if k == "cache_position"}  # older transformers' static
            caches[0].update(marker, marker, self.layer_idx, cache_kwargs)
        return (y, *[None] * (self.outputs - 1)) if self.outputs else y


@contextlib.contextmanager
def mixer_slots(model) -> Iterator[dict[int, EngineMixerAttention]]:
    """Within the context, every mixer layer of ``model`` runs as an ``EngineMixerAttention`` (layer index -> it);
    the original modules are put back on exit. Nested use on the same model reuses the installed slots."""
    model = unwrap(model)
    swapped, slots = [], {}
    for i, layer in enumerate(anatomy.decoder_layers(model)):
        name, module = anatomy.attention_of(layer)
        if isinstance(module, EngineMixerAttention):
            slots[i] = module
        elif isinstance(module, MixerAttention):
            slots[i] = EngineMixerAttention(module)
            setattr(layer, name, slots[i])
            swapped.append((layer, name, module))
    try:
        yield slots
    finally:
        for layer, name, module in swapped:
            setattr(layer, name, module)


# ---- a decoding session ---------------------------------------------------------------------------------------------

def _forward_parameters(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def cache_keyword(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes its cache: "cache" in newer transformers (which deprecate
    "past_key_values"), else "past_key_values"."""
    return "cache" if "cache" in _forward_parameters(unwrap(model)) else "past_key_values"


class Session:
    """Decoding state of one model for one batch: the attention cache and every mixer layer's state.

    ``forward(ids)`` feeds (B, L) new tokens and returns the logits of the last ``keep`` of them. Use inside
    ``mixer_slots(model)`` (pass its slots)."""

    def __init__(self, model: nn.Module, slots: dict[int, EngineMixerAttention], max_length: int | None = None,
                 static: bool = False):
        self.model = unwrap(model)
        self.slots = slots
        config = self.model.config
        if static:
            if max_length is None:
                raise ValueError("a static cache needs max_length (prompt + new tokens)")
            self.cache = StaticCache(config=config, max_cache_len=max_length)
        else:
            self.cache = DynamicCache(config=config)
        self.mixers = {i: MixerLayerState() for i in slots}
        self.length = 0              # tokens consumed
        self.mark = 0                # length at the last checkpoint
        params = _forward_parameters(self.model)
        self.cache_argument = cache_keyword(self.model)
        self.keeps_logits = "logits_to_keep" in params
        self.takes_cache_position = "cache_position" in params

    def bind(self) -> None:
        for i, slot in self.slots.items():
            slot.bound = self.mixers[i]

    def model_kwargs(self) -> dict:
        return {self.cache_argument: self.cache, "use_cache": True}

    def forward(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """ids (B, L) -> logits (B, keep, V) of the last ``keep`` positions; the session moves on by L tokens."""
        self.bind()
        kwargs = self.model_kwargs()
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        logits = self.model(input_ids=ids, **kwargs).logits[:, -keep:]
        self.length += ids.shape[1]
        return logits

    def state_bytes(self) -> int:
        """Bytes held by the mixer layers' states (what a decode step reads of them)."""
        return sum(v.nbytes for m in self.mixers.values() if m.state is not None
                   for v in m.state.values() if torch.is_tensor(v))

    # ---- going back ----------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Remember the present, so that ``rollback`` can return to any length from here on."""
        self.mark = self.length
        for m in self.mixers.values():
            m.saved, m.inputs, m.recording = clone_state(m.state), [], True

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
            for slot_index, m in self.mixers.items():
                state = m.saved
                kept = torch.cat(m.inputs, dim=1)[:, : length - self.mark] if m.inputs else None
                mixer = self.slots[slot_index].mixer
                if kept is not None and kept.shape[1]:
                    _, state = mixer.extend(kept, state)                  # the kept tokens, in one pass
                m.state = state
        for m in self.mixers.values():
            m.saved, m.inputs, m.recording = None, [], False
        self.length = length


# ---- CUDA graph of one decode step ----------------------------------------------------------------------------------

def static_state_problem(session: Session, batch_size: int) -> str | None:
    """Why the session's mixer steps cannot be captured (state tensors replaced or resized by a step), or None.
    Checked on a scratch copy of each state."""
    for i, m in session.mixers.items():
        mixer = session.slots[i].mixer
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
    replay, read the static logits. Captured after one eager step so lazily created buffers exist (and compiled
    modules have compiled); ``warmup_seconds`` is that step's time, ``capture_context`` is entered around the
    capture."""

    def __init__(self, session: Session, token: torch.Tensor,
                 capture_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        model = session.model
        device = token.device
        self.session = session
        self.ids = token.reshape(-1, 1).clone()                         # (B, 1)
        self.position = torch.full((1, 1), session.length, dtype=torch.long, device=device)
        kwargs = {**session.model_kwargs(), "position_ids": self.position}
        if session.takes_cache_position:
            kwargs["cache_position"] = self.position[0]
        if session.keeps_logits:
            kwargs["logits_to_keep"] = 1
        session.bind()
        start = time.perf_counter()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):                                  # the warm-up is a real decode step
            self.first_logits = model(input_ids=self.ids, **kwargs).logits[:, -1].clone()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.warmup_seconds = time.perf_counter() - start
        session.length += 1
        self.position.fill_(session.length)
        self.graph = torch.cuda.CUDAGraph()
        with capture_context(), torch.cuda.graph(self.graph):           # recorded, not run
            self.logits = model(input_ids=self.ids, **kwargs).logits[:, -1]

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) -> logits (B, V) of the next position."""
        self.ids.copy_(token.reshape(-1, 1))
        self.position.fill_(self.session.length)
        self.graph.replay()
        self.session.length += 1
        return self.logits


# ---- torch.compile of the decode step -------------------------------------------------------------------------------

class CompileError(RuntimeError):
    """torch.compile could not compile the decode step, or would recompile it after the first step."""


def compile_targets(model: nn.Module, slots: dict[int, EngineMixerAttention],
                    mixer_steps: bool = True) -> list[tuple[nn.Module, str]]:
    """(module, method name) pairs ``compiled_decoding`` compiles: each mixer's ``step`` (if ``mixer_steps``), and
    the ``forward`` of the MLP and norms of every decoder layer (``anatomy.around_attention``)."""
    targets: list[tuple[nn.Module, str]] = [(slot.mixer, "step") for slot in slots.values()] if mixer_steps else []
    for layer in anatomy.decoder_layers(unwrap(model)):
        targets += [(child, "forward") for _, child in anatomy.around_attention(layer)]
    return targets


@contextlib.contextmanager
def compiled_decoding(targets: Sequence[tuple[nn.Module, str]]) -> Iterator[None]:
    """Within the context, each (module, method) of ``targets`` is replaced on its instance by
    ``torch.compile(method, dynamic=False, fullgraph=True)`` (compiled lazily, at its first call); the instances
    are left as they were on exit."""
    saved = [(module, name, module.__dict__.get(name)) for module, name in targets]
    try:
        for module, name in targets:
            setattr(module, name, torch.compile(getattr(module, name), dynamic=False, fullgraph=True))
        yield
    finally:
        for module, name, previous in saved:
            if previous is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, previous)


@contextlib.contextmanager
def compile_errors(what: str) -> Iterator[None]:
    """Re-raise torch.compile's errors in the context as a ``CompileError`` that says what failed and what to do."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CompileError(f"torch.compile failed {what} ({type(err).__name__}: {first}); decode without it "
                           f"(generate(..., compile=False), or leave out --compile)") from err


@contextlib.contextmanager
def first_compile() -> Iterator[None]:
    """The compiling step: errors as ``CompileError``, and one that would run uncompiled (dynamo's recompile
    limit reached) fails rather than falling back to eager."""
    with compile_errors("in the first decode step"), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@contextlib.contextmanager
def no_recompile() -> Iterator[None]:
    """After the compiling step: a step that would recompile raises ``CompileError`` instead (so nothing compiles
    inside a CUDA-graph capture)."""
    with compile_errors("after the first decode step: a later step would recompile"), \
            torch.compiler.set_stance("fail_on_recompile"):
        yield


def _step_context(compile: bool, first: bool) -> contextlib.AbstractContextManager:
    """What a decode step runs in: ``first_compile`` for the first step with compile, ``no_recompile`` after it."""
    if not compile:
        return contextlib.nullcontext()
    return first_compile() if first else no_recompile()


def capture_step(session: Session, token: torch.Tensor, compile: bool) -> GraphStep:
    """The first decode step, run and captured as a ``GraphStep`` (a CUDA device). With ``compile`` (inside
    ``compiled_decoding``) its eager warm-up compiles (``first_compile``) and the capture may not recompile."""
    with _step_context(compile, first=True):
        return GraphStep(session, token, no_recompile if compile else contextlib.nullcontext)


# ---- generate -------------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_pad(model: nn.Module, stop_tokens: Sequence[int]) -> int:
    pad = model.config.pad_token_id
    return int(pad) if pad is not None else (int(stop_tokens[0]) if stop_tokens else 0)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop_tokens: Sequence[int] = (),
             pad_token_id: int | None = None, generator: torch.Generator | None = None,
             cuda_graph: bool | str = "auto", compile: bool = False,
             prefill_chunk: int | None = None) -> GenerationResult:
    """Continue each row of ``input_ids`` (B, L) by up to ``max_new_tokens`` tokens.

    Greedy for temperature 0, else sampling with ``top_k`` / ``top_p`` drawn through ``generator``. A sequence is
    finished after its first token in ``stop_tokens``; its later positions hold ``pad_token_id`` (default: the
    model's pad token, else the first stop token), and decoding ends when every sequence is finished.
    ``cuda_graph``: "auto" (on CUDA when the mixers allow it), True (required) or False (eager).
    ``compile``: fuse the decode step with torch.compile (see the module docstring); its one-off cost is
    ``compile_seconds``, outside the decode time. Raises ``CompileError`` where it cannot.
    ``prefill_chunk``: feed the prompt ``prefill_chunk`` tokens at a time (mixers continue with ``Mixer.extend``,
    attention through its cache), so the prefill's activations, and the peak memory they set, stop growing with the
    prompt's length; None: the whole prompt in one pass."""
    check_sampling(temperature, top_k, top_p)
    if prefill_chunk is not None and prefill_chunk < 1:
        raise ValueError(f"prefill_chunk must be a positive number of tokens or None, got {prefill_chunk}")
    if cuda_graph not in ("auto", True, False):
        raise ValueError(f"cuda_graph must be 'auto', True or False, got {cuda_graph!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    model = unwrap(model)
    device = input_ids.device
    batch = input_ids.shape[0]
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    pad = default_pad(model, stop_tokens) if pad_token_id is None else pad_token_id
    want_graph = device.type == "cuda" and cuda_graph in ("auto", True) and max_new_tokens > 2
    if cuda_graph is True and device.type != "cuda":
        raise ValueError("cuda_graph=True needs the model and input_ids on a CUDA device")
    note = None

    with mixer_slots(model) as slots:
        session = Session(model, slots, max_length=input_ids.shape[1] + max_new_tokens, static=want_graph)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
        out: list[torch.Tensor] = []

        def choose(logits: torch.Tensor) -> torch.Tensor:
            token = next_tokens(logits, temperature, top_k, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            out.append(token)
            if len(stops):
                stopped = torch.isin(token, stops) & ~finished
                lengths.masked_fill_(stopped, len(out))
                finished.logical_or_(stopped)
            return token

        _sync(device)
        t0 = time.perf_counter()
        chunk = input_ids.shape[1] if prefill_chunk is None else prefill_chunk
        for start in range(0, input_ids.shape[1], chunk):
            logits = session.forward(input_ids[:, start:start + chunk])
        token = choose(logits[:, -1])
        _sync(device)
        prefill = time.perf_counter() - t0

        step = None
        problem = static_state_problem(session, batch) if want_graph or compile else None
        if want_graph:
            note = problem
            if note is not None and cuda_graph is True:
                raise ValueError(note)
        compile_note = f"mixer steps left uncompiled: {problem}" if compile and problem is not None else None
        targets = compile_targets(model, slots, mixer_steps=problem is None) if compile else []
        per_token: list[float] = []
        capture = compiling = 0.0
        with compiled_decoding(targets):
            while len(out) < max_new_tokens and not (len(stops) and bool(finished.all())):
                t = time.perf_counter()
                first = len(out) == 1
                capturing = want_graph and note is None and step is None
                if capturing:
                    step = capture_step(session, token, compile)
                    logits = step.first_logits
                else:
                    with _step_context(compile, first):
                        logits = step(token) if step is not None else session.forward(token[:, None])[:, -1]
                token = choose(logits)
                _sync(device)
                elapsed = time.perf_counter() - t
                if compile and first:
                    compiling = step.warmup_seconds if capturing else elapsed
                if capturing:
                    capture = elapsed - compiling
                elif not (compile and first):
                    per_token.append(elapsed)

    return GenerationResult(tokens=torch.stack(out, dim=1), prefill_seconds=prefill,
                            decode_seconds=float(sum(per_token)), per_token_seconds=per_token,
                            lengths=lengths.clamp(max=len(out)).tolist(), cuda_graph=step is not None,
                            graph_note=note, state_bytes=session.state_bytes(), graph_capture_seconds=capture,
                            compiled=compile and len(out) > 1, compile_seconds=compiling, compile_note=compile_note)
