"""Task 3 (wb_recall_512, wb_recall_2k, wb_recall_8k): the shipped rows are the seeded builder's, every prompt falls
in its length bin and fits the default teacher's positions with the answer, the answer is in the prompt exactly
once, and the tasks run through the harness on a tiny random model with the model's own greedy answers scored."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.evaluation import harness, recall, tasks
from workbench.teachers.load import resolve_source, teacher_config

SLACK = 24   # a prompt is at most this many tokens short of its budget (a pair line is about 10 tokens)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_source("smollm2-135m", progress=False)[0])


def _rows(suffix: str) -> list[dict]:
    path = tasks.check_data(tasks.get(f"wb_recall_{suffix}"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pairs_are_distinct_and_seeded():
    listed = recall.pairs(7, 500)
    assert len({name for name, _ in listed}) == len({number for _, number in listed}) == 500
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", name) and re.fullmatch(r"[1-9]\d{4}", number)
               for name, number in listed)
    assert recall.pairs(7, 500) == listed and recall.pairs(8, 500) != listed
    assert recall.pairs(7, 20) == listed[:20]                   # a shorter list is a prefix: sizes are comparable


@pytest.mark.parametrize("suffix", list(recall.LENGTHS))
def test_the_shipped_rows_are_the_builders(tokenizer, suffix):
    rows = _rows(suffix)
    assert len(rows) == recall.ITEMS[suffix]
    rebuilt = recall.build_items(tokenizer, suffix, 2)         # item i depends on (seed, suffix, i) only
    assert [json.loads(json.dumps(asdict(item))) for item in rebuilt] == rows[:2]


def test_the_builder_writes_the_same_bytes_twice(tmp_path, tokenizer):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        recall.build(tmp_path / name, items={"512": 3}, tokenizer=tokenizer)
    assert (tmp_path / "a" / "recall_512.jsonl").read_bytes() == (tmp_path / "b" / "recall_512.jsonl").read_bytes()


@pytest.mark.parametrize("suffix", list(recall.LENGTHS))
def test_prompts_fall_in_their_bins_and_hold_the_answer_once(tokenizer, suffix):
    length = recall.LENGTHS[suffix]
    positions = teacher_config("smollm2-135m", progress=False).max_position_embeddings
    for row in _rows(suffix):
        prompt = recall.prompt(row)
        tokens = recall.prompt_tokens(tokenizer, prompt)
        answer = recall.prompt_tokens(tokenizer, " " + row["answer"])
        assert length - recall.RESERVE - SLACK <= tokens <= length - recall.RESERVE, (row["id"], tokens)
        assert tokens + 1 + max(answer, recall.MAX_GEN_TOKS) <= min(length, positions)   # BOS, answer
        assert prompt.count(row["answer"]) == 1
        assert prompt.count(f"\n{row['key']}: ") == 1 and prompt.endswith(f"Answer: {row['key']}:")
        assert f"\n{row['key']}: {row['answer']}\n" in prompt
        worked = re.findall(r"\nAnswer: ([A-Za-z]+ [A-Za-z]+): (\d+)\n", prompt)     # the two worked questions
        assert len(worked) == 2 and row["key"] not in {name for name, _ in worked}
        assert all(prompt.count(f"\n{name}: {number}\n") == 1 for name, number in worked)   # as in the list
        assert row["meta"] == {"length": length, "depth": round(row["query"] / (row["n_pairs"] - 1), 4)}


def test_queries_spread_over_the_list():
    depths = [row["meta"]["depth"] for suffix in recall.LENGTHS for row in _rows(suffix)]
    assert min(depths) < 0.2 and max(depths) > 0.8


def test_the_score_is_the_first_number():
    doc = {"answer": "40532"}
    assert [recall.score(doc, [r])["exact_match"] for r in (" 40532", "40532.", " 40532 and", " 4053", " 405321",
                                                             "", " Ada: 40532")] == [1, 1, 1, 0, 0, 0, 0]


def test_recall_runs_through_the_harness(tokenizer):
    """The 512 task on a tiny random Llama: each response is the model's greedy continuation of the prompt and its
    score is ``recall.score`` of it."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    result = harness.evaluate(harness.lm_for(model, tokenizer, batch_size=2), ["wb_recall_512"], limit=2,
                              samples=True, progress=False)
    assert result["tasks"]["wb_recall_512"]["n"] == 2 and result["tasks"]["wb_recall_512"]["chance"] == 0.0
    rows = _rows("512")
    for sample in result["samples"]["wb_recall_512"]:
        row = rows[sample["doc_id"]]
        assert sample["meta"] == row["meta"]
        ids = tokenizer(recall.prompt(row), return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=recall.MAX_GEN_TOKS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert sample["response"] == expected
        assert sample["exact_match"] == recall.score(row, [expected])["exact_match"]
