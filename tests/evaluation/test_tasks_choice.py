"""Task 2 (wb_choice, wb_choice_gen): the shipped file is the seeded builder's output over the held-out addresses,
its items are well formed, and both scorings run through the harness on a tiny random model with per-document
scores that agree with the model's own log-likelihoods and greedy answers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.data import load_corpus
from workbench.evaluation import choice, harness, tasks
from workbench.teachers.load import resolve_source

LIMIT = 2


@pytest.fixture(scope="module")
def shipped() -> list[dict]:
    path = tasks.check_data(tasks.get("wb_choice"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def documents():
    return choice.heldout_documents()


def test_the_shipped_file_is_what_the_builder_writes(tmp_path):
    summary = choice.build(tmp_path)
    assert (tmp_path / choice.FILE).read_bytes() == tasks.data_path(tasks.get("wb_choice")).read_bytes()
    assert summary["items"] == choice.N_ITEMS


def test_the_builder_is_deterministic_and_seeded(tmp_path, documents):
    small = tuple(type(d)(d.title, d.text[:20000]) for d in documents)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    choice.build(tmp_path / "a", items=6, documents=small)
    choice.build(tmp_path / "b", items=6, documents=small)
    choice.build(tmp_path / "c", items=6, documents=small, seed=choice.SEED + 1)
    assert (tmp_path / "a" / choice.FILE).read_bytes() == (tmp_path / "b" / choice.FILE).read_bytes()
    assert (tmp_path / "a" / choice.FILE).read_bytes() != (tmp_path / "c" / choice.FILE).read_bytes()


def test_items_come_from_the_heldout_addresses_only(shipped, documents):
    heldout = {d.title for d in load_corpus("sotu", "heldout").documents}
    train = {d.title for d in load_corpus("sotu", "train").documents}
    text = {d.title: d.text for d in documents}
    assert {item["document"] for item in shipped} == heldout and not heldout & train
    for item in shipped:
        true = item["choices"][item["gold"]]
        own = text[item["document"]]
        assert item["context"] + " " + true in own          # the true sentence follows the passage
        for k, distractor in enumerate(item["choices"]):
            if k != item["gold"]:
                assert distractor not in own
                assert any(distractor in t for title, t in text.items() if title != item["document"])


def test_items_are_well_formed(shipped):
    golds = [item["gold"] for item in shipped]
    assert len(shipped) == choice.N_ITEMS and len({item["id"] for item in shipped}) == len(shipped)
    assert set(golds) == set(range(choice.N_CHOICES))
    assert max(golds.count(k) for k in range(choice.N_CHOICES)) < len(shipped) / 2   # no letter dominates
    for item in shipped:
        assert len(item["choices"]) == len(set(item["choices"])) == choice.N_CHOICES
        true = item["choices"][item["gold"]]
        assert choice.TARGET_WORDS[0] <= len(true.split()) <= choice.TARGET_WORDS[1]
        assert all(abs(len(c) - len(true)) <= choice.LENGTH_TOLERANCE * len(true) for c in item["choices"])
        assert choice.MIN_CONTEXT_CHARS <= len(item["context"]) <= choice.CONTEXT_CHARS
        assert "[" not in item["context"] and not any("[" in c for c in item["choices"])


def test_sentences_split_at_ends_but_not_after_titles():
    text = "Mr. Speaker, thank you. We met Dr. Smith in the U.S. today! Why?\n\nA new paragraph starts."
    got = choice.split_sentences(text)
    assert [s.text for s in got] == ["Mr. Speaker, thank you.", "We met Dr. Smith in the U.S. today!", "Why?",
                                     "A new paragraph starts."]
    assert [s.first_in_paragraph for s in got] == [True, False, False, True]
    assert all(text[s.start:s.end] == s.text for s in got)


def test_clean_text_keeps_the_spoken_words():
    raw = ("The President. Two years ago—[applause]. And today [Laughter] we met.\n\nAudience members. Boo!\n\n"
           "It costs [caps; White House correction] less.")
    assert choice.clean_text(raw) == "Two years ago. And today we met.\n\nIt costs less."


def test_the_generated_scoring_credits_the_closest_choice():
    choices = ["We will build new roads and bridges.", "Taxes are going down for families.",
               "Our troops are coming home this year.", "The border is secure tonight."]
    assert choice.closest_choice_credit(" We will build roads.", choices, 0) == 1.0
    assert choice.closest_choice_credit(" We will build roads.", choices, 1) == 0.0
    assert choice.closest_choice_credit("\n\nOur troops come home.\nWe will build roads.", choices, 2) == 1.0
    assert choice.closest_choice_credit("", choices, 3) == 0.25                  # nothing written: chance
    assert choice.closest_choice_credit(" Zebras!", choices, 1) == 0.25           # nothing shared: chance
    colours = ["red blue", "green blue", "red green", "black white"]
    assert [choice.closest_choice_credit("Blue.", colours, gold) for gold in range(4)] == [0.5, 0.5, 0.0, 0.0]
    assert choice.words("It's 2 o'clock, Mr. President—OK?") == ["it's", "2", "o'clock", "mr", "president", "ok"]
    assert choice.overlap_f1(["a", "b", "b"], ["b", "c"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    doc = {"choices": choices, "gold": 0, "context": "x"}
    assert choice.score_generated(doc, [" We will build roads."]) == {"acc": 1.0}


def test_the_rows_use_the_modules_settings():
    generated = tasks.get("wb_choice_gen")
    assert generated.config["generation_kwargs"]["max_gen_toks"] == choice.MAX_GEN_TOKS
    assert tasks.get("wb_choice").chance == generated.chance == 1 / choice.N_CHOICES
    assert tasks.get("wb_choice").data == generated.data == choice.FILE


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer random Llama over the default teacher's vocabulary, and that tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("smollm2-135m", progress=False)[0])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval(), tokenizer


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)     # (T, V)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))


def test_both_scorings_run_through_the_harness(tiny, shipped):
    model, tokenizer = tiny
    result = harness.evaluate(harness.lm_for(model, tokenizer, batch_size=2), ["wb_choice", "wb_choice_gen"],
                              limit=LIMIT, samples=True, progress=False)
    assert {name: result["tasks"][name]["n"] for name in ("wb_choice", "wb_choice_gen")} == \
        {"wb_choice": LIMIT, "wb_choice_gen": LIMIT}
    assert result["tasks"]["wb_choice"]["metric"] == "acc_norm" and result["tasks"]["wb_choice"]["chance"] == 0.25
    for sample in result["samples"]["wb_choice"]:
        doc = shipped[sample["doc_id"]]
        scores = [_loglikelihood(model, tokenizer, doc["context"], " " + c) for c in doc["choices"]]
        normed = [s / len(c) for s, c in zip(scores, doc["choices"])]    # lm_eval divides by characters
        assert sample["acc"] == float(max(range(4), key=scores.__getitem__) == doc["gold"])
        assert sample["acc_norm"] == float(max(range(4), key=normed.__getitem__) == doc["gold"])
    for sample in result["samples"]["wb_choice_gen"]:
        doc = shipped[sample["doc_id"]]
        ids = tokenizer(doc["context"], return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=choice.MAX_GEN_TOKS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert sample["response"] == expected[:200]
        assert sample["acc"] == choice.closest_choice_credit(expected, doc["choices"], doc["gold"])
