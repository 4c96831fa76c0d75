"""What the generation benchmarks share: the machine's memory bandwidth, the bytes a decode step reads (weights, KV
cache), and prompts cut from SOTU held-out text.

Shapes: B batch, L context.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from workbench.data import load_corpus, token_ids
from workbench.device import sync
from workbench.generation.models import LoadedModel
from workbench.students import student_mixers
from workbench.teachers import anatomy


def measure_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s from copying one large buffer into another on ``device`` (best of ``repeats``;
    the bytes read and written both count). Default size: 1 GiB on GPU, 256 MiB on CPU."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
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
    corpus = load_corpus("sotu", split)
    if loaded.tokenizer is not None:
        return np.asarray(token_ids(corpus, loaded.tokenizer), dtype=np.int64)
    vocab = anatomy.text_config(loaded.model).vocab_size
    return np.frombuffer(corpus.text.encode(), dtype=np.uint8).astype(np.int64) % vocab


def prompts(ids: np.ndarray, batch: int, context: int, device: torch.device) -> torch.Tensor:
    """(batch, context) prompts: row b reads the tokens from offset b * 997, the corpus repeated as needed."""
    rows = [np.resize(np.roll(ids, -b * 997), context) for b in range(batch)]
    return torch.as_tensor(np.stack(rows), device=device)
