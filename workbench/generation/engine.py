"""One decode loop for teachers, students and hybrids.

    result = generate(model, input_ids, max_new_tokens=64, temperature=0.7, top_p=0.9, stop_tokens=[eos])
    result.tokens                # (B, L_new) new tokens, padded after each sequence's stop token
    result.decode_tokens_per_s   # and prefill_seconds, decode_seconds, per_token_seconds, graph_capture_seconds
    generate(model, input_ids, 64, options=DecodeOptions(compile=True))   # or generate(..., compile=True)
    decoder = Decoder(model, THROUGHPUT)      # many batches of one shape: the captured step is kept between calls
    decoder.generate(input_ids, 64, temperature=1.0, top_p=0.95, generator=generator)

``generate`` is ``prefill(session, ids, chunk)`` followed by a decode loop, over the pieces of this package:
- ``session``: the model's attention cache and mixer layers' states (``Session``), fed by the model's own forward;
- ``graph``: the per-token step captured in a CUDA graph (``DecodeOptions.cuda_graph``);
- ``compile``: the decode step's modules fused by torch.compile (``DecodeOptions.compile``);
- ``sampling``: the token chosen from the step's logits, after the step or, with ``DecodeOptions.fused_step``,
  inside it (and its CUDA graph), recorded on the device (``Chosen``).

Throughput (``THROUGHPUT``: fused step, no per-step timing, a stop check every 16 steps) against latency measurement
(the defaults): the same tokens, but on CUDA a decode step is then one graph replay that the host does not wait for,
so the host queues the next steps while the device runs this one.

The prompt can be fed in chunks (``DecodeOptions.prefill_chunk``): mixers continue with ``Mixer.extend``, attention
through its cache, so the prefill's activations, and the peak memory they set, stop growing with the prompt's length.

Prompts in a batch have one length (no padding): mixers take no attention mask, so pad tokens would enter their state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workbench.device import sync
from workbench.generation.compile import compile_targets, compiled_decoding, step_context
from workbench.generation.graph import GraphStep, capture_step, static_state_problem
from workbench.generation.sampling import check_sampling, next_tokens, race_tokens
from workbench.generation.session import Session, unwrap


@dataclass(frozen=True)
class DecodeOptions:
    """How ``generate`` decodes (the same tokens either way; only time and memory change)."""
    cuda_graph: bool | str = "auto"     # "auto": replay a CUDA graph on CUDA when every mixer's step allows it, as it
                                        # is the fast path there; True: required (an error where not); False: eager
    compile: bool = False               # torch.compile the decode step; off, since its one-off compilation outlasts
                                        # a short generation
    prefill_chunk: int | None = None    # feed the prompt this many tokens at a time (caps the prefill's peak
                                        # memory); None: the whole prompt in one pass, the fastest
    fused_step: bool = False            # choose each token inside the decode step (``sampling.race_tokens``: the
                                        # tokens torch.multinomial would draw from the same generator) and record it
                                        # on the device, so that with a CUDA graph a step is one replay and no host
                                        # sync; off: the token is chosen after the step, by ``next_tokens``
    step_timing: bool = True            # wait for every decode step to time it (``per_token_seconds``, latency
                                        # percentiles); False: no wait per step, the decode timed as a whole and
                                        # ``per_token_seconds`` left empty
    stop_check_every: int = 1           # look whether every sequence has stopped once every this many steps (a
                                        # look waits for the device); steps after the last stop only add padding,
                                        # which is cut off, so the tokens are the same
    count_kernels: bool = False         # on CUDA, run one decode step (the first after the capture, or the second
                                        # eager one) under the profiler and report its GPU kernels
                                        # (``GenerationResult.kernels_per_step``); that step is left out of the timing
    fold_norms: bool = True             # with compile: fold each layer's RMS pre-norms into the projections that read
                                        # them (``compile_targets``), two kernels fewer per layer (an H200, 135M
                                        # students: 3-24% more tokens/s, docs/results.md); no effect without compile
    fold_residuals: bool = True         # with compile and fold_norms (no effect without them): add each Mamba-2
                                        # layer's two residuals inside its out_proj and down projection
                                        # (``compile_targets``): on an H200, 60 kernels fewer and 8% off the replay
                                        # of a 135M all-Mamba-2 student's step; end to end within the bench's
                                        # process-to-process spread (docs/results.md, "Residual adds in a GEMV's
                                        # epilogue" and "The GEMV form measured")
    engine_attention: bool = True       # decode the kept attention layers of an sdpa model through the engine's own
                                        # attention (``workbench.generation.attention``: grouped-query heads read in
                                        # place, the same on every transformers version); False: the version's own

    def __post_init__(self):
        if self.cuda_graph not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be 'auto', True or False, got {self.cuda_graph!r}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive number of tokens or None, got {self.prefill_chunk}")
        if self.stop_check_every < 1:
            raise ValueError(f"stop_check_every must be a positive number of steps, got {self.stop_check_every}")

    @classmethod
    def of(cls, options: DecodeOptions | None = None, **fields) -> DecodeOptions:
        """``options`` (default: the defaults) with ``fields`` (cuda_graph=, compile=, prefill_chunk=, ...)
        replacing its own: the one place keyword arguments become options."""
        return dataclasses.replace(options or cls(), **fields)


THROUGHPUT = DecodeOptions(fused_step=True, step_timing=False, stop_check_every=16)  # many tokens, no latencies


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
    decode_steps: int | None = None       # decode steps timed in decode_seconds; None: one per per_token_seconds
    kernels_per_step: int | None = None   # GPU kernels (and memory copies / sets) one decode step ran, with
                                          # ``DecodeOptions.count_kernels`` on CUDA; None otherwise

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced by the timed decode steps (all sequences) per second of their time (``decode_seconds``:
        the CUDA graph's one-off warm-up and capture excluded)."""
        steps = len(self.per_token_seconds) if self.decode_steps is None else self.decode_steps
        return self.tokens.shape[0] * steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def latency_percentiles(self, *qs: float) -> list[float | None]:
        """Per-token latency percentiles (e.g. 50, 95) in seconds; None without decode steps."""
        if not self.per_token_seconds:
            return [None for _ in qs]
        return [float(np.percentile(self.per_token_seconds, q)) for q in qs]


class KernelCounter:
    """Counts the GPU kernels (memory copies and sets included) that run on the device while it is active, through
    torch's profiler (kernels replayed by a CUDA graph are seen one by one): ``count`` after the block."""

    def __init__(self, device: torch.device):
        from torch.profiler import ProfilerActivity, profile

        self.device = device
        self.profiler = profile(activities=[ProfilerActivity.CUDA])
        self.count: int | None = None

    def __enter__(self) -> KernelCounter:
        self.profiler.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.profiler.__exit__(*exc)
        self.count = sum(event.count for event in self.profiler.key_averages())


def default_pad(model: nn.Module, stop_tokens: Sequence[int]) -> int:
    pad = model.config.pad_token_id
    return int(pad) if pad is not None else (int(stop_tokens[0]) if stop_tokens else 0)


def prefill(session: Session, ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Feed the prompt ids (B, L) to ``session``, ``chunk`` tokens at a time (None: in one pass); the logits (B, V)
    of its last position."""
    chunk = ids.shape[1] if chunk is None else chunk
    for start in range(0, ids.shape[1], chunk):
        logits = session.forward(ids[:, start:start + chunk])
    return logits[:, -1]


class Chosen:
    """The tokens chosen so far, on the device, updated in place (so that a captured step can record them):
    ``tokens`` (B, N) filled from the left (pad after a sequence's stop token), ``count`` () tokens chosen,
    ``finished`` (B,) and ``lengths`` (B,) as in ``GenerationResult``."""

    def __init__(self, batch: int, max_new_tokens: int, stop_tokens: Sequence[int], pad: int, device: torch.device):
        self.pad, self.max_new_tokens = pad, max_new_tokens
        self.stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)             # (S,)
        self.tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)   # (B, N)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)

    def reset(self) -> None:
        """Nothing chosen, for the next prompt."""
        self.tokens.fill_(self.pad)
        self.count.zero_()
        self.finished.zero_()
        self.lengths.fill_(self.max_new_tokens)

    def record(self, token: torch.Tensor) -> torch.Tensor:
        """Record every sequence's next token (B,), the pad token for a finished one, and return what was recorded.
        Device work only (no host sync)."""
        token = token.masked_fill(self.finished, self.pad)
        self.tokens.index_copy_(1, self.count.view(1), token[:, None])
        self.count.add_(1)
        if len(self.stops):
            stopped = (token[:, None] == self.stops).any(-1) & ~self.finished                      # (B,)
            self.lengths.copy_(torch.where(stopped, self.count, self.lengths))
            self.finished.logical_or_(stopped)
        return token


@dataclass
class _Kept:
    """What a ``Decoder`` keeps from its last call, for the next call of the same shape."""
    key: tuple                        # device, batch, prompt length, max_new_tokens, sampling, stop and pad tokens
    generator: torch.Generator | None  # the very object the graph draws through
    session: Session
    chosen: Chosen
    step: GraphStep | None            # None: the call decoded eagerly
    note: str | None                  # its graph_note
    compile_note: str | None


class Decoder:
    """``generate`` for many batches of one shape. A call keeps its session (with a CUDA graph: the static attention
    cache and the captured step); the next call with the same batch size, prompt length, ``max_new_tokens``, sampling
    settings, stop and pad tokens and the same generator object reuses them (reseed the generator between calls: a
    graph reads its seed at each replay), so it pays neither the allocation nor the warm-up step and capture. A call
    of any other shape starts over, and so does every call that compiles eagerly (``compile`` without a graph).
    ``generate(model, ...)`` is one call of a new ``Decoder``; tokens do not depend on whether a call reused one."""

    def __init__(self, model, options: DecodeOptions | None = None, **decode):
        self.model = unwrap(model)
        self.options = DecodeOptions.of(options, **decode)
        self.captures = 0                 # CUDA graphs captured by this decoder
        self.reuses = 0                   # calls that reused the session (and graph) of the call before
        self._kept: _Kept | None = None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop_tokens: Sequence[int] = (),
                 pad_token_id: int | None = None, generator: torch.Generator | None = None) -> GenerationResult:
        """As ``generate`` (the module's function), with this decoder's options."""
        options = self.options
        check_sampling(temperature, top_k, top_p)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        model = self.model
        device = input_ids.device
        batch = input_ids.shape[0]
        stops = tuple(int(t) for t in stop_tokens)
        pad = default_pad(model, stops) if pad_token_id is None else pad_token_id
        want_graph = device.type == "cuda" and options.cuda_graph in ("auto", True) and max_new_tokens > 2
        if options.cuda_graph is True and device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model and input_ids on a CUDA device")
        compile = options.compile

        key = (device, batch, input_ids.shape[1], max_new_tokens, temperature, top_k, top_p, stops, pad)
        kept, self._kept = self._kept, None
        if kept is not None and (kept.key != key or kept.generator is not generator):
            kept = None
        if kept is not None:
            session, chosen, step = kept.session, kept.chosen, kept.step
            session.restart()
            chosen.reset()
            self.reuses += 1
        else:
            session = Session(model, max_length=input_ids.shape[1] + max_new_tokens, static=want_graph,
                              engine_attention=options.engine_attention)
            chosen = Chosen(batch, max_new_tokens, stops, pad, device)
            step = None
        sampler = race_tokens if options.fused_step else next_tokens

        def choose(logits: torch.Tensor) -> torch.Tensor:
            return chosen.record(sampler(logits, temperature, top_k, top_p, generator))

        sync(device)
        t0 = time.perf_counter()
        token = choose(prefill(session, input_ids, options.prefill_chunk))
        if step is not None:
            step.rebind()
        sync(device)
        prefill_seconds = time.perf_counter() - t0

        note = None
        if kept is None:
            problem = static_state_problem(session, batch) if want_graph or compile else None
            if want_graph:
                note = problem
                if note is not None and options.cuda_graph is True:
                    raise ValueError(note)
            compile_note = f"mixer steps left uncompiled: {problem}" if compile and problem is not None else None
            targets = (compile_targets(model, mixer_steps=problem is None, fold_norms=options.fold_norms,
                                       fold_residuals=options.fold_residuals) if compile else [])
        else:                                                       # a kept graph replays the compiled step
            note, compile_note, targets = kept.note, kept.compile_note, []
        per_token: list[float] = []
        kernels: int | None = None
        capture = compiling = 0.0
        untimed_start, untimed_steps = None, 0
        n = 1                                                       # tokens chosen
        with compiled_decoding(targets):
            while n < max_new_tokens and not (stops and (n - 1) % options.stop_check_every == 0
                                              and bool(chosen.finished.all())):
                t = time.perf_counter()
                first = n == 1 and kept is None
                capturing = want_graph and note is None and step is None
                counting = (options.count_kernels and device.type == "cuda" and kernels is None and not capturing
                            and not first)
                counter = KernelCounter(device) if counting else contextlib.nullcontext()
                if capturing:
                    step = capture_step(session, token, compile, choose if options.fused_step else None, generator)
                    self.captures += 1
                    token = step.first_token if options.fused_step else choose(step.first_logits)
                elif step is not None:
                    with counter:
                        token = step(token) if options.fused_step else choose(step(token))
                else:
                    with counter:
                        with step_context(compile, first):
                            logits = session.forward(token[:, None])[:, -1]
                        token = choose(logits)
                n += 1
                if counting:                                        # a profiled step is not timed
                    kernels = counter.count
                    continue
                if not (options.step_timing or capturing or (compile and first)):
                    untimed_start = t if untimed_start is None else untimed_start
                    untimed_steps += 1
                    continue
                sync(device)
                elapsed = time.perf_counter() - t
                if compile and first:
                    compiling = step.warmup_seconds if capturing else elapsed
                if capturing:
                    capture = elapsed - compiling
                elif not (compile and first):
                    per_token.append(elapsed)
        sync(device)
        untimed = time.perf_counter() - untimed_start if untimed_start is not None else 0.0

        lengths = chosen.lengths.clamp(max=n)
        if stops and n > 1 and bool(chosen.finished.all()):       # steps after the last stop added only padding
            n = int(lengths.max())
        if step is not None or not compile:
            self._kept = _Kept(key, generator, session, chosen, step, note, compile_note)
        return GenerationResult(tokens=chosen.tokens[:, :n].clone(), prefill_seconds=prefill_seconds,
                                decode_seconds=float(sum(per_token)) + untimed, per_token_seconds=per_token,
                                lengths=lengths.tolist(), cuda_graph=step is not None, graph_note=note,
                                state_bytes=session.state_bytes(), graph_capture_seconds=capture,
                                compiled=compile and n > 1, compile_seconds=compiling, compile_note=compile_note,
                                decode_steps=len(per_token) + untimed_steps, kernels_per_step=kernels)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop_tokens: Sequence[int] = (),
             pad_token_id: int | None = None, generator: torch.Generator | None = None,
             options: DecodeOptions | None = None, **decode) -> GenerationResult:
    """Continue each row of ``input_ids`` (B, L) by up to ``max_new_tokens`` tokens.

    Greedy for temperature 0, else sampling with ``top_k`` / ``top_p`` drawn through ``generator``. A sequence is
    finished after its first token in ``stop_tokens``; its later positions hold ``pad_token_id`` (default: the
    model's pad token, else the first stop token), and decoding ends when every sequence is finished.
    ``options`` (``DecodeOptions``), or its fields as keywords (``cuda_graph=``, ``compile=``, ``prefill_chunk=``,
    ``fused_step=``, ``step_timing=``, ``stop_check_every=``, overriding ``options``'):
    ``cuda_graph``: "auto" (on CUDA when the mixers allow it), True (required) or False (eager).
    ``compile``: fuse the decode step with torch.compile (``workbench.generation.compile``); its one-off cost is
    ``compile_seconds``, outside the decode time. Raises ``CompileError`` where it cannot.
    ``prefill_chunk``: feed the prompt ``prefill_chunk`` tokens at a time (see ``prefill``); None: in one pass.
    ``fused_step``, ``step_timing``, ``stop_check_every``: for throughput, the same tokens (see ``DecodeOptions``,
    ``THROUGHPUT``). For many batches of one shape, a ``Decoder`` keeps the captured step between them."""
    return Decoder(model, options, **decode).generate(input_ids, max_new_tokens, temperature=temperature,
                                                       top_k=top_k, top_p=top_p, stop_tokens=stop_tokens,
                                                       pad_token_id=pad_token_id, generator=generator)
