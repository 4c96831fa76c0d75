"""Generation benchmarks: speed (``bench_generate``) and quality side by side (``bench_quality``). Scripts that write
JSON (and a figure), driven by ``workbench bench generate|quality``; never timed tests.

Speed, per model, batch size and context length (prompts are SOTU held-out tokens, repeated as needed):
  decode_tokens_per_s, ttft_s (prefill + first token), per_token_p50_s / per_token_p95_s, peak_memory_bytes
  (torch.cuda.max_memory_allocated; None on CPU), decode_s (the timed decode steps), graph_capture_s (the engine's
  one-off CUDA-graph warm-up step and capture: kept out of decode_s, the tokens/s and the percentiles; 0 without a
  graph, None for hf-generate), compile (whether the engine's decode step ran torch.compile'd modules: ``--compile``)
  and compile_s (its one-off compilation step, also kept out of decode_s; 0 without compile, None for hf-generate),
  prefill_chunk (``--prefill-chunk``: the prompt fed that many tokens at a time; None: in one pass),
  and the physical floor of a decode step: bytes_per_step (weights
  read once per step, plus the KV cache of kept attention layers and the mixers' states at the final length) over
  the measured memory bandwidth (bandwidth_bytes_per_s: a large device-to-device copy, read + write counted), with
  floor_fraction = floor_s / per_token_p50_s. A model spec ending in "@hf" (or every model, with hf_baseline) also
  runs through transformers' own ``generate()`` (engine "hf-generate") as the baseline. A setting longer than the
  model's context, too large for the free memory, out of memory, or refused by the model is recorded with
  status "skipped" and its reason.

Speculative decoding (``bench_speculative``): plain greedy ``generate`` of a target against ``speculative_generate``
with a draft, per number of draft tokens k: decode tokens/s of both, the speed-up, the acceptance rate, and whether
the greedy tokens are identical (where not, the first position that differs).

Quality, per model against the teacher: held-out perplexity, KL(teacher || student) and top-1 agreement overall
(``workbench.analysis.compare``) and per position bucket (``bucketed_agreement``), plus greedy continuations of the
same prompts by the teacher and each model.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from workbench.generation.engine import generate
from workbench.generation.speculative import speculative_generate
from workbench.generation.models import LoadedModel, load_model
from workbench.students import student_mixers
from workbench.teachers import anatomy

HF_SUFFIX = "@hf"
BENCH_FIELDS = ("model", "engine", "batch", "context", "new_tokens", "status", "reason", "decode_tokens_per_s",
                "ttft_s", "per_token_p50_s", "per_token_p95_s", "peak_memory_bytes", "bytes_per_step", "floor_s",
                "floor_fraction", "cuda_graph", "decode_s", "graph_capture_s", "compile", "compile_s")


# ---- machine and model facts ----------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s from copying one large buffer into another on ``device`` (best of ``repeats``;
    the bytes read and written both count). Default size: 1 GiB on GPU, 256 MiB on CPU."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights a decode step reads: every parameter once (tied ones once), except an input embedding
    table that is not also the LM head (a step reads only B of its rows)."""
    total = sum(p.nbytes for p in model.parameters())
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or embedding.weight is not head.weight:
        total -= embedding.weight.nbytes
    return total


def kv_bytes(model: nn.Module, batch: int, length: int) -> int:
    """Bytes of keys and values the kept attention layers hold for ``batch`` sequences of ``length`` tokens."""
    config = anatomy.text_config(model)
    _, G, P = anatomy.head_layout(config)
    attention_layers = len(anatomy.decoder_layers(model)) - len(student_mixers(model))
    itemsize = next(model.parameters()).element_size()
    return 2 * attention_layers * batch * length * G * P * itemsize


def corpus_tokens(loaded: LoadedModel, split: str = "heldout") -> np.ndarray:
    """SOTU tokens of ``split`` with the model's tokenizer; without a tokenizer, the text's UTF-8 bytes folded into
    the vocabulary (enough for timing)."""
    from workbench.data import load_corpus, token_ids

    corpus = load_corpus("sotu", split)
    if loaded.tokenizer is not None:
        return np.asarray(token_ids(corpus, loaded.tokenizer), dtype=np.int64)
    vocab = anatomy.text_config(loaded.model).vocab_size
    return np.frombuffer(corpus.text.encode(), dtype=np.uint8).astype(np.int64) % vocab


def prompts(ids: np.ndarray, batch: int, context: int, device: torch.device) -> torch.Tensor:
    """(batch, context) prompts: row b reads the tokens from offset b * 997, the corpus repeated as needed."""
    rows = [np.resize(np.roll(ids, -b * 997), context) for b in range(batch)]
    return torch.as_tensor(np.stack(rows), device=device)


# ---- one setting ----------------------------------------------------------------------------------------------------

class _Clock:
    """A transformers streamer that only notes when each token arrives (the first call brings the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, value) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _hf_generate(model: nn.Module, ids: torch.Tensor, new: int) -> dict:
    clock = _Clock(ids.device)
    _sync(ids.device)
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, streamer=clock, pad_token_id=model.config.pad_token_id or 0)
    _sync(ids.device)
    steps = np.diff(clock.times[1:]).tolist()
    return {"ttft_s": clock.times[1] - t0, "per_token": steps, "tokens": out.shape[0] * len(steps),
            "cuda_graph": False, "graph_capture_s": None, "compile": False, "compile_s": None}


def _engine_generate(model: nn.Module, ids: torch.Tensor, new: int, cuda_graph, compile: bool,
                     prefill_chunk: int | None = None) -> dict:
    result = generate(model, ids, new, cuda_graph=cuda_graph, compile=compile, prefill_chunk=prefill_chunk)
    return {"ttft_s": result.prefill_seconds, "per_token": result.per_token_seconds,
            "tokens": ids.shape[0] * len(result.per_token_seconds), "cuda_graph": result.cuda_graph,
            "state_bytes": result.state_bytes, "graph_note": result.graph_note,
            "graph_capture_s": result.graph_capture_seconds, "compile": result.compiled,
            "compile_s": result.compile_seconds, "compile_note": result.compile_note}


def run_setting(loaded: LoadedModel, engine: str, ids: torch.Tensor, new: int, bandwidth: float,
                cuda_graph="auto", compile: bool = False, prefill_chunk: int | None = None) -> dict:
    """One (model, engine, batch, context) measurement as a record with ``BENCH_FIELDS`` (and a few extras).
    ``compile`` and ``prefill_chunk`` go to the engine's ``generate`` (not to hf-generate)."""
    model = loaded.model
    device = ids.device
    batch, context = ids.shape
    record = {"model": loaded.name, "engine": engine, "batch": batch, "context": context, "new_tokens": new,
              "status": "ok", "reason": None, **{k: None for k in BENCH_FIELDS[7:]},
              "compile": compile and engine != "hf-generate",
              "prefill_chunk": prefill_chunk if engine != "hf-generate" else None}
    limit = anatomy.context_length(anatomy.text_config(model))
    needed = kv_bytes(model, batch, context + new)
    if limit is not None and context + new > limit:
        return {**record, "status": "skipped", "reason": f"context {context} + {new} new tokens exceeds the "
                                                           f"model's maximum context {limit}"}
    if device.type == "cuda" and needed > torch.cuda.mem_get_info(device)[0]:
        return {**record, "status": "skipped", "reason": f"the KV cache alone needs {needed / 2**30:.1f} GiB, more "
                                                           f"than the free GPU memory"}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.no_grad():
            run = _hf_generate(model, ids, new) if engine == "hf-generate" else \
                _engine_generate(model, ids, new, cuda_graph, compile, prefill_chunk)
    except torch.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        return {**record, "status": "skipped", "reason": f"out of memory: {str(err).splitlines()[0]}"}
    except ValueError as err:  # a model that refuses the length (e.g. a Hyena filter shorter than the context)
        return {**record, "status": "skipped", "reason": f"the model refused: {err}"}
    steps = run["per_token"]
    p50, p95 = (float(np.percentile(steps, 50)), float(np.percentile(steps, 95))) if steps else (None, None)
    per_step = weight_bytes(model) + needed + run.get("state_bytes", 0)
    floor = per_step / bandwidth
    record.update(decode_tokens_per_s=run["tokens"] / sum(steps) if steps else None, ttft_s=run["ttft_s"],
                  per_token_p50_s=p50, per_token_p95_s=p95,
                  peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                  bytes_per_step=per_step, floor_s=floor, floor_fraction=floor / p50 if p50 else None,
                  cuda_graph=run["cuda_graph"], graph_note=run.get("graph_note"),
                  decode_s=sum(steps) if steps else None, graph_capture_s=run["graph_capture_s"],
                  compile=run["compile"], compile_s=run["compile_s"], compile_note=run.get("compile_note"))
    return record


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def bench_generate(models: Sequence[str], batches: Sequence[int], contexts: Sequence[int], new: int = 128,
                   device="auto", dtype="auto", hf_baseline: bool = False, cuda_graph="auto",
                   compile: bool = False, prefill_chunk: int | None = None, progress: bool = True) -> dict:
    """Every model x batch x context (see the module docstring). Returns {"device", "device_name", "dtype",
    "bandwidth_bytes_per_s", "new_tokens", "settings": [records]}. ``compile``: the engine runs with
    torch.compile (``generate(..., compile=True)``); ``prefill_chunk``: the engine feeds prompts that many tokens at
    a time (``generate(..., prefill_chunk=N)``)."""
    runs: list[tuple[str, str]] = []
    for spec in models:
        if spec.endswith(HF_SUFFIX):
            runs.append((spec[: -len(HF_SUFFIX)], "hf-generate"))
        else:
            runs.append((spec, "workbench"))
            if hf_baseline:
                runs.append((spec, "hf-generate"))
    loaded: dict[str, LoadedModel] = {}
    settings, bandwidth, report_device = [], None, None
    for spec, engine in runs:
        if spec not in loaded:
            loaded[spec] = load_model(spec, device=device, dtype=dtype)
        current = loaded[spec]
        model_device = next(current.model.parameters()).device
        if bandwidth is None:
            report_device, bandwidth = model_device, measure_bandwidth(model_device)
        ids = corpus_tokens(current)
        for batch in batches:
            for context in contexts:
                record = run_setting(current, engine, prompts(ids, batch, context, model_device), new, bandwidth,
                                     cuda_graph, compile, prefill_chunk)
                settings.append(record)
                if progress:
                    speed = record["decode_tokens_per_s"]
                    print(f"{spec} [{engine}] batch {batch} context {context}: " +
                          (f"{speed:.1f} tokens/s, ttft {record['ttft_s']:.3f}s" if record["status"] == "ok"
                           else f"skipped ({record['reason']})"))
    dtype_name = str(next(iter(loaded.values())).model.dtype).replace("torch.", "") if loaded else None
    return {"device": str(report_device), "device_name": _device_name(report_device) if report_device else None,
            "dtype": dtype_name, "bandwidth_bytes_per_s": bandwidth, "new_tokens": new, "settings": settings}


# ---- speculative decoding -------------------------------------------------------------------------------------------

def _first_difference(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first position (B, L) token tensors differ at in any row (or where one ends), or None if equal."""
    if torch.equal(a, b):
        return None
    n = min(a.shape[1], b.shape[1])
    differs = (a[:, :n] != b[:, :n]).any(0).nonzero()
    return int(differs[0]) if len(differs) else n


def bench_speculative(target: str, draft: str, ks: Sequence[int], batch: int = 1, context: int = 512,
                      new: int = 128, device="auto", dtype="auto", cuda_graph="auto", warmup: int = 8,
                      progress: bool = True) -> dict:
    """Plain greedy ``generate`` of ``target`` against ``speculative_generate`` with ``draft``, for each k in ``ks``,
    on (batch, context) SOTU held-out prompts (the target's tokenizer) and ``new`` tokens. Each call is preceded by
    an untimed one of ``warmup`` tokens. Returns {"target", "draft", "batch", "context", "new_tokens", "device",
    "device_name", "dtype", "target_decode_tokens_per_s", "target_cuda_graph", "results": [{"k",
    "speculative_decode_tokens_per_s", "target_decode_tokens_per_s", "speedup", "acceptance_rate", "rounds",
    "identical", "first_difference"}]}. Tokens/s count the decode steps after the first token (per sequence
    times batch), as ``GenerationResult.decode_tokens_per_s``; ``speedup`` is speculative over plain."""
    if any(k < 1 for k in ks):
        raise ValueError(f"every k (draft tokens per round) must be at least 1, got {list(ks)}")
    loaded_target = load_model(target, device=device, dtype=dtype)
    loaded_draft = load_model(draft, device=device, dtype=dtype)
    model_device = next(loaded_target.model.parameters()).device
    draft_device = next(loaded_draft.model.parameters()).device
    if draft_device != model_device:
        raise ValueError(f"the target is on {model_device} but the draft on {draft_device}")
    limit = anatomy.context_length(anatomy.text_config(loaded_target.model))
    if limit is not None and context + new > limit:
        raise ValueError(f"context {context} + {new} new tokens exceeds the target's maximum context {limit}")
    ids = prompts(corpus_tokens(loaded_target), batch, context, model_device)
    generate(loaded_target.model, ids, min(warmup, new), cuda_graph=cuda_graph)
    plain = generate(loaded_target.model, ids, new, cuda_graph=cuda_graph)
    report = {"target": target, "draft": draft, "batch": batch, "context": context, "new_tokens": new,
              "device": str(model_device), "device_name": _device_name(model_device),
              "dtype": str(loaded_target.model.dtype).replace("torch.", ""),
              "target_decode_tokens_per_s": plain.decode_tokens_per_s, "target_cuda_graph": plain.cuda_graph,
              "results": []}
    for k in ks:
        speculative_generate(loaded_target.model, loaded_draft.model, ids, min(warmup, new), k=k)
        result = speculative_generate(loaded_target.model, loaded_draft.model, ids, new, k=k)
        speed = result.decode_tokens_per_s
        entry = {"k": k, "speculative_decode_tokens_per_s": speed,
                 "target_decode_tokens_per_s": plain.decode_tokens_per_s,
                 "speedup": speed / plain.decode_tokens_per_s, "acceptance_rate": result.acceptance_rate,
                 "rounds": result.rounds, "identical": torch.equal(result.tokens, plain.tokens),
                 "first_difference": _first_difference(plain.tokens, result.tokens)}
        report["results"].append(entry)
        if progress:
            print(f"k={k}: {speed:.1f} tokens/s vs {plain.decode_tokens_per_s:.1f} plain (x{entry['speedup']:.2f}), "
                  f"acceptance {entry['acceptance_rate']:.2f}, identical {entry['identical']}")
    return report


# ---- quality --------------------------------------------------------------------------------------------------------

def position_buckets(window: int) -> list[tuple[int, int]]:
    """[start, end) position ranges 0-16, 16-64, 64-256, ... (x4 each), the last one ending at ``window``."""
    edges = [0]
    while edges[-1] < window:
        edges.append(min(window, 16 if edges[-1] == 0 else edges[-1] * 4))
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def bucketed_agreement(teacher: nn.Module, student: nn.Module, ids, window: int = 512, batch_size: int = 4,
                       max_tokens: int | None = None) -> list[dict]:
    """KL(teacher || student) and top-1 agreement by position in the window, over non-overlapping windows of
    ``ids``: one {"start", "end", "kl", "agreement", "tokens"} per bucket of ``position_buckets(window)``."""
    ids = torch.as_tensor(np.asarray(ids[:max_tokens] if max_tokens else ids, dtype=np.int64))
    device = next(student.parameters()).device
    n = (len(ids) - 1) // window
    if n < 1:
        raise ValueError(f"{len(ids)} tokens do not fill one window of {window} + 1")
    kl_sum = torch.zeros(window, dtype=torch.float64)
    agree_sum = torch.zeros(window, dtype=torch.float64)
    for i in range(0, n, batch_size):
        x = torch.stack([ids[s * window: s * window + window] for s in range(i, min(i + batch_size, n))]).to(device)
        lt = teacher(input_ids=x, use_cache=False).logits.float().log_softmax(-1)    # (B, W, V)
        ls = student(input_ids=x, use_cache=False).logits.float().log_softmax(-1)
        kl_sum += (lt.exp() * (lt - ls)).sum(-1).sum(0).double().cpu()
        agree_sum += (lt.argmax(-1) == ls.argmax(-1)).sum(0).double().cpu()
    return [{"start": a, "end": b, "kl": float(kl_sum[a:b].sum() / (n * (b - a))),
             "agreement": float(agree_sum[a:b].sum() / (n * (b - a))), "tokens": n * (b - a)}
            for a, b in position_buckets(window)]


def _text(loaded: LoadedModel, tokens: torch.Tensor) -> str | list[int]:
    return loaded.tokenizer.decode(tokens.tolist()) if loaded.tokenizer is not None else tokens.tolist()


def bench_quality(models: Sequence[str], teacher: str | None = None, window: int = 512, max_tokens: int = 8192,
                  n_prompts: int = 3, prompt_tokens: int = 32, new_tokens: int = 32, device="auto",
                  dtype="auto") -> dict:
    """Each model against the teacher on SOTU held-out text: {"teacher", "window", "models": [{"model", "compare"
    (compare's numbers), "buckets" (bucketed_agreement)}], "continuations": [{"prompt", "teacher", model: text}]}.
    ``teacher`` defaults to the teacher the first model names (a run or a registry teacher)."""
    from workbench.analysis.compare import compare

    loaded = [load_model(spec, device=device, dtype=dtype) for spec in models]
    teacher = teacher or next((m.teacher for m in loaded if m.teacher), None)
    if teacher is None:
        raise ValueError("no teacher to compare with: pass --teacher (the models name none)")
    reference = load_model(teacher, device=device, dtype=dtype)
    ids = corpus_tokens(reference)[: max_tokens + 1]
    report = {"teacher": teacher, "window": window, "tokens": len(ids), "models": [], "continuations": []}
    for m in loaded:
        report["models"].append({"model": m.name, "kind": m.kind,
                                 "compare": compare(reference.model, m.model, ids, window=window),
                                 "buckets": bucketed_agreement(reference.model, m.model, ids, window=window)})
    device_of = next(reference.model.parameters()).device
    starts = np.linspace(0, max(len(ids) - prompt_tokens - 1, 0), n_prompts).astype(int)
    batch = torch.stack([torch.as_tensor(ids[s: s + prompt_tokens]) for s in starts]).to(device_of)
    outputs = {"teacher": generate(reference.model, batch, new_tokens).tokens}
    for m in loaded:
        outputs[m.name] = generate(m.model, batch, new_tokens).tokens
    for row in range(len(starts)):
        entry = {"prompt": _text(reference, batch[row])}
        entry.update({name: _text(reference, tokens[row]) for name, tokens in outputs.items()})
        report["continuations"].append(entry)
    return report
