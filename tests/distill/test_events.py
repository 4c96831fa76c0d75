import json
import math
import os

import pytest
import torch

from workbench.distill import events as ev
from workbench.distill.checkpoint import CorruptCheckpoint, atomic_write, load_tensors, save_tensors
from workbench.distill.events import EventLog, iter_events, read_events
from workbench.distill.run_dir import RunDir, RunLocked


def _step(log: EventLog, step: int) -> dict:
    return log.append("step", step=step, stage="s1", loss=1.0 / (step + 1))


def test_append_and_read_back(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for step in range(5):
        _step(log, step)
    log.append("eval", step=4, ppl_student=12.5, ppl_teacher=10.0, kl=0.2, agreement=0.5)
    events, offset = read_events(tmp_path / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [0, 1, 2, 3, 4]
    assert events[-1]["ppl_student"] == 12.5 and all("time" in e and "wall" in e for e in events)
    assert all(e["v"] == ev.FORMAT_VERSION for e in events)
    assert offset == (tmp_path / "events.jsonl").stat().st_size
    assert [e["type"] for e in iter_events(tmp_path / "events.jsonl", "eval")] == ["eval"]


def test_live_reader_continues_from_offset(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    _step(log, 0)
    first, offset = read_events(log.path)
    _step(log, 1)
    _step(log, 2)
    more, offset2 = read_events(log.path, offset)
    assert [e["step"] for e in first] == [0] and [e["step"] for e in more] == [1, 2]
    assert read_events(log.path, offset2) == ([], offset2)


def test_partial_last_line_is_left_for_next_read(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EventLog(path)
    _step(log, 0)
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
    _step(EventLog(path), 0)
    with open(path, "a") as f:
        f.write('{"type": "st')  # killed mid-line
    _step(EventLog(path), 1)  # resumed writer
    events, _ = read_events(path)
    assert [e["step"] for e in events] == [0, 1]


def test_non_finite_values_survive_as_strings(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.append("step", step=1, stage="s1", loss=float("nan"), grad_norm=float("inf"), lr=torch.tensor(2.5))
    (event,), _ = read_events(log.path)
    assert event["loss"] == "nan" and event["grad_norm"] == "inf" and event["lr"] == 2.5
    assert math.isnan(float(event["loss"]))
    (typed,), _ = ev.read_typed(log.path)
    assert math.isnan(typed.loss) and typed.grad_norm == math.inf and typed.lr == 2.5


def test_writer_checks_events_against_their_declaration(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    with pytest.raises(ValueError, match="unknown event type 'stpe'.*declared types"):
        log.append("stpe", step=1)
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['loss'\]"):
        log.append("step", step=1, stage="kd")
    with pytest.raises(ValueError, match=r"undeclared field\(s\) \['grad'\]"):
        log.append("step", step=1, stage="kd", loss=1.0, grad=0.5)
    with pytest.raises(ValueError, match="step: '3' is not an int"):
        log.append("step", step="3", stage="kd", loss=1.0)
    with pytest.raises(ValueError, match="set by the event log"):
        log.append("checkpoint", step=1, time=0.0)
    assert not log.path.exists() or log.path.read_text() == ""   # nothing half-checked was written
    run = RunDir(tmp_path / "rank1", writer=False)                 # a rank that writes nothing still checks
    assert run.log("checkpoint", step=1) is None
    with pytest.raises(ValueError, match="missing required"):
        run.log("checkpoint")
    assert not run.events_path.exists()


def test_typed_events_round_trip(tmp_path):
    written = [
        ev.RunStart(config={"teacher": "t"}, replaced=[1, 2], student_parameters=10, device="cpu", world_size=1),
        ev.Eval(step=0, stage="init", split="valid", ppl_student=3.0, ppl_teacher=2.0, kl=0.5, agreement=0.4,
                tokens=64),
        ev.StageStart(stage="kd", stage_idx=0, steps=2, tokens=128, losses={"kl": 1.0}, train="mixers", step=0),
        ev.Step(step=1, stage="kd", loss=2.0, terms={"kl": 1.5, "ce": 5.0}, stage_idx=0, stage_step=1, lr=1e-3,
                grad_norm=0.7, tokens=64, tokens_per_s=1000.0),
        ev.Checkpoint(step=1),
        ev.MicroBatch(step=0, stage="kd", micro_batch=4, needed_gb=44.0, free_gb=40.0, message="parts of 4 rows"),
        ev.Error(message="non-finite loss", step=1, stage="kd", terms={"kl": math.inf}, checkpoint="step-000000001"),
        ev.Resume(step=1, stage_idx=0, stage_step=1, world_size=2, checkpoint="step-000000001", verified=False,
                  warnings=["checkpoint step-000000002: step-000000002.safetensors is missing"]),
        ev.StageEnd(stage="kd", stage_idx=0, step=2),
        ev.RunEnd(teacher="t", mixer="mamba2", replaced=[1, 2], steps=2, split="heldout", ppl_student=3.0,
                  ppl_teacher=2.0, ppl_ratio=1.5, kl=0.5, agreement=0.4, tokens=64, train_tokens=128),
    ]
    assert {type(e) for e in written} == set(ev.EVENTS.values())
    log = EventLog(tmp_path / "e.jsonl")
    lines = [log.write(e) for e in written]
    assert lines[3]["loss_kl"] == 1.5 and lines[6]["kl"] == "inf" and "gpu_mem_gb" not in lines[3]
    back, _ = ev.read_typed(log.path)
    assert [type(e) for e in back] == [type(e) for e in written]
    for a, b in zip(written, back):
        assert b.v == ev.FORMAT_VERSION and b.time > 0
        assert a.to_fields() == b.to_fields()
    assert ev.select(back, ev.Step, ev.Checkpoint) == [back[3], back[4]]
    assert back[0].run_config.teacher == "t"


def test_reader_takes_old_lines_and_flags_what_it_cannot_read(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [{"type": "step", "time": 1.0, "wall": 0.5, "step": 1, "stage": "kd", "loss": "nan", "loss_kl": 0.2},
             {"type": "sample", "time": 2.0, "text": "hello"},
             {"type": "step", "step": 2, "stage": "kd"},
             {"type": "eval", "v": 7, "step": 2, "ppl_student": 3.0, "ppl_teacher": 2.0, "kl": 0.1,
              "agreement": 0.5, "bleu": 0.3},
             [1, 2]]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    old, unknown, incomplete, newer, odd = ev.read_typed(path)[0]
    assert isinstance(old, ev.Step) and old.v == 0 and old.time == 1.0 and old.terms == {"kl": 0.2}
    assert math.isnan(old.loss)
    assert isinstance(unknown, ev.Unreadable) and "unknown event type 'sample'" in unknown.reason
    assert unknown.type == "sample"
    assert isinstance(incomplete, ev.Unreadable) and "missing required field(s) ['loss']" in incomplete.reason
    assert isinstance(newer, ev.Eval) and newer.v == 7 and newer.extra == {"bleu": 0.3}
    assert isinstance(odd, ev.Unreadable) and odd.reason == "not a JSON object"
    assert [(type(e), e.step) for e in ev.select(lines)] == [(ev.Step, 1), (ev.Eval, 2)]   # dicts parse too
    assert list(ev.iter_typed(path, ev.Eval)) == [newer]


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
    run = RunDir.create(tmp_path / "run", {"run": {"lr": 1e-3}})
    assert run.latest_checkpoint() is None
    for step in (10, 20, 30):
        run.save_checkpoint(step, {"w": torch.full((2,), float(step))}, {"rng": [1, 2]})
    tensors, state = RunDir.open(tmp_path / "run").latest_checkpoint()
    assert state["step"] == 30 and tensors["w"][0].item() == 30.0 and state["rng"] == [1, 2]
    names = sorted(p.name for p in run.checkpoint_dir.glob("step-*.safetensors"))
    assert names == ["step-000000020.safetensors", "step-000000030.safetensors"]
    with pytest.raises(FileExistsError, match="resume"):
        RunDir.create(tmp_path / "run", {"run": {"lr": 1e-3}})
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        RunDir.open(tmp_path / "nothing")
    assert json.loads(run.config_path.read_text()) == {"run": {"lr": 1e-3}}


def test_run_dir_lock_refuses_second_live_writer(tmp_path):
    run = RunDir.create(tmp_path / "run", {"run": {}})
    assert run.lock_owner() is None
    run.acquire()
    assert run.lock_owner() == os.getpid()
    other = RunDir.open(tmp_path / "run")
    run.lock_path.write_text("1")  # pid 1 is alive: another writer holds it
    with pytest.raises(RunLocked):
        other.acquire()
    run.lock_path.write_text("999999999")  # a dead writer's stale lock is taken over
    other.acquire()
    assert run.lock_path.read_text() == str(os.getpid())
    other.release()
    assert not run.lock_path.exists()
