"""Corpora, tokenisation with an on-disk cache, and packed fixed-length blocks."""

from workbench.data.corpus import Corpus, Document, load_corpus
from workbench.data.tokens import PackedBlocks, token_ids

__all__ = ["Corpus", "Document", "load_corpus", "PackedBlocks", "token_ids"]
