"""One decode loop for teachers, students and hybrids.

    result = generate(model, input_ids, max_new_tokens=64, temperature=0.7, top_p=0.9, stop_tokens=[eos])
    result.tokens                # (B, L_new) new tokens, padded after each sequence's stop token
    result.decode_tokens_per_s   # and prefill_seconds, decode_seconds, per_token_seconds, graph_capture_seconds
    generate(model, input_ids, 64, options=DecodeOptions(compile=True))   # or generate(..., compile=True)

``generate`` is ``prefill(session, ids, chunk)`` followed by a decode loop, over the pieces of this package:
- ``session``: the model's attention cache and mixer layers' states (``Session``), fed by the model's own forward;
- ``graph``: the per-token step captured in a CUDA graph (``DecodeOptions.cuda_graph``);
- ``compile``: the decode step's modules fused by torch.compile (``DecodeOptions.compile``).

The prompt can be fed in chunks (``DecodeOptions.prefill_chunk``): mixers continue with ``Mixer.extend``, attention
through its cache, so the prefill's activations, and the peak memory they set, stop growing with the prompt's length.

Prompts in a batch have one length (no padding): mixers take no attention mask, so pad tokens would enter their state.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workbench.device import sync
from workbench.generation.compile import compile_targets, compiled_decoding, step_context
from workbench.generation.graph import capture_step, static_state_problem
from workbench.generation.sampling import check_sampling, next_tokens
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

    def __post_init__(self):
        if self.cuda_graph not in ("auto", True, False):
            raise ValueError(f"cuda_graph must be 'auto', True or False, got {self.cuda_graph!r}")
        if self.prefill_chunk is not None and self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive number of tokens or None, got {self.prefill_chunk}")

    @classmethod
    def of(cls, options: DecodeOptions | None = None, **fields) -> DecodeOptions:
        """``options`` (default: the defaults) with ``fields`` (cuda_graph=, compile=, prefill_chunk=) replacing
        its own: the one place keyword arguments become options."""
        return dataclasses.replace(options or cls(), **fields)


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
    overriding ``options``'):
    ``cuda_graph``: "auto" (on CUDA when the mixers allow it), True (required) or False (eager).
    ``compile``: fuse the decode step with torch.compile (``workbench.generation.compile``); its one-off cost is
    ``compile_seconds``, outside the decode time. Raises ``CompileError`` where it cannot.
    ``prefill_chunk``: feed the prompt ``prefill_chunk`` tokens at a time (see ``prefill``); None: in one pass."""
    options = DecodeOptions.of(options, **decode)
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    model = unwrap(model)
    device = input_ids.device
    batch = input_ids.shape[0]
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    pad = default_pad(model, stop_tokens) if pad_token_id is None else pad_token_id
    want_graph = device.type == "cuda" and options.cuda_graph in ("auto", True) and max_new_tokens > 2
    if options.cuda_graph is True and device.type != "cuda":
        raise ValueError("cuda_graph=True needs the model and input_ids on a CUDA device")
    compile = options.compile

    session = Session(model, max_length=input_ids.shape[1] + max_new_tokens, static=want_graph)
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

    sync(device)
    t0 = time.perf_counter()
    token = choose(prefill(session, input_ids, options.prefill_chunk))
    sync(device)
    prefill_seconds = time.perf_counter() - t0

    step = note = None
    problem = static_state_problem(session, batch) if want_graph or compile else None
    if want_graph:
        note = problem
        if note is not None and options.cuda_graph is True:
            raise ValueError(note)
    compile_note = f"mixer steps left uncompiled: {problem}" if compile and problem is not None else None
    targets = compile_targets(model, mixer_steps=problem is None) if compile else []
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
                with step_context(compile, first):
                    logits = step(token) if step is not None else session.forward(token[:, None])[:, -1]
            token = choose(logits)
            sync(device)
            elapsed = time.perf_counter() - t
            if compile and first:
                compiling = step.warmup_seconds if capturing else elapsed
            if capturing:
                capture = elapsed - compiling
            elif not (compile and first):
                per_token.append(elapsed)

    return GenerationResult(tokens=torch.stack(out, dim=1), prefill_seconds=prefill_seconds,
                            decode_seconds=float(sum(per_token)), per_token_seconds=per_token,
                            lengths=lengths.clamp(max=len(out)).tolist(), cuda_graph=step is not None,
                            graph_note=note, state_bytes=session.state_bytes(), graph_capture_seconds=capture,
                            compiled=compile and len(out) > 1, compile_seconds=compiling, compile_note=compile_note)
