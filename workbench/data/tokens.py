"""Tokenise a corpus once, cache the ids on disk (memory-mapped), and serve fixed-length blocks as batches.

Convention (shared with evaluation): the corpus text is tokenised in one piece without special tokens.
The cache file is ``uint32`` ids in ``$WORKBENCH_CACHE/tokens/<corpus>-<split>-<hash>/tokens.bin`` with a manifest
recording the text hash, the tokenizer hash, the size and SHA-256; a mismatch (edited text, another tokenizer, a
truncated file) triggers a rebuild.
"""

from __future__ import annotations

import json
import re

import numpy as np
import torch

from workbench import cache
from workbench.data import shards
from workbench.data.corpus import Corpus, MixCorpus

# Text whose ids exercise what turns text into ids beyond the vocabulary: normalisation, pre-tokenisation (spaces,
# digits, punctuation, newlines and tabs, scripts) and the merges.
PROBE = ("The State of the Union, 1790-2024: \"We the People\" -- it's 3.14159 & 42% of $1,000,000!\n\n"
         "\tdef f(x):\n        return {'a': [1, 2, 3]} if x else None  # comment\r\n"
         "    Naïve café résumé Ærø straße; Ελληνικά, русский, 中文, 日本語, 한국어, عربي, हिन्दी 🙂👍\n"
         "HTTP/1.1 200 OK <div class=\"x\">&amp;</div> ~`!@#^*()_+-=[]{}|\\:;<>,.?/ " + "a" * 40 + " end.")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would produce different ids: of its vocabulary (added tokens
    included) and of the ids it gives ``PROBE``. Not of its serialised file, which differs between versions of the
    tokenizers library (and of transformers' GGUF conversion) for the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    probe = tokenizer(PROBE, add_special_tokens=False).input_ids
    return cache.sha256_text(json.dumps([vocab, probe], ensure_ascii=False))


def token_ids(corpus: Corpus | MixCorpus, tokenizer) -> np.ndarray:
    """The corpus as a read-only (N,) uint32 memory map of token ids, built on first use and cached; a mix's split
    as the (N,) uint16 (or uint32) ids of its shards, read into memory (``workbench.data.shards.split_ids``)."""
    if isinstance(corpus, MixCorpus):
        return shards.split_ids(corpus.path, corpus.split, tokenizer_fingerprint(tokenizer), dict(corpus.weights))
    key = {"text_sha256": corpus.key, "tokenizer": tokenizer_fingerprint(tokenizer), "format": 1}
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus.name).strip("_")[-40:]
    folder = cache.cache_dir("tokens") / f"{slug}-{corpus.split}-{key['text_sha256'][:8]}{key['tokenizer'][:8]}"
    if cache.verify(folder, key) is not None:
        with cache.building(folder, key) as tmp:
            ids = tokenizer(corpus.text, add_special_tokens=False).input_ids
            if max(ids, default=0) >= 2**32:
                raise ValueError("token ids do not fit in uint32")
            np.asarray(ids, dtype=np.uint32).tofile(tmp / "tokens.bin")
    return np.memmap(folder / "tokens.bin", dtype=np.uint32, mode="r")


class PackedBlocks:
    """Non-overlapping blocks of ``block_len + 1`` tokens (inputs and next-token targets share all but one token).

    Batches are a pure function of (seed, step): block order is a fresh permutation each epoch, so a resumed run
    asks for ``batch(step)`` and gets exactly the batch it would have seen, with no loader state to save.
    """

    def __init__(self, ids: np.ndarray, block_len: int, seed: int = 0):
        if block_len < 1:
            raise ValueError(f"seq_len={block_len}: a sequence needs at least 1 token")
        self.ids, self.block_len, self.seed = ids, block_len, seed
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation) of the last epoch asked for
        self.num_blocks = (len(ids) - 1) // block_len
        if self.num_blocks < 1:
            raise ValueError(f"the corpus has {len(ids)} tokens: too few for one sequence of seq_len={block_len} "
                             f"tokens and its next-token target; use a seq_len below {max(len(ids) - 1, 1)} or a "
                             f"larger corpus")

    def __len__(self) -> int:
        return self.num_blocks

    def block(self, i: int) -> np.ndarray:
        start = i * self.block_len
        return np.asarray(self.ids[start:start + self.block_len + 1], dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks))
        return self._order[1]

    def batch(self, step: int, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The step-th batch: (batch_size, block_len + 1) int64 token ids on ``device``."""
        rows = []
        for k in range(step * batch_size, (step + 1) * batch_size):
            epoch, pos = divmod(k, self.num_blocks)
            rows.append(self.block(int(self.order(epoch)[pos])))
        return torch.from_numpy(np.stack(rows)).to(device)
