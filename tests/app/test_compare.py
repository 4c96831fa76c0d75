"""Runs compared (workbench.viz.compare): the table's final numbers, training tokens, wall time and throughput, the
overlaid curves by step and by tokens with resume markers, and final quality against tokens. A run folder written by
an older version (tests/fixtures/run-7a05f7d: stopped by an error, resumed, finished) is read from disk; the rest
are event lists built here. The dashboard's compare view adds the ticked runs' task scores (RUN/eval/, written here
with workbench.evaluation.store) beside their teacher's, and the command that scores a run that has none."""

import json
import math
import statistics
from pathlib import Path

import pytest

pytest.importorskip("pandas")
pytest.importorskip("plotly")

from workbench.distill.events import Eval, Resume, RunEnd, RunStart, Step  # noqa: E402
from workbench.distill.run_dir import RunDir  # noqa: E402
from workbench.evaluation import store  # noqa: E402
from workbench.viz.compare import (  # noqa: E402
    TABLE_COLUMNS,
    RunEvents,
    compare_runs,
    compare_table,
    eval_overlay,
    loss_overlay,
    quality_vs_tokens,
    read_run,
    wall_seconds,
)
from workbench.viz.curves import tokens_by_step  # noqa: E402
from workbench.viz.quality import read_records  # noqa: E402

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run-7a05f7d"
CONFIG = {"teacher": "t", "mixer": "mamba2", "stages": [{"name": "kd", "tokens": 96, "batch_size": 1, "seq_len": 32}]}


def lines(folder: Path) -> list[dict]:
    """The event lines of a run folder, parsed here without the library (the test's own reading)."""
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]


def run_end(ratio: float, train_tokens: int, stages=None, mixer="mamba2", replaced=(1,)) -> RunEnd:
    return RunEnd(teacher="t", mixer=mixer, replaced=list(replaced), steps=3, split="heldout", ppl_student=2 * ratio,
                  ppl_teacher=2.0, ppl_ratio=ratio, kl=0.1 * ratio, agreement=1 / (1 + ratio), tokens=64,
                  train_tokens=train_tokens, stages=stages)


def test_a_resumed_run_from_its_folder():
    raw = lines(FIXTURE)
    summary = json.loads((FIXTURE / "summary.json").read_text())
    comparison = compare_runs([FIXTURE], x="tokens")
    assert list(comparison.table.columns) == list(TABLE_COLUMNS)
    row = comparison.table.iloc[0]
    assert row["run"] == FIXTURE.name and row["status"] == "finished" and row["mixer"] == summary["mixer"]
    for column, key in [("held-out ratio", "ppl_ratio"), ("KL", "kl"), ("agreement", "agreement"),
                        ("student ppl", "ppl_student"), ("teacher ppl", "ppl_teacher"), ("train tokens",
                                                                                          "train_tokens")]:
        assert row[column] == pytest.approx(summary[key]), column
    # two processes: the first ended with its error line, the second with run_end; the clock restarted between
    ends_of_processes = [line["wall"] for line in raw if line["type"] == "error"] + [raw[-1]["wall"]]
    assert row["wall s"] == pytest.approx(sum(ends_of_processes))
    # an old log without per-stage throughput: the median step rate after the first three steps
    rates = [line["tokens_per_s"] for line in raw if line["type"] == "step"]
    assert row["tokens/s"] == pytest.approx(statistics.median(rates[3:]))
    assert math.isnan(row["MFU"])
    # the resume marker sits at the tokens trained before the resume, on every figure that has a time axis
    resume = next(line for line in raw if line["type"] == "resume")
    tokens_before = sum(line["tokens"] for line in raw if line["type"] == "step" and line["step"] <= resume["step"])
    for fig in (comparison.losses, comparison.evals):
        assert any(shape.x0 == tokens_before for shape in fig.layout.shapes)
        assert any("resumed" in (note.text or "") for note in fig.layout.annotations)
    # in-run evaluations: the ratio of each eval line, at the tokens of its step
    evals = [line for line in raw if line["type"] == "eval"]
    ratio = next(trace for trace in comparison.evals.data if trace.yaxis == "y")
    assert list(ratio.y) == pytest.approx([e["ppl_student"] / e["ppl_teacher"] for e in evals])
    assert comparison.quality.data[0].x == (summary["train_tokens"],)


def test_tokens_count_a_step_logged_on_both_sides_of_a_resume_once():
    events = [Step(step=1, stage="kd", loss=3.0, tokens=32), Step(step=2, stage="kd", loss=2.0, tokens=32),
              Resume(step=1, stage_idx=0, stage_step=1), Step(step=2, stage="kd", loss=2.5, tokens=32),
              Step(step=3, stage="kd", loss=2.0, tokens=64)]
    assert tokens_by_step(events) == {0: 0, 1: 32, 2: 64, 3: 128}
    fig = loss_overlay([RunEvents("r", events)], x="tokens")
    assert list(fig.data[0].x) == [32, 64, 128] and list(fig.data[0].y) == [3.0, 2.5, 2.0]   # the later step 2
    assert [shape.x0 for shape in fig.layout.shapes] == [32]                 # resumed after step 1: 32 tokens
    assert [shape.x0 for shape in loss_overlay([RunEvents("r", events)]).layout.shapes] == [1.5]   # after step 1
    # steps of older logs carry no tokens: the run config's batch x length of their stage
    old = [RunStart(config=CONFIG, replaced=[1]), Step(step=1, stage="kd", loss=3.0), Step(step=2, stage="kd", loss=2.)]
    assert tokens_by_step(old) == {0: 0, 1: 32, 2: 64}


def test_wall_time_sums_the_processes_and_throughput_weighs_stages_by_their_time():
    events = [Step(step=1, stage="a", loss=1.0, tokens=64, wall=4.0), Step(step=2, stage="a", loss=1.0, wall=9.0),
              Resume(step=2, stage_idx=1, stage_step=0, wall=0.5), Step(step=3, stage="b", loss=1.0, wall=3.0)]
    assert wall_seconds(events) == 9.0 + 3.0
    assert wall_seconds([]) is None
    stages = [{"stage": "a", "steps": 2, "batch_size": 2, "seq_len": 32, "tokens_per_s": 100.0, "mfu": 0.1,
               "peak_rss_gb": 1.5, "device_name": "cpu"},
              {"stage": "b", "steps": 1, "batch_size": 1, "seq_len": 32, "tokens_per_s": 50.0, "mfu": 0.3,
               "peak_rss_gb": 2.5, "device_name": "cpu"}]
    row = compare_table([RunEvents("r", [*events, run_end(1.2, 160, stages)])]).iloc[0]
    seconds = [128 / 100.0, 32 / 50.0]                       # each stage's tokens at its rate
    assert row["tokens/s"] == pytest.approx(160 / sum(seconds))
    assert row["MFU"] == pytest.approx((0.1 * seconds[0] + 0.3 * seconds[1]) / sum(seconds))
    assert row["peak memory GiB"] == 2.5 and row["device"] == "cpu" and row["wall s"] == 12.0


def test_unfinished_runs_have_curves_but_no_final_numbers():
    evals = [Eval(step=0, ppl_student=8.0, ppl_teacher=2.0, kl=1.0, agreement=0.2),
             Eval(step=2, ppl_student=4.0, ppl_teacher=2.0, kl=0.5, agreement=0.4)]
    steps = [Step(step=s, stage="kd", loss=3.0 - s, tokens=32) for s in (1, 2)]
    live = RunEvents("live", [RunStart(config=CONFIG, replaced=[1]), *steps, *evals])
    row = compare_table([live]).iloc[0]
    assert row["status"] == "unfinished" and row["steps"] == 2 and row["train tokens"] == 64
    assert all(math.isnan(row[c]) for c in ("held-out ratio", "KL", "agreement", "MFU"))
    fig = eval_overlay([live], x="tokens")
    by_axis = {trace.yaxis: trace for trace in fig.data}
    assert list(by_axis["y"].x) == [0, 64] and list(by_axis["y"].y) == [4.0, 2.0]
    assert list(by_axis["y2"].y) == [1.0, 0.5] and list(by_axis["y3"].y) == [0.2, 0.4]
    assert quality_vs_tokens([live]).data == ()                # nothing finished: an empty figure that says so
    assert "no finished run" in quality_vs_tokens([live]).layout.annotations[0].text


def test_quality_against_tokens_joins_runs_of_one_student_design():
    runs = [RunEvents("big", [run_end(1.5, 4000)]), RunEvents("small", [run_end(2.5, 1000)]),
            RunEvents("other", [run_end(1.9, 2000, mixer="hyena")]), RunEvents("mid", [run_end(2.0, 2000)])]
    fig = quality_vs_tokens(runs)
    curves = {trace.name: trace for trace in fig.data}
    assert set(curves) == {"mamba2 · 1", "hyena · 1"}
    assert list(curves["mamba2 · 1"].x) == [1000, 2000, 4000] and list(curves["mamba2 · 1"].y) == [2.5, 2.0, 1.5]
    assert list(curves["mamba2 · 1"].text) == ["small", "mid", "big"]


def test_bad_requests_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="x must be one of"):
        loss_overlay([], x="time")
    with pytest.raises(FileNotFoundError, match="no events.jsonl"):
        read_run(tmp_path)
    assert "no step events" in loss_overlay([]).layout.annotations[0].text


def scores(name: str, values: dict[str, float], limit: int = 2) -> dict:
    """A results JSON of ``workbench eval --tasks`` with these scores (wb_cloze: chance 0; wb_choice: 0.25)."""
    chance = {"wb_cloze": 0.0, "wb_choice": 0.25}
    return {"model": {"name": name}, "settings": {"limit": limit},
            "tasks": {task: {"score": s, "metric": "acc", "chance": chance[task], "n": limit,
                             "scoring": "loglikelihood"} for task, s in values.items()}}


def test_the_compare_view_shows_task_scores_beside_the_teacher(tmp_path):
    pytest.importorskip("panel")
    from workbench.app import Dashboard

    root = tmp_path / "runs"
    for name, teacher in [("a", "t"), ("b", "t"), ("c", "t"), ("d", "other")]:
        config = {**CONFIG, "teacher": teacher}
        run = RunDir.create(root / name, {"run": config})
        run.log("run_start", config=config, replaced=[1])
    store.save_run_results(root / "a", scores(str(root / "a"), {"wb_cloze": 0.5, "wb_choice": 0.4}))
    store.save_run_results(root / "d", scores(str(root / "d"), {"wb_cloze": 0.9}))
    runs = Dashboard(root).runs
    names = list(runs.table.value["run"])
    runs.table.selection = [names.index(n) for n in ("a", "b")]
    assert runs.compare_tasks_hint in runs.compare_body.objects and runs.compare_tasks in runs.compare_body.objects
    hint = runs.compare_tasks_hint.object
    # no teacher scores yet: a's scores alone, and the commands that score the teacher and b
    assert runs.compare_tasks.visible and {t.name for t in runs.compare_tasks.object.data} == {"a", "chance"}
    assert f"`workbench eval --model {root / 'a'} --tasks wb_cloze,wb_choice --limit 2 --teacher`" in hint
    assert f"**b** has no task scores yet: `workbench eval --model {root / 'b'} --tasks wb_cloze,wb_choice " \
           f"--limit 2`" in hint
    assert list(runs.compare_task_rows.value.columns) == ["task", "metric", "scoring", "chance", "n", "a"]
    # the teacher scored beside run c: it serves a and b too; b scored later shows up at the next refresh
    store.save_run_results(root / "c", scores("t", {"wb_cloze": 1.0, "wb_choice": 0.7}), teacher=True)
    store.save_run_results(root / "b", scores(str(root / "b"), {"wb_cloze": 0.25, "wb_choice": 0.7}))
    runs.refresh()
    table = runs.compare_task_rows.value.set_index("task")
    ticked = runs.compared                                     # in the table's order (newest first)
    assert sorted(ticked) == ["a", "b"]
    assert list(table.columns) == ["metric", "scoring", "chance", "n", "t (teacher)", *ticked,
                                   *(f"retention {name}" for name in ticked)]
    assert table.loc["wb_choice", "retention a"] == pytest.approx((0.4 - 0.25) / (0.7 - 0.25))
    assert table.loc["wb_cloze", "retention b"] == pytest.approx(0.25)
    assert {t.name for t in runs.compare_tasks.object.data} == {"t (teacher)", "a", "b", "chance"}
    assert "no task scores" not in runs.compare_tasks_hint.object
    # the first ticked run (in the table's order) sets the teacher; a run of another teacher is left out, said so
    runs.table.selection = [names.index(n) for n in ("a", "d")]
    kept, left_out = runs.compared
    teachers = {"a": "t", "d": "other"}
    assert f"**{left_out}** was distilled from another teacher ({teachers[left_out]})" in runs.compare_tasks_hint.object
    assert kept in runs.compare_task_rows.value and left_out not in runs.compare_task_rows.value
    # a results file linking out of its run folder is not read
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(scores("x", {"wb_cloze": 1.0})))
    (root / "b" / "eval" / "tasks.json").unlink()
    (root / "b" / "eval" / "tasks.json").symlink_to(outside)
    runs.table.selection = [names.index("b")]
    assert "links outside the run folder" in runs.compare_tasks_hint.object
    assert not runs.compare_tasks.visible and not runs.compare_task_rows.visible


def test_the_quality_campaigns_runs_load_by_row_and_budget():
    """The H200 runs of the quality curve in docs/results (events, no checkpoints): compared side by side, runs that
    share a folder name are named with their row, and their final ratios are the records' own."""
    campaign = Path(__file__).resolve().parents[2] / "docs" / "results" / "h200-2026-12-01"
    folders = sorted(campaign.glob("curve/*/30M-s0"))
    result = compare_runs(folders, x="tokens")
    assert set(result.table["run"]) == {"mil-0/30M-s0", "mil-25/30M-s0", "mil-50/30M-s0"}
    records = {(r["row"], r["budget"], r["seed"]): r for r in read_records(campaign / "quality_curve.json")}
    for _, row in result.table.iterrows():
        name = row["run"].split("/")[0]
        assert row["held-out ratio"] == pytest.approx(records[(name, 30_000_000, 0)]["ppl_ratio"])
    with pytest.raises(ValueError, match="not a quality-curve file"):
        read_records(folders[0] / "summary.json")
    # one row at one budget in two sweeps: named with the sweep folder too, the other runs as before
    sweep = campaign.parent / "h200-2026-12-02c" / "curve-e2e_lr_ratio-1.0" / "mil-25" / "30M-s0"
    names = set(compare_runs([*folders, sweep], x="tokens").table["run"])
    assert names == {"mil-0/30M-s0", "curve/mil-25/30M-s0", "curve-e2e_lr_ratio-1.0/mil-25/30M-s0", "mil-50/30M-s0"}
