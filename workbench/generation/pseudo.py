"""Teacher pseudo-labels: a corpus of the teacher's own continuations of prompts taken from a text corpus.

Mamba in the Llama (arXiv 2408.15237) distils on text the teacher generated, so that the student learns the
teacher's distribution rather than the corpus's; this module makes such a corpus for any teacher:

  1. take the prompt corpus's train split as token ids (``workbench.data.token_ids``): "sotu", a text file or
     folder, or a training mix from ``workbench corpus build``;
  2. for part k, draw ``batch_size`` prompt windows of ``prompt_tokens`` tokens at positions chosen by a generator
     seeded with (seed, k), so a part is the same whenever it is made;
  3. continue them with the teacher through the generation engine (``Decoder``: batched; on GPUs one CUDA graph per
     decode step, token choice included, captured once and replayed for every part), sampling with ``temperature``
     and ``top_p`` (greedy at temperature 0) through a generator reseeded with (seed, k), stopping at the
     tokenizer's end-of-sequence token;
  4. write the part's documents (prompt + continuation, decoded) to ``part-00000k.txt`` atomically, then update
     ``manifest.json`` (settings, counts of new tokens, seconds and tokens/s); stop when the new tokens reach
     ``tokens``.

An interrupted generation resumes from the next missing part: same folder, same settings. The folder is a local
corpus (``load_corpus(DIR, "train")``: whole files, 90% train / 10% held out once there are 10 parts), so a run uses
it with ``RunConfig(corpus=DIR, eval_corpus="sotu")`` to keep evaluating on the original held-out text.

Speed: at a few hundred sequences the teacher's forward is little work for a GPU, so overheads weigh: per step
(waits for the device, sampling outside the CUDA graph, Python) and per part (a new session and capture).
``THROUGHPUT`` decoding and one ``Decoder`` for all parts remove them; ``benchmarks/pseudo_speed.py`` measures the
path against the plain one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.data import load_corpus, token_ids
from workbench.device import device_name
from workbench.generation.engine import THROUGHPUT, DecodeOptions, Decoder

MANIFEST = "manifest.json"


@dataclass
class PseudoLabelConfig:
    teacher: str                 # the teacher's registry name or path, as given (recorded in the manifest)
    prompt_corpus: str = "sotu"  # prompts come from this corpus's train split
    tokens: int = 1_000_000      # stop once the continuations hold this many new tokens
    prompt_tokens: int = 64      # tokens of corpus text each continuation starts from
    new_tokens: int = 256        # most new tokens per continuation (fewer if it ends with end-of-sequence)
    batch_size: int = 512        # continuations generated together (one part file)
    temperature: float = 1.0     # sampling temperature (0: greedy); the teacher's own distribution at 1
    top_p: float = 0.95          # nucleus sampling mass
    seed: int = 0                # prompt positions and sampling of part k use the seed (seed, k)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_manifest(out: Path, config: PseudoLabelConfig) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {"config": asdict(config), "parts": 0, "new_tokens": 0, "documents": 0, "seconds": 0.0,
                "generate_seconds": 0.0, "tokens_per_s": None}
    manifest = json.loads(path.read_text())
    manifest.setdefault("generate_seconds", None)  # folders from before it was recorded
    manifest.pop("last_run", None)                  # an earlier run's; this run's replaces it with its first part
    if manifest["config"] != asdict(config):
        changed = {k: (manifest["config"].get(k), v) for k, v in asdict(config).items()
                   if manifest["config"].get(k) != v and k != "tokens"}
        if changed:
            raise ValueError(f"{out} was generated with other settings {changed} (saved, given); continue with the "
                             f"saved settings or choose a new folder")
        manifest["config"] = asdict(config)  # only the token target changed: generate more (or stop sooner)
    return manifest


def _rate(tokens: int, seconds: float | None) -> float | None:
    return round(tokens / seconds, 1) if seconds else None


def generate_corpus(teacher, out: str | Path, config: PseudoLabelConfig, progress: bool = True,
                    options: DecodeOptions = THROUGHPUT, keep_graph: bool = True) -> dict:
    """Generate (or continue) the pseudo-label corpus in ``out`` for ``teacher`` (a workbench ``Teacher``) and
    return its manifest: {"config", "parts", "new_tokens", "documents", "seconds", "generate_seconds",
    "tokens_per_s", "last_run"}. ``seconds`` and ``tokens_per_s`` cover every run into ``out``
    (``generate_seconds``: the time in the engine, the rest is prompts, decoding and writing); ``last_run``: this
    call's new tokens, seconds, tokens/s and device. ``options``: how the engine decodes (the tokens are the same
    with any); ``keep_graph``: one ``Decoder`` for every part (False: a new one per part, as separate ``generate``
    calls)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out, config)
    tokenizer = teacher.tokenizer
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = token_ids(load_corpus(config.prompt_corpus, "train"), tokenizer)      # 1. (N,) uint32 (uint16: a mix)
    if len(ids) <= config.prompt_tokens:
        raise ValueError(f"{config.prompt_corpus!r} has {len(ids)} training tokens, fewer than one prompt of "
                         f"{config.prompt_tokens}")
    decoder = Decoder(teacher.model, options)
    generator = torch.Generator(device=teacher.device)
    run = {"new_tokens": 0, "seconds": 0.0, "tokens_per_s": None, "device_name": device_name(teacher.device)}
    bar = tqdm(total=config.tokens, initial=min(manifest["new_tokens"], config.tokens), unit="tok",
               desc="pseudo-labels", disable=not progress)
    while manifest["new_tokens"] < config.tokens:
        part = manifest["parts"]
        t0 = time.perf_counter()
        rng = np.random.default_rng([config.seed, part])                         # 2.
        starts = rng.integers(0, len(ids) - config.prompt_tokens, size=config.batch_size)
        prompts = np.stack([ids[s:s + config.prompt_tokens] for s in starts]).astype(np.int64)   # (B, P)
        generator.manual_seed(config.seed * 1_000_003 + part)
        if not keep_graph:
            decoder = Decoder(teacher.model, options)
        t1 = time.perf_counter()
        result = decoder.generate(torch.from_numpy(prompts).to(teacher.device), config.new_tokens,   # 3.
                                  temperature=config.temperature,
                                  top_p=config.top_p if config.temperature > 0 else None, stop_tokens=eos,
                                  pad_token_id=eos[0] if eos else None, generator=generator)
        generated = time.perf_counter() - t1
        continuations = result.tokens.cpu().numpy()                              # (B, L_new)
        texts = tokenizer.batch_decode([prompt.tolist() + continuation[:length].tolist() for prompt, continuation,
                                        length in zip(prompts, continuations, result.lengths, strict=True)],
                                       skip_special_tokens=True)
        _write_atomic(out / f"part-{part:06d}.txt", "\n\n".join(t.strip() for t in texts) + "\n")   # 4.
        new = int(sum(result.lengths))
        seconds = time.perf_counter() - t0
        run.update(new_tokens=run["new_tokens"] + new, seconds=round(run["seconds"] + seconds, 3))
        run["tokens_per_s"] = _rate(run["new_tokens"], run["seconds"])
        manifest.update(parts=part + 1, new_tokens=manifest["new_tokens"] + new,
                        documents=manifest["documents"] + len(texts),
                        seconds=round(manifest["seconds"] + seconds, 2), last_run=run)
        if manifest["generate_seconds"] is not None:
            manifest["generate_seconds"] = round(manifest["generate_seconds"] + generated, 2)
        manifest["tokens_per_s"] = _rate(manifest["new_tokens"], manifest["seconds"])
        _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
        bar.update(min(new, max(config.tokens - bar.n, 0)))
    bar.close()
    return manifest
