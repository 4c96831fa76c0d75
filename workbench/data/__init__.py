"""Corpora, tokenisation with an on-disk cache, packed fixed-length blocks, and training mixes built from many
sources (``workbench.data.mix``, ``workbench.data.sources``) into packed token shards (``workbench.data.shards``)."""

from workbench.data.corpus import Corpus, Document, MixCorpus, load_corpus
from workbench.data.shards import is_mix
from workbench.data.tokens import PackedBlocks, token_ids

__all__ = ["Corpus", "Document", "MixCorpus", "is_mix", "load_corpus", "PackedBlocks", "token_ids"]
