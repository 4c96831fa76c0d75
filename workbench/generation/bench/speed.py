"""Generation speed (``bench_generate``, ``workbench bench generate``), per model, batch size and context length.

Prompts are SOTU held-out tokens, repeated as needed. Each setting records (``BENCH_FIELDS``, and a few extras):
  decode_tokens_per_s, ttft_s (prefill + first token, warm: after a one-token call on the same prompts, so that
  kernels compiled or autotuned for this shape on first use are not in it), ttft_first_s (that first call's prefill +
  first token, one-off work included), per_token_p50_s / per_token_p95_s, peak_memory_bytes
  (torch.cuda.max_memory_allocated; None on CPU), decode_s (the timed decode steps), graph_capture_s (the engine's
  one-off CUDA-graph warm-up step and capture: kept out of decode_s, the tokens/s and the percentiles; 0 without a
  graph, None for hf-generate), compile (whether the engine's decode step ran torch.compile'd modules: ``--compile``)
  and compile_s (its one-off compilation step, also kept out of decode_s; 0 without compile, None for hf-generate),
  prefill_chunk (``--prefill-chunk``: the prompt fed that many tokens at a time; None: in one pass), repeat
  (``--repeat``: timed runs pooled into the record) with decode_tokens_per_s_runs (each run's tokens/s),
  kernels_per_step (GPU kernels of one decode step, counted by torch's profiler on CUDA, None on the CPU: for the
  engine, one decode step of the timed run, left out of its timing; for hf-generate, counted outside the timed call
  as the kernels of generate() with 2 new tokens less those with 1, both greedy on the same prompt: one decode step of
  generate() with its per-step logits processing and stopping check; ``hf_kernels_per_step``),
  and the physical floor of a decode step: bytes_per_step (weights
  read once per step, plus the KV cache of kept attention layers and the mixers' states at the final length) over
  the measured memory bandwidth (bandwidth_bytes_per_s: a large device-to-device copy, read + write counted), with
  floor_fraction = floor_s / per_token_p50_s. A model spec ending in "@hf" (or every model, with hf_baseline) also
  runs through transformers' own ``generate()`` (engine "hf-generate") as the baseline. A setting longer than the
  model's context, too large for the free memory, out of memory, or refused by the model is recorded with
  status "skipped" and its reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from workbench.device import device_name, sync
from workbench.generation.bench.facts import corpus_tokens, kv_bytes, measure_bandwidth, prompts, weight_bytes
from workbench.generation.engine import DecodeOptions, KernelCounter, generate
from workbench.generation.models import LoadedModel, load_model
from workbench.teachers import anatomy

HF_SUFFIX = "@hf"
BENCH_FIELDS = ("model", "engine", "batch", "context", "new_tokens", "status", "reason", "decode_tokens_per_s",
                "ttft_s", "per_token_p50_s", "per_token_p95_s", "peak_memory_bytes", "bytes_per_step", "floor_s",
                "floor_fraction", "cuda_graph", "decode_s", "graph_capture_s", "compile", "compile_s",
                "kernels_per_step")


class _Clock:
    """A transformers streamer that only notes when each token arrives (the first call brings the prompt)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def put(self, value) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _hf_run(model: nn.Module, ids: torch.Tensor, new: int, **kw) -> torch.Tensor:
    """transformers' greedy ``generate()`` of exactly ``new`` tokens after ids (B, L), as hf-generate runs it."""
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=model.config.pad_token_id or 0, **kw)


def hf_kernels_per_step(model: nn.Module, ids: torch.Tensor) -> int | None:
    """GPU kernels (memory copies and sets included) of one decode step of transformers' greedy ``generate()`` after
    ids (B, L), its per-step logits processing and stopping check included: the kernels ``KernelCounter`` counts in a
    2-token run less those of a 1-token run (the prompt's forward and the first token cancel out). None off CUDA."""
    if ids.device.type != "cuda":
        return None
    counts = []
    for new in (1, 2):
        with KernelCounter(ids.device) as counter:
            _hf_run(model, ids, new)
        counts.append(counter.count)
    return counts[1] - counts[0]


def _hf_generate(model: nn.Module, ids: torch.Tensor, new: int, count_kernels: bool = True) -> dict:
    clock = _Clock(ids.device)
    sync(ids.device)
    t0 = time.perf_counter()
    out = _hf_run(model, ids, new, streamer=clock)
    sync(ids.device)
    steps = np.diff(clock.times[1:]).tolist()
    return {"ttft_s": clock.times[1] - t0, "per_token": steps, "tokens": out.shape[0] * len(steps),
            "cuda_graph": False, "graph_capture_s": None, "compile": False, "compile_s": None,
            # counted after the timed call, in two untimed ones (2 new tokens less 1); None on the CPU
            "kernels_per_step": hf_kernels_per_step(model, ids) if count_kernels else None}


def _first_token_seconds(model: nn.Module, ids: torch.Tensor, engine: bool, options: DecodeOptions) -> float:
    """Prefill + first token of one call with a single new token (the warm-up before the timed run)."""
    if engine:
        return generate(model, ids, 1, options=options).prefill_seconds
    sync(ids.device)
    t0 = time.perf_counter()
    _hf_run(model, ids, 1)
    sync(ids.device)
    return time.perf_counter() - t0


def _engine_generate(model: nn.Module, ids: torch.Tensor, new: int, options: DecodeOptions) -> dict:
    result = generate(model, ids, new, options=DecodeOptions.of(options, count_kernels=True))
    return {"ttft_s": result.prefill_seconds, "per_token": result.per_token_seconds,
            "tokens": ids.shape[0] * len(result.per_token_seconds), "cuda_graph": result.cuda_graph,
            "state_bytes": result.state_bytes, "graph_note": result.graph_note,
            "graph_capture_s": result.graph_capture_seconds, "compile": result.compiled,
            "compile_s": result.compile_seconds, "compile_note": result.compile_note,
            "kernels_per_step": result.kernels_per_step}


def _pooled(runs: list[dict]) -> dict:
    """The timed runs of one setting as one: their decode steps together, the one-off parts from the first."""
    return {**runs[0], "per_token": [t for run in runs for t in run["per_token"]],
            "tokens": sum(run["tokens"] for run in runs),
            "tokens_per_s_runs": [run["tokens"] / sum(run["per_token"]) if run["per_token"] else None
                                  for run in runs]}


def run_setting(loaded: LoadedModel, engine: str, ids: torch.Tensor, new: int, bandwidth: float,
                options: DecodeOptions | None = None, repeat: int = 1) -> dict:
    """One (model, engine, batch, context) measurement as a record with ``BENCH_FIELDS`` (and a few extras).
    ``options`` (default: ``DecodeOptions()``) go to the engine's ``generate`` (not to hf-generate). With ``repeat``
    N, the timed run runs N times and the record pools their steps (the engine's later runs replay the step the first
    captured); ``decode_tokens_per_s_runs`` holds each run's tokens/s, so the spread within one process shows."""
    if repeat < 1:
        raise ValueError(f"repeat={repeat}: give 1 or more timed runs per setting")
    options = DecodeOptions.of(options)
    model = loaded.model
    device = ids.device
    batch, context = ids.shape
    engine_options = engine != "hf-generate"
    record = {"model": loaded.name, "engine": engine, "batch": batch, "context": context, "new_tokens": new,
              "status": "ok", "reason": None, **{k: None for k in BENCH_FIELDS[7:]},
              "ttft_first_s": None, "repeat": repeat, "decode_tokens_per_s_runs": None,
              "compile": options.compile and engine_options,
              "fold_norms": options.compile and options.fold_norms and engine_options,
              "fold_residuals": options.compile and options.fold_norms and options.fold_residuals and engine_options,
              "prefill_chunk": options.prefill_chunk if engine_options else None}
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
            record["ttft_first_s"] = _first_token_seconds(model, ids, engine_options, options)
            run = _pooled([_engine_generate(model, ids, new, options) if engine_options
                           else _hf_generate(model, ids, new, count_kernels=i == 0) for i in range(repeat)])
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
                  compile=run["compile"], compile_s=run["compile_s"], compile_note=run.get("compile_note"),
                  kernels_per_step=run["kernels_per_step"], decode_tokens_per_s_runs=run["tokens_per_s_runs"])
    return record


def bench_generate(models: Sequence[str], batches: Sequence[int], contexts: Sequence[int], new: int = 128,
                   device="auto", dtype="auto", hf_baseline: bool = False, options: DecodeOptions | None = None,
                   progress: bool = True, repeat: int = 1, **decode) -> dict:
    """Every model x batch x context (see the module docstring). Returns {"device", "device_name", "dtype",
    "bandwidth_bytes_per_s", "new_tokens", "settings": [records]}. ``options`` (or its fields as keywords:
    ``cuda_graph=``, ``compile=``, ``prefill_chunk=``, as for ``generate``) drive the engine: e.g. ``compile=True``
    runs it with torch.compile, ``prefill_chunk=N`` feeds prompts N tokens at a time. ``repeat``: timed runs per
    setting (``run_setting``)."""
    options = DecodeOptions.of(options, **decode)
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
                                     options, repeat)
                settings.append(record)
                if progress:
                    speed = record["decode_tokens_per_s"]
                    print(f"{spec} [{engine}] batch {batch} context {context}: " +
                          (f"{speed:.1f} tokens/s, ttft {record['ttft_s']:.3f}s" if record["status"] == "ok"
                           else f"skipped ({record['reason']})"))
    dtype_name = str(next(iter(loaded.values())).model.dtype).replace("torch.", "") if loaded else None
    return {"device": str(report_device), "device_name": device_name(report_device) if report_device else None,
            "dtype": dtype_name, "bandwidth_bytes_per_s": bandwidth, "new_tokens": new, "settings": settings}
