import json
import math
import os

import pytest
import torch

from workbench.distill.checkpoint import CorruptCheckpoint, atomic_write, load_tensors, save_tensors
from workbench.distill.events import EventLog, iter_events, read_events
from workbench.distill.run_dir import RunDir, RunLocked


def test_append_and_read_back(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for step in range(5):
        log.append("step", step=step, stage="s1", loss=1.0 / (step + 1))
    log.append("eval", step=4, ppl=12.5)
    events, offset = read_events(tmp_path / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [0, 1, 2, 3, 4]
    assert events[-1]["ppl"] == 12.5 and all("time" in e and "wall" in e for e in events)
    assert offset == (tmp_path / "events.jsonl").stat().st_size
    assert [e["type"] for e in iter_events(tmp_path / "events.jsonl", "eval")] == ["eval"]


def test_live_reader_continues_from_offset(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.append("step", step=0)
    first, offset = read_events(log.path)
    log.append("step", step=1)
    log.append("step", step=2)
    more, offset2 = read_events(log.path, offset)
    assert [e["step"] for e in first] == [0] and [e["step"] for e in more] == [1, 2]
    assert read_events(log.path, offset2) == ([], offset2)


def test_partial_last_line_is_left_for_next_read(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    log.append("step", step=0)
    with open(path, "a") as f:  # a writer mid-append
        f.write('{"type": "step", "st')
    events, offset = read_events(path)
    assert [e["step"] for e in events] == [0]
    with open(path, "a") as f:  # ... which then finishes its line
        f.write('ep": 1}\n')
    events, _ = read_events(path, offset)
    assert [e["step"] for e in events] == [1]


def test_fragment_of_killed_writer_is_skipped_and_new_writer_starts_fresh_line(tmp_path):
    path = tmp_path / "e.jsonl"
    EventLog(path).append("step", step=0)
    with open(path, "a") as f:
        f.write('{"type": "st')  # killed mid-line
    EventLog(path).append("step", step=1)  # resumed writer
    events, _ = read_events(path)
    assert [e["step"] for e in events] == [0, 1]


def test_non_finite_values_survive_as_strings(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.append("step", loss=float("nan"), grad=float("inf"), t=torch.tensor(2.5))
    (event,), _ = read_events(log.path)
    assert event["loss"] == "nan" and event["grad"] == "inf" and event["t"] == 2.5
    assert math.isnan(float(event["loss"]))


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "ckpt.json"
    target.write_text("old")

    def failing(p):
        p.write_text("half-writ")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.json"]  # no temp file left behind


def test_tensors_round_trip_and_corruption_is_detected(tmp_path):
    tensors = {"w": torch.randn(3, 5), "b": torch.arange(7)}
    path = save_tensors(tmp_path / "t.safetensors", tensors)
    back = load_tensors(path)
    assert torch.equal(back["w"], tensors["w"]) and torch.equal(back["b"], tensors["b"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptCheckpoint, match="corrupt or truncated"):
        load_tensors(path)


def test_run_dir_checkpoints_resume_and_prune(tmp_path):
    run = RunDir.create(tmp_path / "run", {"lr": 1e-3})
    assert run.latest_checkpoint() is None
    for step in (10, 20, 30):
        run.save_checkpoint(step, {"w": torch.full((2,), float(step))}, {"rng": [1, 2]})
    tensors, state = RunDir.open(tmp_path / "run").latest_checkpoint()
    assert state["step"] == 30 and tensors["w"][0].item() == 30.0 and state["rng"] == [1, 2]
    names = sorted(p.name for p in run.checkpoint_dir.glob("step-*.safetensors"))
    assert names == ["step-000000020.safetensors", "step-000000030.safetensors"]
    with pytest.raises(FileExistsError, match="resume"):
        RunDir.create(tmp_path / "run", {"lr": 1e-3})
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        RunDir.open(tmp_path / "nothing")
    assert json.loads(run.config_path.read_text()) == {"lr": 1e-3}


def test_run_dir_lock_refuses_second_live_writer(tmp_path):
    run = RunDir.create(tmp_path / "run", {})
    run.acquire()
    other = RunDir.open(tmp_path / "run")
    run.lock_path.write_text("1")  # pid 1 is alive: another writer holds it
    with pytest.raises(RunLocked):
        other.acquire()
    run.lock_path.write_text("999999999")  # a dead writer's stale lock is taken over
    other.acquire()
    assert run.lock_path.read_text() == str(os.getpid())
    other.release()
    assert not run.lock_path.exists()
