"""A run folder written by the code of commit 7a05f7d (tests/fixtures/run-7a05f7d, made by its make.py) still reads:
its events through the typed readers, its row in the app's run table, and its checkpoint as a student that scores
what the run recorded. The folder holds every event type of that commit, a failed attempt and a resumed one."""

import json
import math
import shutil
from pathlib import Path

import pytest

from workbench.analysis.compare import compare
from workbench.app.runs import RunIndex
from workbench.data import load_corpus, token_ids
from workbench.distill import events as ev
from workbench.distill.config import RunConfig
from workbench.distill.load import load_run_student
from workbench.distill.run_dir import RunDir
from workbench.students import student_mixers
from workbench.viz import curves

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-7a05f7d"


@pytest.fixture
def old_run(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture inside a runs root; the working directory is the run folder, where the relative
    teacher path of its config ("teacher") points."""
    run = Path(shutil.copytree(FIXTURE, tmp_path / "runs" / FIXTURE.name, ignore=shutil.ignore_patterns("*.py")))
    monkeypatch.chdir(run)
    return run


def test_events_read_through_the_typed_readers(old_run):
    run = RunDir.open(old_run)
    events, offset = run.read_typed()
    assert offset == run.events_path.stat().st_size
    assert not [e for e in events if isinstance(e, ev.Unreadable)]
    newer = {ev.MicroBatch}                          # event types declared after this folder was written
    assert {type(e) for e in events} == set(ev.EVENTS.values()) - newer
    assert all(e.v == 0 and e.extra == {} for e in events)
    config = RunConfig.from_dict(run.config["run"])

    (start,) = ev.select(events, ev.RunStart)
    assert start.run_config == config and start.replaced == [1] and start.device == "cpu"
    assert start.student_parameters > start.teacher_parameters > 0 and start.world_size == 1
    assert {(e.stage, e.steps) for e in ev.select(events, ev.StageStart)} == {(s.name, s.steps) for s in config.stages}

    steps = ev.select(events, ev.Step)
    assert [e.step for e in steps] == list(range(1, 7))
    assert [(e.stage, sorted(e.terms)) for e in steps] == \
           [("matrix-orientation", ["matrix"])] * 3 + [("kd", ["ce", "kl"])] * 3
    assert all(e.tokens == 32 and e.tokens_per_s > 0 and e.lr > 0 and e.grad_norm > 0 for e in steps)
    assert [e.step for e in ev.select(events, ev.Checkpoint)] == list(range(1, 7))
    assert [(e.stage, e.step) for e in ev.select(events, ev.StageEnd)] == [("matrix-orientation", 3), ("kd", 6)]

    evals = ev.select(events, ev.Eval)
    assert [e.step for e in evals] == list(range(7)) and evals[0].stage == "init"
    assert all(e.split == "valid" and e.tokens > 0 and 0 <= e.agreement <= 1 for e in evals)

    (error,) = ev.select(events, ev.Error)
    assert error.message.startswith("non-finite loss") and error.stage == "kd" and math.isnan(error.terms["kl"])
    (resume,) = ev.select(events, ev.Resume)
    assert (resume.step, resume.stage_idx, resume.stage_step) == (3, 1, 0)
    assert [type(e) for e in events].index(ev.Error) < [type(e) for e in events].index(ev.Resume)

    (end,) = ev.select(events, ev.RunEnd)
    assert end.to_fields() == run.summary and end.steps == 6

    names = {t.name for t in curves.loss_curves(events).data}
    assert names == {"matrix-orientation · loss_matrix", "kd · loss", "kd · loss_kl", "kd · loss_ce"}
    assert list(next(t for t in curves.eval_curves(events).data if t.name == "student").x) == list(range(7))


def test_listed_in_the_run_table(old_run):
    (info,) = RunIndex(old_run.parent).scan()
    assert (info.name, info.status, info.teacher, info.mixer, info.replaced) == \
           ("run-7a05f7d", "finished", "teacher", "mamba2", "1")
    assert (info.step, info.total_steps, info.stage) == (6, 6, "kd")
    last = ev.select(ev.read_typed(old_run / "events.jsonl")[0], ev.Step)[-1]
    assert info.loss == last.loss and info.tokens_per_s > 0 and info.message == ""


def test_checkpoint_loads_into_a_student_that_scores_as_recorded(old_run):
    loaded = load_run_student(old_run, device="cpu")
    assert loaded.step == 6 and loaded.config.mixer == "mamba2" and sorted(student_mixers(loaded.student)) == [1]
    tensors, _ = RunDir.open(old_run).latest_checkpoint()
    params = dict(loaded.student.named_parameters())
    saved = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    assert saved and all(params[name].equal(value) for name, value in saved.items())
    # the last in-run evaluation, recomputed from the loaded student, on the same valid-split windows
    last = list(ev.iter_typed(old_run / "events.jsonl", ev.Eval))[-1]
    config = loaded.config
    ids = token_ids(load_corpus(config.evaluation_corpus, "valid"), loaded.teacher.tokenizer)
    metrics = compare(loaded.teacher, loaded.student, ids, window=config.eval_window, max_tokens=config.eval_tokens)
    assert metrics["tokens"] == last.tokens
    assert metrics["ppl_student"] == pytest.approx(last.ppl_student, rel=1e-4)
    assert metrics["ppl_teacher"] == pytest.approx(last.ppl_teacher, rel=1e-4)
    assert metrics["kl"] == pytest.approx(last.kl, rel=1e-2, abs=1e-6)
    assert json.loads((old_run / "checkpoints" / "latest.json").read_text())["step"] == loaded.step
