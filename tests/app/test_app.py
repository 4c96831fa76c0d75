"""The dashboard's state without a browser: path checks, run status from folders, and a real tiny CPU run started,
watched and stopped through the Runs tab's parameters (a child process, as from the page)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from workbench.app import Dashboard
from workbench.app.paths import inside_root, run_folder, teacher_source
from workbench.app.runs import RunIndex
from workbench.cli import main
from workbench.distill.events import Resume, Step, iter_events, select
from workbench.distill.run_dir import RunDir


def wait_for(condition, timeout=90.0, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def test_paths_typed_into_the_page_are_checked(tmp_path, tiny_teacher_dir):
    root = tmp_path / "runs"
    assert run_folder(root, "run-1") == (root / "run-1").resolve()
    for bad in ["../escape", "/etc", ".hidden", "a/b", "", "x" * 101]:
        with pytest.raises(ValueError):
            run_folder(root, bad)
    with pytest.raises(ValueError, match="not inside"):
        inside_root(root, tmp_path / "elsewhere")
    assert teacher_source("smollm2-135m") == "smollm2-135m"
    assert teacher_source(tiny_teacher_dir) == str(os.path.realpath(tiny_teacher_dir))
    for bad in ["HuggingFaceTB/SmolLM2-135M", str(tmp_path / "missing"), str(tmp_path)]:
        with pytest.raises(ValueError, match="registry name"):
            teacher_source(bad)


def test_app_binds_loopback_unless_remote_is_allowed(capsys):
    assert main(["app", "--host", "0.0.0.0", "--runs-root", "unused"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_status_and_events_come_from_the_folders(tmp_path):
    root = tmp_path / "runs"
    config = {"teacher": "t", "mixer": "hyena", "stages": [{"tokens": 64, "batch_size": 1, "seq_len": 32}]}
    runs = {name: RunDir.create(root / name, {"run": config}) for name in ["done", "broken", "halted", "live"]}
    runs["done"].write_summary({"ppl_student": 2.0})
    runs["broken"].log("run_start", config=config, replaced=[1])
    runs["broken"].log("error", message="non-finite loss")
    runs["halted"].log("run_start", config=config, replaced=[1])
    runs["halted"].log("step", step=1, stage="kd", loss=3.0, tokens=32, tokens_per_s=100.0)
    # the live run's writer: a process whose command line is a distill of that folder, started before its LOCK
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "distill", "--out",
                               str(root / "live")])
    time.sleep(0.3)
    runs["live"].lock_path.write_text(str(writer.pid))
    (root / "not-a-run").mkdir()
    index = RunIndex(root)
    try:
        infos = {info.name: info for info in index.scan()}
    finally:
        writer.kill()
        writer.wait()
    assert {n: i.status for n, i in infos.items()} == {"done": "finished", "broken": "failed", "halted": "stopped",
                                                       "live": "running", "not-a-run": "not a run"}
    assert infos["broken"].message == "non-finite loss"
    assert (infos["halted"].step, infos["halted"].total_steps, infos["halted"].loss) == (1, 2, 3.0)
    offset = index.states["halted"].offset
    runs["halted"].log("step", step=2, stage="kd", loss=2.5, tokens=32, tokens_per_s=100.0)
    index.scan()
    state = index.states["halted"]
    assert state.offset > offset and [e.step for e in select(state.events, Step)] == [1, 2]


def test_a_folder_of_run_folders_lists_its_runs_by_their_path(tmp_path):
    """The quality curve's layout, ROW/BUDGET-sSEED (the H200 runs in docs/results, copied): each run is a row named
    by its path from the root, finished, with its final numbers; a folder holding no run stays one "not a run" row."""
    import shutil
    from pathlib import Path

    curve = Path(__file__).resolve().parents[2] / "docs" / "results" / "h200-2026-12-01" / "curve"
    shutil.copytree(curve / "mil-25", tmp_path / "mil-25")
    (tmp_path / "mil-25" / "notes").mkdir()                     # no run in it: not listed inside the group
    (tmp_path / "empty-group").mkdir()
    infos = {info.name: info for info in RunIndex(tmp_path).scan()}
    assert {n: i.status for n, i in infos.items()} == {"mil-25/30M-s0": "finished", "mil-25/8M-s0": "finished",
                                                       "mil-25/8M-s1": "finished", "empty-group": "not a run"}
    done = infos["mil-25/30M-s0"]
    assert (done.mixer, done.step, done.total_steps) == ("mamba2", 915, 915)


def test_a_tiny_cpu_run_starts_streams_stops_and_resumes(tmp_path, tiny_teacher_dir):
    app = Dashboard(tmp_path / "runs")
    app.teacher.source, app.teacher.device = tiny_teacher_dir, "cpu"
    app.teacher.load()
    assert app.student.num_layers == 2
    app.student.keep_attention = [0]
    app.student.mixer = "mamba2"
    app.student.build()
    assert app.student.counts["replaced_layers"] == 1 and app.student.counts["mixers"] > 0
    runs = app.runs
    runs.param.update(recipe="kd", tokens="320k", batch_size=1, seq_len=32, eval_every=0, checkpoint_every=2,
                      device="cpu", final_eval_tokens=65, run_name="tiny")
    assert runs.planned_steps == 10_000
    runs.recipe = "mohawk"   # three stages, each counting its own steps, as the run does
    assert runs.planned_steps == sum(stage.steps for stage in runs.run_config().stages) == 9_999
    runs.recipe = "mamba-in-llama"   # the recipe's measured dials: the end-to-end stage at the mixers' peak rate
    assert [stage.lr for stage in runs.run_config().stages] == [runs.lr, runs.lr]
    runs.recipe = "kd"
    assert runs.run_config().compile is False
    runs.compile = True
    assert runs.run_config().compile is True
    runs.compile = False
    out = runs.start()
    try:
        assert runs.selected == "tiny" and runs.selected_info().status in ("starting", "running")

        def steps_seen(n):
            runs.refresh()
            return runs.selected_info().step >= n and (out / "checkpoints" / "latest.json").exists()

        assert wait_for(lambda: steps_seen(3)), runs.index.states["tiny"].log_tail()
        info = runs.selected_info()
        assert info.status == "running" and info.tokens_per_s > 0 and info.eta_s is not None
        assert sum(len(t.x) for t in runs.loss_pane.object.data) >= 3
        # the same folder cannot take a second run
        runs.run_name = "tiny"
        runs._guard(runs.start)
        assert "already exists" in runs.message
        assert runs.stop()
        assert runs.selected_info().status == "stopped"
        stopped_at = runs.selected_info().step
        # the SIGTERM let the child checkpoint its last step, then end by the signal: stopped, not failed
        assert runs.index.states["tiny"].exit_record()["returncode"] == -signal.SIGTERM
        *_, last = iter_events(out / "events.jsonl")
        assert last == {**last, "type": "checkpoint", "step": stopped_at}
        # a second session (another browser tab, or the app restarted) sees the same run from its folder
        other = Dashboard(tmp_path / "runs")
        assert other.runs.selected == "tiny" and other.runs.selected_info().status == "stopped"
        assert other.runs.selected_info().step == stopped_at
        runs.resume()
        assert wait_for(lambda: runs.refresh() or select(runs.index.states["tiny"].events, Resume))
        assert runs.stop()
        runs.refresh()
        assert runs.selected_info().status == "stopped"
    finally:
        runs.launcher.stop(out)
    # the Inspect tab rebuilds the student from the run's checkpoint
    app.inspect.source = "tiny"
    app.inspect.length = 16
    app.inspect.load()
    assert app.inspect.layer == 1
    matrix, spectra = app.inspect.figures()
    assert len(matrix.data) == 3 and spectra is None
    metrics = app.inspect.compare(max_tokens=64)
    assert set(metrics) >= {"ppl_teacher", "ppl_student", "kl", "agreement"}
    app.inspect.param.update(prompt="The Union", new_tokens=3)
    teacher_text, student_text = app.inspect.generate()
    assert teacher_text and student_text and "The Union" in app.inspect.student_text.object
