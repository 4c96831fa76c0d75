"""benchmarks/quality_curve.py on the tiny teacher at tiny budgets: two rows (even and measured attention layers) at
two budgets write their records and figure, a second call reads the finished runs back, and a run that did not
finish is continued only with --resume."""

import json
import math
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_models
from tests.helpers.scripts import benchmark_script
from workbench.distill.run import Run

ROOT = Path(__file__).resolve().parents[1]


def benchmark():
    return benchmark_script("quality_curve")


def argv(teacher_dir, tmp_path, *extra):
    return ["--teacher", teacher_dir, "--rows", "mil-25,mil-25-auto", "--budgets", "320,640", "--seq-len", "32",
            "--batch-size", "2", "--eval-every", "0", "--eval-window", "32", "--checkpoint-every", "4",
            "--layer-score-tokens", "132", "--final-eval-tokens", "128", "--device", "cpu",
            "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "curve.json"),
            "--figure", str(tmp_path / "curve.html"), *extra]


def test_rows_at_budgets_write_records_and_figure_and_resume_by_row_and_budget(tiny_teacher_dir, tmp_path,
                                                                               monkeypatch, one_thread):
    curve = benchmark()
    results = curve.main(argv(tiny_teacher_dir, tmp_path))
    records = results["records"]
    assert [(r["row"], r["budget"]) for r in records] == [("mil-25", 320), ("mil-25", 640), ("mil-25-auto", 320),
                                                         ("mil-25-auto", 640)]
    assert json.loads((tmp_path / "curve.json").read_text()) == results
    for r in records:
        assert r["train_tokens"] == r["budget"] and r["seed"] == 0 and r["world_size"] == 1
        assert r["tokens_per_parameter"] == pytest.approx(r["train_tokens"] / r["teacher_parameters"])
        assert math.isfinite(r["ppl_ratio"]) and r["ppl_ratio"] == pytest.approx(r["ppl_student"] / r["ppl_teacher"])
        assert r["tokens_per_s"] > 0 and r["train_seconds"] > 0 and r["mfu"] is None     # no MFU on a CPU
        assert (r["batch"], r["seq_len"], r["mixer"], r["recipe"]) == (2, 32, "mamba2", "mamba-in-llama")
        assert r["device_name"] == results["device_name"] and r["wall_seconds"] > 0
        assert Path(r["run"]).name == f"{r['budget']}-s0" and (Path(r["run"]) / "record.json").is_file()
        assert sorted(r["keep_attention"] + r["replaced"]) == [0, 1, 2, 3]
    even, auto = records[0], records[2]
    assert even["keep_attention"] == [0] and even["keep_attention_auto"] is None and even["layer_selection"] is None
    assert auto["keep_attention_auto"] == "auto:1" and auto["keep_attention"] == auto["layer_selection"]["kept"]
    figure = (tmp_path / "curve.html").read_text()
    assert "mil-25-auto" in figure and "Pythia-1B" in figure

    # finished runs are read back, not run again
    monkeypatch.setattr(Run, "execute", lambda run: pytest.fail("a finished run ran again"))
    again = curve.main(argv(tiny_teacher_dir, tmp_path))
    assert again["records"] == records

    # collecting runs nothing: the records there, and the runs that have none listed as missing
    collected = curve.main(argv(tiny_teacher_dir, tmp_path, "--collect", "--budgets", "320,640,960"))
    assert collected["records"] == records
    assert collected["missing"] == [{"row": r, "budget": 960, "seed": 0} for r in ("mil-25", "mil-25-auto")]
    monkeypatch.undo()

    # a folder of a run made with other flags is not taken for this one's
    with pytest.raises(SystemExit, match="another config .*differs in stages"):
        curve.main(argv(tiny_teacher_dir, tmp_path, "--lr", "5e-3"))

    # a run that has not finished (its summary and record gone) is continued with --resume only
    folder = Path(records[1]["run"])
    (folder / "record.json").unlink()
    (folder / "summary.json").unlink()
    with pytest.raises(SystemExit, match="has not finished: continue it with --resume"):
        curve.main(argv(tiny_teacher_dir, tmp_path))
    resumed = curve.main(argv(tiny_teacher_dir, tmp_path, "--resume"))
    assert resumed["records"][1]["ppl_ratio"] == pytest.approx(records[1]["ppl_ratio"])
    assert (folder / "summary.json").is_file() and (folder / "record.json").is_file()


def test_the_plan_runs_ablation_rows_at_their_budgets_only_and_refuses_unknown_rows(tmp_path):
    curve = benchmark()
    items = curve.plan(["mil-25", "mohawk-0-stage3"], [30_000_000, 8_000_000], [70_000_000], [0, 1])
    assert [(i.row.name, b, s) for i, b, s in items] == [
        ("mil-25", 8_000_000, 0), ("mil-25", 8_000_000, 1), ("mil-25", 30_000_000, 0), ("mil-25", 30_000_000, 1),
        ("mohawk-0-stage3", 70_000_000, 0), ("mohawk-0-stage3", 70_000_000, 1)]
    items = curve.plan(["mohawk-0-stage3"], [30_000_000], [30_000_000, 8_000_000], [0])  # an ablation at two budgets
    assert [(i.row.name, b) for i, b, _ in items] == [("mohawk-0-stage3", 8_000_000), ("mohawk-0-stage3", 30_000_000)]
    assert [curve.budget_name(t) for t in (135_000_000, 2_000, 1280)] == ["135M", "2k", "1280"]
    with pytest.raises(SystemExit):
        curve.parse_args(["--rows", "mil-33", "--out", str(tmp_path), "--json", str(tmp_path / "x.json")])
    where = ["--out", str(tmp_path), "--json", str(tmp_path / "x.json")]
    assert curve.parse_args(["--corpus-weights", "sotu=4,python-code=0.5", *where]).corpus_weights == {
        "sotu": 4.0, "python-code": 0.5}
    with pytest.raises(SystemExit):
        curve.parse_args(["--corpus-weights", "sotu", *where])
    assert curve.overall_throughput([
        {"steps": 10, "batch_size": 2, "seq_len": 50, "tokens_per_s": 1000.0, "mfu": 0.2, "peak_gpu_mem_gb": 3.0},
        {"steps": 10, "batch_size": 2, "seq_len": 50, "tokens_per_s": 500.0, "mfu": 0.5, "peak_gpu_mem_gb": 5.0},
    ]) == pytest.approx({"tokens_per_s": 2000 / 3, "mfu": (0.2 * 1 + 0.5 * 2) / 3, "train_seconds": 3.0,
                         "gpu_mem_gb": 5.0})


def test_the_laughing_hyena_step_reports_the_perplexity_change_and_is_read_back(teacher, tmp_path, monkeypatch,
                                                                               one_thread):
    curve = benchmark()
    tiny_models.tiny_hyena_run(tmp_path, teacher)
    options = dict(steps=10, length=64, eval_tokens=200, window=64)
    result = curve.laughing(tmp_path / "run", 4, "cpu", **options)
    report = json.loads((tmp_path / "run" / "laughing-4.json").read_text())
    assert result["order"] == 4 and result["ppl_before"] == report["before"]["ppl_student"]
    assert result["ppl_after"] == report["models"][0]["ppl_after"] > 1
    assert result["ppl_change"] == pytest.approx(result["ppl_after"] / result["ppl_before"] - 1)
    import workbench.laughing.cli

    monkeypatch.setattr(workbench.laughing.cli, "laughing_report", lambda *a, **k: pytest.fail("fitted again"))
    assert curve.laughing(tmp_path / "run", 4, "cpu", **options) == result


def test_collect_runs_without_plotly_and_lists_what_is_missing(tmp_path):
    """GPU machines may lack plotly: gathering records (and running rows) needs none, only --figure does. The H200
    runs in docs/results are collected in a process where importing plotly fails; the runs not made are listed."""
    import shutil
    import subprocess

    shutil.copytree(ROOT / "docs" / "results" / "h200-2026-12-01" / "curve" / "mil-50", tmp_path / "runs" / "mil-50")
    out = tmp_path / "curve.json"
    script = ("import runpy, sys; sys.modules['plotly'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script, str(ROOT / "benchmarks" / "quality_curve.py"), "--collect",
                           "--rows", "mil-50", "--budgets", "8M,30M", "--seeds", "0,2", "--out",
                           str(tmp_path / "runs"), "--json", str(out),
                           "--dials", "e2e_lr_ratio=0.1"],       # the end-to-end rate these runs were made at
                          capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["budget"], r["seed"], round(r["ppl_ratio"], 3)) for r in result["records"]] == [
        (8_000_000, 0, 1.287), (30_000_000, 0, 1.109)]
    assert result["missing"] == [{"row": "mil-50", "budget": 8_000_000, "seed": 2},
                                 {"row": "mil-50", "budget": 30_000_000, "seed": 2}]
    assert result["anchors"][0]["ratios"] == [1.195, 1.126, 1.093, 1.018]


def test_collect_reads_several_folders_and_passes_over_runs_of_other_settings(tmp_path):
    """The campaign's runs lie in one folder per day; the all-Mamba-2 row ran at lr 1e-4 on the first and at 3e-4 on
    the second, both with the end-to-end stage at a tenth of it (its default then, not written in their records).
    Collecting both folders takes each run at the learning rate and dials the flags give, whichever folder comes
    first, and lists the other's; a run (not a collect) refuses several folders."""
    curve = benchmark()
    results = ROOT / "docs" / "results"
    first, second = results / "h200-2026-12-01" / "curve", results / "h200-2026-12-02" / "curve"

    def collect(*extra):
        return curve.main(["--collect", "--rows", "mil-0", "--budgets", "8M,30M", "--corpus", "corpora/mix",
                           "--out", f"{first},{second}", "--json", str(tmp_path / "curve.json"), *extra])

    tenth = collect("--dials", "e2e_lr_ratio=0.1")      # the end-to-end stage at a tenth: these records left it out
    assert [(r["budget"], r["lr"], round(r["ppl_ratio"], 3)) for r in tenth["records"]] == [
        (8_000_000, pytest.approx([3e-4, 3e-5]), 3.911), (30_000_000, pytest.approx([3e-4, 3e-5]), 2.273)]
    assert [Path(p.split(" (")[0]).relative_to(first).as_posix() for p in tenth["other_settings"]] == [
        "mil-0/8M-s0", "mil-0/30M-s0"]
    assert "missing" not in tenth
    older = collect("--lr", "1e-4", "--dials", "e2e_lr_ratio=0.1")
    assert [(r["lr"][0], round(r["ppl_ratio"], 3)) for r in older["records"]] == [(1e-4, 5.440), (1e-4, 3.298)]
    assert "other_settings" not in older
    for flags in (["--lr", "5e-4"], ["--dials", "e2e_lr_ratio=0.3"], []):   # the default is now ratio 1: none here
        none = collect(*flags)
        assert none["records"] == [] and len(none["missing"]) == 2 and len(none["other_settings"]) == 4
    aligned = curve.main(["--collect", "--rows", "mil-25-align", "--budgets", "8M", "--ablation-budget", "8M",
                          "--out", str(second), "--json", str(tmp_path / "align.json"), "--dials", "align=0.5"])
    assert aligned["records"] == [] and "dials {'align': 1.0}" in aligned["other_settings"][0]
    with pytest.raises(SystemExit):
        curve.parse_args(["--out", "o", "--json", "j", "--dials", "e2e_lr_ratio"])
    with pytest.raises(SystemExit, match="several folders are read by --collect only"):
        curve.main(["--rows", "mil-0", "--budgets", "8M", "--out", f"{first},{second}",
                    "--json", str(tmp_path / "run.json")])


def test_the_all_mamba2_row_takes_its_measured_end_to_end_rate_from_the_sweep_folder(tmp_path):
    """The all-Mamba-2 row's default (``default_dials``: end-to-end stage at the mixers' peak) was measured in its own
    sweep folder; collecting it beside the day's folder takes those runs, and the older ones are listed as other
    settings."""
    curve = benchmark()
    results = ROOT / "docs" / "results"
    sweep, day = results / "h200-2026-12-02b" / "curve-e2e_lr_ratio-1.0", results / "h200-2026-12-02" / "curve"
    result = curve.main(["--collect", "--rows", "mil-0", "--budgets", "8M,30M", "--corpus", "corpora/mix",
                         "--out", f"{day},{sweep}", "--json", str(tmp_path / "curve.json")])
    assert [(r["budget"], r["dials"], round(r["ppl_ratio"], 3)) for r in result["records"]] == [
        (8_000_000, {"e2e_lr_ratio": 1.0}, 2.302), (30_000_000, {"e2e_lr_ratio": 1.0}, 1.570)]
    assert len(result["other_settings"]) == 2


def test_a_sigterm_stops_the_run_in_progress_checkpointed_and_resume_goes_on(tiny_teacher_dir, tmp_path,
                                                                            monkeypatch, one_thread):
    """The script runs each run inside StopOnSignals: a SIGTERM during step 3 ends the script (SystemExit naming
    --resume) once that step is checkpointed, and --resume finishes the run with every step taken once."""
    import signal

    from workbench.distill.events import iter_events

    curve = benchmark()
    log_step = Run._log_step
    received = []

    def terminated_in_step_three(self, run_dir, stage, s_idx, step, global_step, *rest):
        if global_step == 2:                          # 0-based here: the third step, "step" 3 in the events
            signal.raise_signal(signal.SIGTERM)
        return log_step(self, run_dir, stage, s_idx, step, global_step, *rest)

    recording = lambda *a: received.append(a)   # noqa: E731  (a handler that cannot kill pytest)
    previous = signal.signal(signal.SIGTERM, recording)
    try:
        monkeypatch.setattr(Run, "_log_step", terminated_in_step_three)
        args = argv(tiny_teacher_dir, tmp_path, "--rows", "mil-25", "--budgets", "320", "--resume")
        with pytest.raises(SystemExit, match="stopped on request after step 3.*--resume to go on"):
            curve.main(args)
        monkeypatch.setattr(Run, "_log_step", log_step)
        assert received == [] and signal.getsignal(signal.SIGTERM) is recording   # caught, then put back
        events = tmp_path / "runs" / "mil-25" / "320-s0" / "events.jsonl"
        *_, last = iter_events(events)
        assert last["type"] == "checkpoint" and last["step"] == 3
        result = curve.main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [r["budget"] for r in result["records"]] == [320]
    assert [e["step"] for e in iter_events(events, "step")] == list(range(1, 320 // 64 + 1))


def test_runs_side_by_side_in_their_own_processes_and_stop_at_a_deadline(tiny_teacher_dir, tmp_path, capsys):
    """--side-by-side 2: each run in its own process of the script (its output in OUT/logs), the records gathered as
    if run here; with --stop-after, the runs going at that time get a SIGTERM and none starts after it (a stop inside
    a step, checkpointed, is the test above); a later call with --resume finishes every run, each step taken once.
    Flags that cannot work together are refused."""
    from workbench.distill.events import iter_events

    curve = benchmark()
    base = argv(tiny_teacher_dir, tmp_path, "--rows", "mil-25", "--budgets", "320,640", "--seeds", "0,1")
    stopped = curve.main([*base, "--side-by-side", "2", "--stop-after", "0.5"])   # before any run can finish
    assert stopped["records"] == [] and len(stopped["missing"]) == 4 and len(stopped["unfinished"]) == 4
    assert sum("not started (--stop-after)" in line for line in stopped["unfinished"]) == 2
    assert sum(": stopped: " in line for line in stopped["unfinished"]) == 2, stopped["unfinished"]
    curve.PROGRESS_EVERY = 0                   # a progress line for each run going, at every turn of the loop
    capsys.readouterr()
    results = curve.main([*base, "--side-by-side", "2", "--resume"])
    printed = capsys.readouterr().out
    assert "mil-25 320 seed 0: " in printed and "tokens/s" in printed, printed
    assert sorted((r["budget"], r["seed"]) for r in results["records"]) == [(320, 0), (320, 1), (640, 0), (640, 1)]
    assert "unfinished" not in results and "missing" not in results
    for r in results["records"]:
        assert [e["step"] for e in iter_events(Path(r["run"]) / "events.jsonl", "step")] == \
            list(range(1, r["budget"] // 64 + 1))
    logs = sorted(p.name for p in (tmp_path / "runs" / "logs").glob("*.log"))
    assert logs == ["mil-25-320-s0.log", "mil-25-320-s1.log", "mil-25-640-s0.log", "mil-25-640-s1.log"]
    for flags, message in ((["--stop-after", "60"], "with --side-by-side N"),
                           (["--side-by-side", "2", "--nproc", "2"], "leave --nproc at 1")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            curve.parse_args([*base, *flags])
        assert message in capsys.readouterr().err


def test_a_sigterm_to_the_script_stops_the_runs_side_by_side_as_the_deadline_does(tiny_teacher_dir, tmp_path):
    """A SIGTERM to the script while runs go side by side: it stops them (one SIGTERM each, from the script) and
    starts no other, returns what did not finish, and puts the handler it replaced back."""
    import os
    import signal
    import threading

    curve = benchmark()
    received = []
    recording = lambda *a: received.append(a)   # noqa: E731  (a handler that cannot kill pytest)
    previous = signal.signal(signal.SIGTERM, recording)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        stopped = curve.main(argv(tiny_teacher_dir, tmp_path, "--rows", "mil-25", "--budgets", "320,640",
                                  "--side-by-side", "1"))
        assert received == [] and signal.getsignal(signal.SIGTERM) is recording
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert stopped["records"] == [] and len(stopped["unfinished"]) == 2, stopped
    started, left = sorted(stopped["unfinished"])
    assert started.startswith("mil-25 320 seed 0: stopped: ")
    assert left == "mil-25 640 seed 0: not started (a signal to this script)"


def test_progress_reads_a_runs_stage_step_rate_and_validation_from_its_events(tmp_path):
    """What the side-by-side loop prints for a run going: nothing yet ("starting"), then its stage's step of the
    stage's steps, the step's tokens/s and the last in-run validation perplexity."""
    from workbench.distill.events import EventLog

    curve = benchmark()
    assert curve.progress(tmp_path) == "starting"
    log = EventLog(tmp_path / "events.jsonl", fsync=False)
    log.append("stage_start", stage="kd", stage_idx=0, steps=915, tokens=30_000_000, losses={"kl": 1.0}, train="all",
               step=0)
    log.append("eval", step=0, ppl_student=1940.5, ppl_teacher=25.1, kl=4.4, agreement=0.06, split="valid")
    for step in (1, 2):
        log.append("step", step=step, stage="kd", loss=1.0, stage_idx=0, stage_step=step, tokens=32768,
                   tokens_per_s=65_500.0)
    assert curve.progress(tmp_path) == "kd step 2 of 915, 65.5k tokens/s, valid ppl 1940.50 at step 0"
