"""A SIGTERM or Ctrl-C stops a run at its next step boundary, checkpointed (``StopOnSignals``), instead of ending it
mid-step: in-process around ``Run.execute``, and end to end on ``workbench distill``, which then ends by the signal
(status -15, the dashboard's "stopped") and resumes losing and repeating no step."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import iter_events
from workbench.distill.run import Run, RunStopped, StopOnSignals
from workbench.distill.run_dir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models run fastest on one thread


def tiny_config(teacher_dir, steps: int) -> RunConfig:
    """``steps`` steps with no periodic checkpoint before the last: a stop mid-run has only its own to resume from."""
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=steps * 2 * 32, batch_size=2, seq_len=32, lr=1e-3)]
    return RunConfig(teacher=teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, eval_every=0,
                     checkpoint_every=1000, device="cpu")


def events_of(out: Path, type: str | None = None) -> list[dict]:
    return list(iter_events(out / "events.jsonl", type))


class PreviousHandler:
    """A handler installed before the one under test: records the signals that reach it (a SIGTERM reaching the
    default action instead would end the test process)."""

    def __init__(self):
        self.heard: list[int] = []

    def __call__(self, number, frame):
        self.heard.append(number)


@pytest.fixture
def previous_sigterm():
    """A recording SIGTERM handler in place for the test, the one from before put back after it."""
    handler = PreviousHandler()
    before = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, before)


def test_a_sigterm_mid_step_stops_the_run_after_it_checkpointed_and_it_resumes(tiny_teacher_dir, tmp_path,
                                                                               monkeypatch, previous_sigterm):
    out = tmp_path / "run"
    config = tiny_config(tiny_teacher_dir, steps=6)
    log_step = Run._log_step

    def terminated_in_step_three(self, run_dir, stage, s_idx, step, global_step, *rest):
        if global_step == 2:
            signal.raise_signal(signal.SIGTERM)   # arrives while step 3 is being taken
        return log_step(self, run_dir, stage, s_idx, step, global_step, *rest)

    monkeypatch.setattr(Run, "_log_step", terminated_in_step_three)
    sigint = signal.getsignal(signal.SIGINT)
    run = Run(config, out, progress=False, final_eval_tokens=64)
    with pytest.raises(RunStopped, match="stopped on request after step 3"):
        with StopOnSignals(run) as stop:
            run.execute()
    monkeypatch.setattr(Run, "_log_step", log_step)

    assert stop.received == stop.stopped_by == signal.SIGTERM
    assert previous_sigterm.heard == []                            # caught, not passed on
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm    # both handlers put back on leaving
    assert signal.getsignal(signal.SIGINT) is sigint
    assert [e["step"] for e in events_of(out, "step")] == [1, 2, 3]    # step 3 finished
    assert events_of(out)[-1] == {**events_of(out)[-1], "type": "checkpoint", "step": 3}
    assert not (out / "LOCK").exists() and not (out / "summary.json").exists()

    summary = Run.resume(out, progress=False).execute()
    assert summary["steps"] == 6
    assert [e["step"] for e in events_of(out, "resume")] == [3]
    assert [e["step"] for e in events_of(out, "step")] == [1, 2, 3, 4, 5, 6]   # none lost, none taken twice
    # the weights of a run never stopped
    Run(config, tmp_path / "straight", progress=False, final_eval_tokens=64).execute()
    resumed, _ = RunDir.open(out).latest_checkpoint()
    straight, _ = RunDir.open(tmp_path / "straight").latest_checkpoint()
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


class Asked:
    """Stands for a run: counts the stop requests."""

    def __init__(self):
        self.stops = 0

    def request_stop(self):
        self.stops += 1


def test_a_second_signal_acts_as_it_would_have_and_a_finished_block_is_no_stop(previous_sigterm):
    run = Asked()
    with StopOnSignals(run) as stop:
        signal.raise_signal(signal.SIGTERM)
        assert run.stops == 1 and stop.received == signal.SIGTERM and previous_sigterm.heard == []
        signal.raise_signal(signal.SIGTERM)
        assert run.stops == 1 and previous_sigterm.heard == [signal.SIGTERM]
    assert stop.stopped_by is None        # the block ended without RunStopped: nothing for the caller to act on
    assert signal.getsignal(signal.SIGTERM) is previous_sigterm


def test_nothing_is_installed_outside_the_main_thread_or_in_a_run_of_several_processes(previous_sigterm,
                                                                                       monkeypatch):
    installed = []

    def enter():
        with StopOnSignals(Asked()):
            installed.append(signal.getsignal(signal.SIGTERM) is not previous_sigterm)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    monkeypatch.setenv("WORLD_SIZE", "2")   # as torchrun sets it for each of its processes
    enter()
    assert installed == [False, False]


def test_sigterm_to_the_command_checkpoints_ends_as_terminated_and_resumes(tiny_teacher_dir, tmp_path):
    from workbench.app.runs import STOP_SIGNALS

    steps = 30   # many more than are taken before the signal lands (one or two): it arrives mid-run
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(tiny_config(tiny_teacher_dir, steps).to_dict()))
    out = tmp_path / "run"
    log = tmp_path / "distill.log"   # both streams in a file: a pipe nobody reads could fill up and stall the child
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "workbench", "distill", "--config", str(config_file), "--out",
                                 str(out), "--final-eval-tokens", "64"], stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out.exists() and events_of(out, "step")):
        time.sleep(0.01)
    assert proc.poll() is None, log.read_text()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == -signal.SIGTERM, log.read_text()[-2000:]
    assert proc.returncode in STOP_SIGNALS   # the dashboard shows it as stopped, not failed

    output = log.read_text()
    taken = [e["step"] for e in events_of(out, "step")]
    assert "SIGTERM: stopping after this step and checkpointing it" in output
    assert f"stopped on request after step {taken[-1]}" in output
    assert taken == list(range(1, len(taken) + 1)) and len(taken) < steps
    assert events_of(out)[-1] == {**events_of(out)[-1], "type": "checkpoint", "step": taken[-1]}
    assert not (out / "LOCK").exists()

    assert main(["distill", "--resume", str(out)]) == 0   # in this process: no second start-up to wait for
    assert [e["step"] for e in events_of(out, "resume")] == [taken[-1]]
    assert [e["step"] for e in events_of(out, "step")] == list(range(1, steps + 1))   # none lost, none twice
    assert json.loads((out / "summary.json").read_text())["steps"] == steps
