"""Quality side by side (``bench_quality``, ``workbench bench quality``), per model against the teacher.

Held-out perplexity, KL(teacher || student) and top-1 agreement overall (``workbench.analysis.compare``) and per
position bucket (``bucketed_agreement``), plus greedy continuations of the same prompts by the teacher and each model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from workbench.analysis.compare import compare
from workbench.generation.bench.facts import corpus_tokens
from workbench.generation.engine import generate
from workbench.generation.models import LoadedModel, load_model


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
