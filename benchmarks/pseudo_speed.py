"""Teacher pseudo-label speed: tokens/s of ``workbench corpus generate``'s own path (``generate_corpus``: prompts,
engine, decoding, atomic part files, manifest) per batch size and decode setting, plus the token sampler alone.

    python benchmarks/pseudo_speed.py --teacher smollm2-135m --tokens 1M --batch 256,512,1024 \\
        --settings old,new --json pseudo_speed.json

Settings (``--settings``, comma-separated):
  old       the path before the throughput work: default ``DecodeOptions`` (torch.multinomial after the captured
            forward, a wait for the device every step) and a new decoder (session, capture) for every part
  no-sync   as old, without the per-step waits (no per-step timing, a stop check every 16 steps)
  fused     ``THROUGHPUT`` (token chosen inside the captured step), a new decoder for every part
  new       ``THROUGHPUT`` and one decoder for all parts: what ``workbench corpus generate`` runs (the kept
            attention layers' decode steps through the engine's own attention, ``workbench.generation.attention``)
  new-hf    as new, with the transformers version's own attention for the decode steps (``DecodeOptions
            .engine_attention=False``): the path before the engine had its own attention
Each (setting, batch) generates ``--tokens`` new tokens into a fresh folder with the command's defaults otherwise
(64-token SOTU prompts, 256 new tokens, temperature 1.0, top-p 0.95, seed 0), so every setting writes the same
parts. tokens/s is the manifest's: new tokens over the wall time of the parts, first part (with its capture)
included. On CUDA the sampler section times one choice of the next token from random (B, V) bf16 logits:
``next_tokens`` run eagerly against ``race_tokens`` replayed from a CUDA graph (CUDA-event medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import transformers

from workbench.device import device_name, sync
from workbench.distill.config import parse_tokens
from workbench.generation.engine import THROUGHPUT, DecodeOptions, Decoder
from workbench.generation.pseudo import PseudoLabelConfig, generate_corpus
from workbench.generation.sampling import next_tokens, race_tokens
from workbench.teachers import load_teacher

SETTINGS = {  # name -> (engine options, one decoder for all parts)
    "old": (DecodeOptions(), False),
    "no-sync": (DecodeOptions(step_timing=False, stop_check_every=16), False),
    "fused": (THROUGHPUT, False),
    "new": (THROUGHPUT, True),
    "new-hf": (DecodeOptions.of(THROUGHPUT, engine_attention=False), True),
}


def time_setting(teacher, name: str, batch: int, tokens: int, new_tokens: int, prompt_tokens: int,
                 folder: Path) -> dict:
    options, keep_graph = SETTINGS[name]
    config = PseudoLabelConfig(teacher="benchmark", tokens=tokens, batch_size=batch, new_tokens=new_tokens,
                               prompt_tokens=prompt_tokens)
    cuda = teacher.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(teacher.device)
    manifest = generate_corpus(teacher, folder, config, progress=False, options=options, keep_graph=keep_graph)
    return {"setting": name, "batch": batch, "new_tokens": manifest["new_tokens"], "parts": manifest["parts"],
            "seconds": manifest["seconds"], "generate_seconds": manifest["generate_seconds"],
            "tokens_per_s": manifest["tokens_per_s"],
            "seconds_per_part": manifest["seconds"] / manifest["parts"],
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(teacher.device) / 2**30 if cuda else None}


def time_sampler(batch: int, vocab: int, device: torch.device, steps: int = 20) -> dict:
    """Milliseconds per choice of (batch,) tokens at temperature 1, top-p 0.95: ``next_tokens`` eagerly, and
    ``race_tokens`` replayed from a CUDA graph."""
    logits = torch.randn(batch, vocab, device=device).mul(3).to(torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(0)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(steps):
            start.record()
            fn()
            end.record()
            sync(device)
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    eager = median_ms(lambda: next_tokens(logits, 1.0, None, 0.95, generator))
    race_tokens(logits, 1.0, None, 0.95, generator)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        race_tokens(logits, 1.0, None, 0.95, generator)
    return {"batch": batch, "vocab": vocab, "next_tokens_eager_ms": eager,
            "race_tokens_graph_ms": median_ms(graph.replay)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smollm2-135m", help="registry name, local folder, .gguf file or hub id")
    p.add_argument("--tokens", default="1M", help="new tokens per (setting, batch), with k/M/B suffixes")
    p.add_argument("--batch", default="256,512,1024", help="batch sizes, comma-separated")
    p.add_argument("--settings", default="old,new", help=f"comma-separated, from {', '.join(SETTINGS)}")
    p.add_argument("--new-tokens", type=int, default=256, help="most new tokens per continuation")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt length in tokens")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", required=True, metavar="OUT.json")
    args = p.parse_args()
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    batches = [int(b) for b in args.batch.split(",") if b]
    tokens = parse_tokens(args.tokens)

    teacher = load_teacher(args.teacher, device=args.device, dtype=args.dtype, progress=False)
    device = teacher.device
    warm = torch.randint(100, 1000, (2, args.prompt_tokens), device=device)
    Decoder(teacher.model, THROUGHPUT).generate(warm, 8, temperature=1.0, top_p=0.95)   # CUDA and cuBLAS set-up
    report = {"device_name": device_name(device), "teacher": args.teacher,
              "dtype": str(next(teacher.model.parameters()).dtype).removeprefix("torch."),
              "torch": torch.__version__, "transformers": transformers.__version__, "tokens": tokens,
              "new_tokens_per_continuation": args.new_tokens, "prompt_tokens": args.prompt_tokens,
              "temperature": 1.0, "top_p": 0.95,
              "settings": {n: {"options": asdict(SETTINGS[n][0]), "keep_graph": SETTINGS[n][1]} for n in names},
              "rows": [], "sampler": []}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            for name in names:
                t = time.perf_counter()
                row = {"device_name": report["device_name"]} | time_setting(
                    teacher, name, batch, tokens, args.new_tokens, args.prompt_tokens, Path(tmp) / f"{name}-{batch}")
                row["wall_s"] = time.perf_counter() - t
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    if device.type == "cuda":
        vocab = teacher.model.config.vocab_size
        for batch in batches:
            report["sampler"].append(time_sampler(batch, vocab, device))
            print(json.dumps(report["sampler"][-1]), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
