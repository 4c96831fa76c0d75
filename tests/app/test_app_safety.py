"""The dashboard against stale, forged or hostile run folders: a LOCK naming a process the app cannot verify is shown
as such and never signalled, files linking outside a run folder are neither shown nor written, folders that are not
runs get a row that says why, and ``panel serve apps/dashboard.py`` serves only this machine by default."""

import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.app import Dashboard
from workbench.app import dashboard as dashboard_module
from workbench.app.runs import NOT_A_RUN, RunIndex
from workbench.app.worker import LOG_FILE, Launcher
from workbench.distill.run_dir import RunDir

CONFIG = {"teacher": "t", "mixer": "hyena", "stages": [{"tokens": 64, "batch_size": 1, "seq_len": 32}]}
SCRIPT = Path(__file__).resolve().parents[2] / "apps" / "dashboard.py"
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads Linux /proc")


def statuses(root) -> dict:
    return {info.name: (info.status, info.message) for info in RunIndex(root).scan()}


@pytest.fixture
def sleeper():
    """Start ``python -c sleep ARGS...`` processes (ARGS land in their command line); all killed afterwards."""
    procs = []

    def start(*args):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_stale_lock_naming_an_unrelated_process_is_shown_and_never_signalled(tmp_path):
    """Old code: the run showed "running" and Stop sent SIGTERM to the sleep process."""
    root = tmp_path / "runs"
    run = RunDir.create(root / "stale", {"run": CONFIG})
    sleep = subprocess.Popen(["sleep", "120"])
    try:
        run.lock_path.write_text(str(sleep.pid))   # the writer died; its pid now belongs to `sleep`
        status, message = statuses(root)["stale"]
        assert status == "locked" and f"locked by pid {sleep.pid}, not started here" in message
        app = Dashboard(root)
        runs = app.runs
        runs.selected = "stale"
        assert runs.selected_info().status == "locked" and not runs.stop_button.disabled
        runs._guard(runs.stop)
        assert f"locked by pid {sleep.pid}, not started here" in runs.message and "does not signal" in runs.message
        with pytest.raises(RuntimeError, match="not started here"):
            Launcher(root).stop(root / "stale", timeout=1)
        with pytest.raises(RuntimeError, match="not started here"):
            Launcher(root).resume(root / "stale")
        time.sleep(0.2)
        assert sleep.poll() is None, "the unrelated process was signalled"
    finally:
        sleep.kill()
        sleep.wait()


@needs_proc
def test_a_distill_command_line_is_trusted_only_if_it_started_before_the_lock(tmp_path, sleeper):
    """Old code had no start-time check: any live pid counted as the writer."""
    root = tmp_path / "runs"
    run = RunDir.create(root / "cli", {"run": CONFIG})
    writer = sleeper("distill", "--out", str(root / "cli"))
    time.sleep(0.3)
    run.lock_path.write_text(str(writer.pid))
    assert statuses(root)["cli"][0] == "running"             # a `workbench distill --out` from a terminal
    earlier = time.time() - 3600
    os.utime(run.lock_path, (earlier, earlier))              # the LOCK predates the process: a reused pid
    status, message = statuses(root)["cli"]
    assert status == "locked" and "started after the LOCK" in message
    with pytest.raises(RuntimeError, match="not started here"):
        Launcher(root).stop(root / "cli", timeout=1)
    assert writer.poll() is None
    other = sleeper("distill", "--out", str(root / "elsewhere"))   # a real writer, but of another folder
    run.lock_path.write_text(str(other.pid))
    status, message = statuses(root)["cli"]
    assert status == "locked" and "not a distill run of this folder" in message
    run.lock_path.write_text(str(writer.pid))                # verified again: Stop signals it, alone
    assert Launcher(root).stop(root / "cli", timeout=5)
    assert writer.wait(timeout=5) is not None and other.poll() is None


def test_files_linking_outside_a_run_folder_are_neither_shown_nor_written(tmp_path):
    """Old code: the outside file was shown as the run's log, Resume appended to it, its events were read."""
    root = tmp_path / "runs"
    secret = tmp_path / "outside.txt"
    secret.write_text("SECRET LINE\n")
    log_run = RunDir.create(root / "linked-log", {"run": CONFIG})
    log_run.log("run_start", config=CONFIG, replaced=[1])
    (log_run.path / LOG_FILE).symlink_to(secret)
    events_run = RunDir.create(root / "linked-events", {"run": CONFIG})
    outside_events = tmp_path / "events.jsonl"
    other = RunDir.create(tmp_path / "other-run", {"run": CONFIG})
    other.log("run_start", config=CONFIG, replaced=[1])
    other.events_path.rename(outside_events)
    events_run.events_path.symlink_to(outside_events)
    RunDir.create(root / "good", {"run": CONFIG})

    rows = statuses(root)
    assert rows["good"][0] == "stopped" and rows["linked-log"][0] == "stopped"
    assert rows["linked-events"][0] == NOT_A_RUN and "links outside the run folder" in rows["linked-events"][1]
    app = Dashboard(root)
    runs = app.runs
    runs.selected = "linked-log"
    assert "SECRET" not in runs.log.object and "links outside the run folder" in runs.message
    with pytest.raises(ValueError, match="links outside the run folder"):
        Launcher(root).resume(root / "linked-log")
    assert secret.read_text() == "SECRET LINE\n"
    assert "linked-events" not in app.inspect.param.source.objects


def test_folders_that_are_not_runs_get_a_row_that_says_why(tmp_path):
    """Old code: KeyError 'run' from the saved student's config.json, JSONDecodeError from the malformed one."""
    root = tmp_path / "runs"
    good = RunDir.create(root / "good", {"run": CONFIG})
    good.log("run_start", config=CONFIG, replaced=[1])
    (root / "saved-student").mkdir()
    (root / "saved-student" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    (root / "malformed").mkdir()
    (root / "malformed" / "config.json").write_text('{"run": {"teacher": ')
    (root / "wrong-types").mkdir()
    (root / "wrong-types" / "config.json").write_text('{"run": {"teacher": "t", "stages": [{"tokens": "many"}]}}')
    (root / "holiday-photos").mkdir()
    (root / "notes.txt").write_text("not a folder")
    RunDir.create(tmp_path / "elsewhere", {"run": CONFIG})
    (root / "linked-away").symlink_to(tmp_path / "elsewhere")
    rows = statuses(root)
    assert rows["linked-away"][0] == NOT_A_RUN and "not inside the runs root" in rows["linked-away"][1]
    assert rows["good"][0] == "stopped"
    assert rows["saved-student"][0] == NOT_A_RUN and "not a run config" in rows["saved-student"][1]
    assert rows["malformed"][0] == NOT_A_RUN and "not valid JSON" in rows["malformed"][1]
    assert rows["wrong-types"][0] == NOT_A_RUN and rows["wrong-types"][1]
    assert rows["holiday-photos"] == (NOT_A_RUN, "no config.json or launch.json: not a run folder")
    assert "notes.txt" not in rows
    app = Dashboard(root)
    table = app.runs.table.value.set_index("run")
    assert table.loc["good", "status"] == "stopped"
    assert table.loc["saved-student", "status"] == NOT_A_RUN
    assert "not a run config" in table.loc["saved-student", "note"]
    app.runs.selected = "malformed"
    assert "not valid JSON" in app.runs.stats.object and app.runs.resume_button.disabled
    assert app.inspect.param.source.objects[1:] == ["good"]


@pytest.mark.parametrize("client, allow, served", [
    ("203.0.113.7", None, False), (None, None, False), ("127.0.0.1", None, True), ("::1", None, True),
    ("203.0.113.7", "1", True)])
def test_the_served_script_refuses_other_machines_by_default(tmp_path, monkeypatch, capsys, client, allow, served):
    """Old code: apps/dashboard.py served the full dashboard to every browser that reached the port."""
    root = tmp_path / "runs"
    monkeypatch.setenv("WORKBENCH_RUNS_ROOT", str(root))
    if allow is None:
        monkeypatch.delenv(dashboard_module.ALLOW_REMOTE_ENV, raising=False)
    else:
        monkeypatch.setenv(dashboard_module.ALLOW_REMOTE_ENV, allow)
    monkeypatch.setattr(dashboard_module, "session_client", lambda: client)
    app = runpy.run_path(str(SCRIPT))["app"]
    assert root.is_dir() is served
    if served:
        assert app.title == dashboard_module.TITLE
    else:
        assert "remote-refused" in app.css_classes and "WORKBENCH_ALLOW_REMOTE=1" in app.object
        assert f"refused a session from {client}" in capsys.readouterr().err
