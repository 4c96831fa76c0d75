"""The lm-evaluation-harness wrapper (workbench.evaluation.harness) on tiny random models: a shipped task through
`workbench eval --tasks`, its results JSON, per-document scores that agree with the model's own greedy predictions,
a student with mixers (generation row by row), retention, and the bad inputs that must be one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lm_eval
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from workbench.cli import main
from workbench.evaluation import cloze, harness, tasks
from workbench.students import SPEC_KEY, build_student
from workbench.teachers.load import resolve_source

LIMIT = 3
RUN_FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-7a05f7d"  # a finished run of a tiny random teacher
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def tokenizer():
    """The default teacher's tokenizer (its cached conversion; no weights loaded)."""
    source, _ = resolve_source("smollm2-135m", progress=False)
    return AutoTokenizer.from_pretrained(source)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama (width 32) over the default teacher's vocabulary, float32, eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a model folder, with the tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer):
    """A tiny student (layer 1 a Mamba-2 mixer initialised from its attention) saved with the tokenizer."""
    path = tmp_path_factory.mktemp("tiny-student")
    student = build_student(tiny_llama(len(tokenizer)), "mamba2", replace=[1])
    student.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _docs(n: int) -> list[dict]:
    lines = tasks.data_path(tasks.get("wb_cloze")).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def test_eval_tasks_writes_a_results_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert main(["eval", "--model", str(tiny_dir), "--tasks", "wb_cloze,wb_cloze_gen", "--limit", str(LIMIT),
                 "--device", "cpu", "--samples", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["lm_eval_version"] == lm_eval.__version__
    assert result["model"]["name"] == str(tiny_dir) and result["model"]["kind"] == "model"
    assert result["model"]["parameters"] == sum(p.numel() for p in LlamaForCausalLM.from_pretrained(tiny_dir)
                                                .parameters())
    assert result["settings"] == {"num_fewshot": None, "limit": LIMIT, "dtype": "float32", "device": "cpu",
                                  "batch_size": 4}  # num_fewshot None: each task's own, 0 for the shipped ones
    assert set(result["tasks"]) == {"wb_cloze", "wb_cloze_gen"}
    for name, row in result["tasks"].items():
        spec = tasks.get(name)
        assert row["n"] == LIMIT and row["metric"] == spec.metric and row["chance"] == spec.chance
        assert row["num_fewshot"] == 0 and row["scoring"] == spec.scoring
        assert 0.0 <= row["score"] <= 1.0 and row["score"] == row["metrics"][spec.metric]
        assert len(result["samples"][name]) == LIMIT
    printed = capsys.readouterr().out
    assert re.search(r"wb_cloze\s+acc\s+3\s+0\.000\s+\d\.\d{3}", printed), printed
    assert f"wrote {out}" in printed


def _greedy_text(model, tokenizer, context: str) -> str:
    ids = tokenizer(context, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=cloze.MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]


def test_per_document_scores_are_the_models_own_greedy_answers(tiny_dir, tokenizer, tmp_path, monkeypatch):
    """Cloze documents made for the tiny model: half end in the word it continues with greedily (its own answer),
    half in a word it does not write. Both scorings must give exactly that pattern, document by document, and each
    generated answer must be the model's own greedy continuation."""
    model = LlamaForCausalLM.from_pretrained(tiny_dir).eval()
    docs = []
    for doc in _docs(40):
        answer = re.match(r" ([A-Za-z]+)\b", _greedy_text(model, tokenizer, doc["context"]))
        context = tokenizer(doc["context"])["input_ids"]
        if answer and tokenizer(doc["context"] + answer.group())["input_ids"][:len(context)] == context:
            right = len(docs) % 2 == 0
            docs.append({**doc, "target": answer.group(1) if right else "zebra", "meta": {"right": right}})
        if len(docs) == 4:
            break
    assert len(docs) == 4, "the tiny model should start a word after a few of the passages"
    (tmp_path / "cloze.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    monkeypatch.setattr(tasks, "DATA", tmp_path)
    result = harness.evaluate(harness.lm_for(model, tokenizer, batch_size=2), ["wb_cloze", "wb_cloze_gen"],
                              samples=True, progress=False)
    expected = {i: float(d["meta"]["right"]) for i, d in enumerate(docs)}
    assert {s["doc_id"]: s["acc"] for s in result["samples"]["wb_cloze"]} == expected
    assert {s["doc_id"]: s["exact_match"] for s in result["samples"]["wb_cloze_gen"]} == expected
    assert result["tasks"]["wb_cloze"]["score"] == result["tasks"]["wb_cloze_gen"]["score"] == 0.5
    for sample in result["samples"]["wb_cloze_gen"]:
        assert sample["response"] == _greedy_text(model, tokenizer, docs[sample["doc_id"]]["context"])[:200]
        assert sample["meta"] == docs[sample["doc_id"]]["meta"]


def test_a_student_runs_through_the_harness_and_generates_row_by_row(student_dir):
    """A saved student loads as a student; batched generation (left-padded by lm_eval) gives each document the
    answer it gets alone, because rows with mixers are generated without their padding."""
    model = harness.load_lm(str(student_dir), device="cpu", dtype="float32", batch_size=LIMIT)
    assert model.description["kind"] == "student" and model.description["mixers"]["layers"] == [1]
    assert model.description["row_by_row_generation"]
    batched = harness.evaluate(model, ["wb_cloze_gen"], limit=LIMIT, samples=True, progress=False)
    alone = harness.evaluate(harness.load_lm(str(student_dir), device="cpu", dtype="float32", batch_size=1),
                             ["wb_cloze_gen"], limit=LIMIT, samples=True, progress=False)
    assert batched["tasks"]["wb_cloze_gen"]["n"] == LIMIT
    assert [s["response"] for s in batched["samples"]["wb_cloze_gen"]] == \
           [s["response"] for s in alone["samples"]["wb_cloze_gen"]]


def test_a_run_folder_is_evaluated_as_its_latest_checkpoint(monkeypatch):
    """The run folder of tests/fixtures (teacher named by a path relative to the folder, so read from inside it)."""
    monkeypatch.chdir(RUN_FIXTURE)
    model = harness.load_lm(".", device="cpu", dtype="float32")
    assert model.description["kind"] == "run" and model.description["step"] == 6
    assert model.description["teacher"] == "teacher" and model.description["mixers"]["layers"] == [1]
    result = harness.evaluate(model, ["wb_cloze"], limit=2, progress=False)
    assert result["tasks"]["wb_cloze"]["n"] == 2 and 0 <= result["tasks"]["wb_cloze"]["score"] <= 1


def test_retention_is_chance_normalised_and_the_table_puts_models_side_by_side():
    def result(name, acc, gen):
        return {"model": {"name": name}, "tasks": {
            "wb_choice_like": {"score": acc, "metric": "acc", "chance": 0.25, "n": 40},
            "wb_cloze_gen": {"score": gen, "metric": "exact_match", "chance": 0.0, "n": 40}}}
    teacher, student = result("teacher", 0.75, 0.8), result("student", 0.5, 0.2)
    rows = {row["task"]: row for row in harness.compare([teacher, student])}
    assert rows["wb_choice_like"]["retention"] == [1.0, pytest.approx(0.5)]
    assert rows["wb_cloze_gen"]["retention"] == [1.0, pytest.approx(0.25)]
    assert harness.retention(0.3, 0.2, 0.25) is None  # a teacher at or below chance has no margin to keep
    table = harness.format_table([teacher, student]).splitlines()
    assert table[0].split() == ["task", "metric", "n", "chance", "teacher", "student", "retention", "student"]
    assert table[2].split() == ["wb_cloze_gen", "exact_match", "40", "0.000", "0.800", "0.200", "0.250"]


def test_the_shipped_table_matches_its_files():
    """Every shipped row has its data file, a chance level in [0, 1), a known scoring, and a config lm_eval can
    load; the cloze file holds distinct items whose target is a word of the context."""
    for row in tasks.SHIPPED:
        assert row.name.startswith(tasks.PREFIX) and 0 <= row.chance < 1
        assert row.scoring in (tasks.LOGLIKELIHOOD, tasks.GENERATE)
        config = tasks.lm_eval_config(row)
        assert config["dataset_kwargs"]["data_files"]["test"] == str(tasks.data_path(row))
        assert not any(isinstance(v, str) and v.startswith(tasks.FUNCTION_TAG) for v in config.values())
    docs = _docs(10**6)
    assert len(docs) == cloze.ITEMS and len({(d["context"], d["target"]) for d in docs}) == len(docs)
    assert all(re.search(rf"\b{d['target']}\b", d["context"], re.IGNORECASE) for d in docs)


def test_the_student_key_spelled_in_the_harness_is_the_students():
    assert harness.STUDENT_KEY == SPEC_KEY


def _refused(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_a_student_folder_missing_its_weights_is_one_line(student_dir, tmp_path, capsys):
    broken = tmp_path / "student"
    shutil.copytree(student_dir, broken)
    (broken / "model.safetensors").unlink()
    line = _refused(["eval", "--model", str(broken), "--tasks", "wb_cloze", "--device", "cpu"], capsys)
    assert f"--model {broken}" in line and "model.safetensors" in line and "save_pretrained" in line


def test_missing_shipped_data_names_the_build_command(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tasks, "DATA", tmp_path / "empty")
    line = _refused(["eval", "--model", str(tiny_dir), "--tasks", "wb_cloze_gen"], capsys)
    assert "--tasks wb_cloze_gen" in line and "cloze.jsonl" in line
    assert "python -m workbench.evaluation.tasks build wb_cloze_gen" in line


def test_unknown_tasks_and_data_missing_offline_are_one_line(tmp_path, capsys):
    from lm_eval.tasks import TaskManager

    line = _refused(["eval", "--tasks", "wb_clozee"], capsys)
    assert "wb_clozee" in line and "wb_cloze_gen" in line
    bare = TaskManager(include_defaults=False)  # lm_eval's own index takes minutes to build on this CPU
    with pytest.raises(ValueError, match=r"^unknown task 'no_such_task': neither shipped") as info:
        harness.load_tasks(["no_such_task"], bare)
    assert "\n" not in str(info.value)
    task = tmp_path / "mine.yaml"
    task.write_text(f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path}/gone.jsonl\n"
                    f"test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{{{q}}}}'\n"
                    f"doc_to_target: '{{{{a}}}}'\n")
    with pytest.raises(ValueError, match=r"^task .*mine.yaml: its data is not available offline") as info:
        harness.load_tasks([str(task)], bare)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args", [["--tasks", "list"], ["--tasks", "wb_clozee"],
                                  ["--tasks", "wb_cloze", "--limit", "0"]], ids=" ".join)
def test_task_names_are_checked_before_torch_loads(args, tmp_path):
    """`eval --tasks list` and a wrong task name answer without importing torch or lm_eval."""
    code = ("import sys\nfrom workbench.cli import main\nmain(['eval', *sys.argv[1:]])\n"
            "print(sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
