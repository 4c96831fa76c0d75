"""Task scores kept in run folders (workbench.evaluation.store): later evaluations merge into RUN/eval/tasks.json
task by task, atomically; the teacher's scores are the run's own teacher.json or a neighbour's of the same teacher;
`workbench eval --model RUN --tasks ... [--teacher]` writes both and prints the run beside its teacher; bad folders
and files are refused in one line that names the fix."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.evaluation import store

RUN_FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-7a05f7d"  # a finished run of a tiny random teacher
pytestmark = pytest.mark.usefixtures("one_thread")


def result(name: str, scores: dict[str, float], limit: int = 2, step: int | None = None, samples=None) -> dict:
    """A results JSON as harness.evaluate writes it, with the scores given (metric acc, chance 0, n = limit)."""
    out = {"format": 1, "model": {"name": name, "step": step}, "settings": {"limit": limit},
           "tasks": {task: {"score": s, "metric": "acc", "chance": 0.0, "n": limit} for task, s in scores.items()},
           "seconds": 1.0}
    if samples is not None:
        out["samples"] = samples
    return out


def run_folder(path: Path, teacher: str = "smollm2-135m") -> Path:
    """A folder whose config.json is a run's (what the store checks; nothing here trains)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"run": {"teacher": teacher}}))
    return path


def test_later_evaluations_merge_task_by_task(tmp_path):
    run = run_folder(tmp_path / "a")
    first = result(str(run), {"wb_cloze": 0.5, "wb_choice": 0.25}, limit=2, step=10,
                   samples={"wb_cloze": [{"doc_id": 0}], "wb_choice": [{"doc_id": 0}]})
    file = store.save_run_results(run, first)
    assert file == run / "eval" / "tasks.json"
    again = result(str(run), {"wb_choice": 0.75, "wb_cloze_gen": 1.0}, limit=4, step=20)
    store.save_run_results(run, again)
    saved = store.run_results(run)
    assert {t: e["score"] for t, e in saved["tasks"].items()} == {"wb_cloze": 0.5, "wb_choice": 0.75,
                                                                   "wb_cloze_gen": 1.0}
    # each task keeps the settings and checkpoint step of the evaluation that scored it
    assert (saved["tasks"]["wb_cloze"]["step"], saved["tasks"]["wb_cloze"]["settings"]) == (10, {"limit": 2})
    assert (saved["tasks"]["wb_choice"]["step"], saved["tasks"]["wb_choice"]["settings"]) == (20, {"limit": 4})
    assert saved["settings"] == {"limit": 4} and saved["model"]["step"] == 20   # the newest evaluation's
    assert saved["samples"] == {"wb_cloze": [{"doc_id": 0}]}    # wb_choice scored again without samples: dropped
    assert "seconds" not in saved
    assert sorted(p.name for p in (run / "eval").iterdir()) == [".lock", "tasks.json"]   # no temporary file left
    assert store.run_results(run_folder(tmp_path / "b")) is None


def test_the_teacher_scores_are_the_runs_own_or_a_neighbours_of_the_same_teacher(tmp_path):
    a, b, c = (run_folder(tmp_path / n) for n in "abc")
    other = run_folder(tmp_path / "d", teacher="elsewhere")
    assert store.teacher_results(a) is None
    store.save_run_results(other, result("elsewhere", {"wb_cloze": 0.1}), teacher=True)
    assert store.teacher_results(a) is None                          # another teacher's scores do not count
    store.save_run_results(b, result("smollm2-135m", {"wb_cloze": 0.9}), teacher=True)
    assert store.teacher_results(a)["tasks"]["wb_cloze"]["score"] == 0.9
    newer = store.save_run_results(c, result("smollm2-135m", {"wb_cloze": 0.8}), teacher=True)
    os.utime(newer, ns=(newer.stat().st_mtime_ns + 10**9,) * 2)
    assert store.teacher_results(a)["tasks"]["wb_cloze"]["score"] == 0.8          # the newest neighbour
    assert store.teacher_results(a, others=[b])["tasks"]["wb_cloze"]["score"] == 0.9  # only where told to look
    store.save_run_results(a, result("smollm2-135m", {"wb_cloze": 1.0}), teacher=True)
    assert store.teacher_results(a)["tasks"]["wb_cloze"]["score"] == 1.0          # its own first
    assert store.eval_command(tmp_path / "my run", ["wb_cloze", "wb_choice"], 4, teacher=True) == \
        f"workbench eval --model '{tmp_path / 'my run'}' --tasks wb_cloze,wb_choice --limit 4 --teacher"


def test_bad_folders_and_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json: not a run folder"):
        store.save_run_results(tmp_path, result("x", {"wb_cloze": 0.5}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a run folder: its config.json holds no \"run\""):
        store.save_run_results(model, result("x", {"wb_cloze": 0.5}))
    assert not (model / "eval").exists()
    run = run_folder(tmp_path / "a")
    (run / "eval").mkdir()
    (run / "eval" / "tasks.json").write_text("{\"half")
    with pytest.raises(ValueError, match=r"is not JSON .*delete it and score again \(`workbench eval --model"):
        store.save_run_results(run, result("x", {"wb_cloze": 0.5}))
    assert (run / "eval" / "tasks.json").read_text() == "{\"half"   # not replaced


@pytest.fixture
def fixture_run(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture run in runs/a, the working directory (its teacher is named relative to it)."""
    run = tmp_path / "runs" / "a"
    shutil.copytree(RUN_FIXTURE, run)
    monkeypatch.chdir(run)
    return run


def test_eval_of_a_run_folder_saves_into_it_and_shows_its_teacher(fixture_run, capsys):
    assert main(["eval", "--model", ".", "--tasks", "wb_cloze,wb_choice", "--limit", "2", "--device", "cpu",
                 "--teacher"]) == 0
    printed = capsys.readouterr().out
    run, teacher = store.run_results("."), store.teacher_results(".")
    assert set(run["tasks"]) == set(teacher["tasks"]) == {"wb_cloze", "wb_choice"}
    assert run["model"]["kind"] == "run" and run["tasks"]["wb_cloze"]["step"] == 6
    assert teacher["model"]["name"] == "teacher" and teacher["tasks"]["wb_cloze"]["step"] is None
    assert "wrote eval/tasks.json" in printed and "wrote eval/teacher.json" in printed
    header = next(line for line in printed.splitlines() if line.startswith("task "))
    assert header.split() == ["task", "metric", "n", "chance", "teacher", ".", "retention", "."]
    # another task later: merged into the run's file; the saved teacher scores lack it, which is said
    assert main(["eval", "--model", ".", "--tasks", "wb_cloze_gen", "--limit", "2", "--device", "cpu"]) == 0
    assert "saved teacher scores lack wb_cloze_gen: add --teacher" in capsys.readouterr().out
    assert set(store.run_results(".")["tasks"]) == {"wb_cloze", "wb_choice", "wb_cloze_gen"}
    assert main(["eval", "--model", ".", "--tasks", "wb_cloze", "--limit", "1", "--device", "cpu"]) == 0
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert table[0].split()[4:] == ["teacher", ".", "retention", "."]   # the saved teacher, as the reference
    assert store.run_results(".")["tasks"]["wb_cloze"]["n"] == 1


def _refused(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def test_teacher_is_for_run_folders_and_tasks(fixture_run, capsys):
    line = _refused(["eval", "--model", "teacher", "--tasks", "wb_cloze", "--teacher"], capsys)
    assert "--teacher scores the teacher of a run folder" in line and "is a model" in line
    line = _refused(["eval", "--model", ".", "--teacher"], capsys)
    assert "--teacher applies to --tasks only" in line
    assert not (fixture_run / "eval").exists()
