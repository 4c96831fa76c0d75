"""Checkpoints a run can trust: killed mid-write at random offsets, a run resumes with no step lost and the weights of
a run never interrupted; checkpoints are verified against their recorded checksums and a damaged one falls back to
the previous one with a warning; a diverged run keeps only checkpoints whose weights gave a finite loss."""

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from workbench.distill import checkpoint
from workbench.distill.checkpoint import CorruptCheckpoint
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import iter_events
from workbench.distill.load import load_run_student
from workbench.distill.run import NonFiniteLoss, Run
from workbench.distill.run_dir import RunDir

STEPS = 6


def tiny_config(teacher_dir, steps=STEPS, lr=1e-3, **kw) -> RunConfig:
    stages = [StageConfig("kd", losses={"kl": 1.0}, tokens=steps * 2 * 32, batch_size=2, seq_len=32, lr=lr)]
    settings = dict(eval_every=0, checkpoint_every=1, device="cpu") | kw
    return RunConfig(teacher=teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, **settings)


def steps_of(out: Path) -> list[int]:
    return [e["step"] for e in iter_events(out / "events.jsonl", "step")]


def temp_files(out: Path) -> set[Path]:
    return set(out.glob(".*.tmp")) | set((out / "checkpoints").glob(".*.tmp"))


@pytest.fixture(scope="module")
def straight(tiny_teacher_dir, tmp_path_factory, one_thread) -> Path:
    """A run never interrupted: the weights every interrupted run of the same config must end with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    Run(tiny_config(tiny_teacher_dir), out, progress=False, final_eval_tokens=64).execute()
    return out


class Killed(BaseException):
    """The process dies here."""


def dying_writes(budget: int):
    """An ``atomic_write`` for checkpoint files that dies once ``budget`` bytes are written: the file being written
    then stays as the partial temporary file a killed process leaves (``budget`` falls inside it) or is never begun
    (``budget`` falls on its first byte: killed between two writes)."""
    real = checkpoint.atomic_write
    left = [budget]

    def atomic_write(path, write):
        path = Path(path)
        if path.parent.name != "checkpoints":
            return real(path, write)
        with tempfile.TemporaryDirectory() as scratch:
            write(Path(scratch) / path.name)
            data = (Path(scratch) / path.name).read_bytes()
        if left[0] >= len(data):
            left[0] -= len(data)
            return real(path, lambda p: p.write_bytes(data))
        if left[0] > 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            _, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            Path(tmp).write_bytes(data[:left[0]])
        raise Killed(f"killed {left[0]} bytes into {path.name}")

    return atomic_write


def assert_no_step_lost(out: Path) -> None:
    """Each attempt continues where its resume point says, one step after another; the last one reaches the end."""
    attempts, current = [], []
    for event in iter_events(out / "events.jsonl"):
        if event["type"] in ("run_start", "resume"):
            current = [event.get("step", 0)]
            attempts.append(current)
        elif event["type"] == "step":
            current.append(event["step"])
    for start, *steps in attempts:
        assert steps == list(range(start + 1, start + 1 + len(steps))), (start, steps)
    assert attempts[-1][-1] == STEPS and sum(1 for e in iter_events(out / "events.jsonl", "run_end")) == 1


def test_killed_at_random_offsets_of_checkpoint_writes_loses_no_step(tiny_teacher_dir, tmp_path, straight,
                                                                     monkeypatch):
    """Eight kills, each at a random byte of a checkpoint write (the tensors, the state or latest.json), each
    followed by a resume: every resume starts from an intact checkpoint, removes the temp files the kill left, and
    the run ends with exactly the weights of the run never interrupted."""
    rng = random.Random(21)
    ckpt = straight / "checkpoints"
    per_checkpoint = sum(p.stat().st_size for p in (ckpt / "step-000000006.safetensors", ckpt / "step-000000006.json",
                                                     ckpt / "latest.json"))
    out = tmp_path / "killed"
    left_behind: set[Path] = set()
    kills = 0
    for attempt in range(8):
        run = Run(tiny_config(tiny_teacher_dir), out, progress=False, final_eval_tokens=64) if attempt == 0 \
            else Run.resume(out, progress=False)
        budget = rng.randint(0, int(1.8 * per_checkpoint))
        with monkeypatch.context() as patch:
            patch.setattr(checkpoint, "atomic_write", dying_writes(budget))
            try:
                run.execute()
                break
            except Killed:
                kills += 1
        assert not left_behind & temp_files(out), "a resume left the temp files of a killed write"
        left_behind = temp_files(out)
        loaded = RunDir.open(out).load_checkpoint()
        assert loaded is None or (loaded.verified and not loaded.skipped)  # what latest.json names is intact
    assert kills >= 5 and left_behind, "the kills should land inside checkpoint files"
    Run.resume(out, progress=False).execute()
    assert not temp_files(out)
    assert_no_step_lost(out)
    assert sorted(set(steps_of(out))) == list(range(1, STEPS + 1))
    final, state = RunDir.open(out).latest_checkpoint()
    expected, _ = RunDir.open(straight).latest_checkpoint()
    assert state["global_step"] == STEPS and final.keys() == expected.keys()
    for key in expected:                                    # CPU training is deterministic: bit for bit the same
        assert torch.equal(final[key], expected[key]), key


def test_checkpoints_are_written_while_the_steps_go_on(tiny_teacher_dir, tmp_path, straight, monkeypatch):
    """A checkpoint reaches the disk on a thread of its own while the next step runs (here each write first waits
    half a second), and holds the state of its own step, not the one training reached meanwhile: its files are
    bit for bit those of the run that wrote every checkpoint at once."""
    real = RunDir.save_checkpoint

    def slow(self, step, tensors, state):
        time.sleep(0.5)
        return real(self, step, tensors, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", slow)
    out = tmp_path / "background"
    Run(tiny_config(tiny_teacher_dir), out, progress=False, final_eval_tokens=64).execute()
    order = [(e["type"], e["step"]) for e in iter_events(out / "events.jsonl") if e["type"] in ("step", "checkpoint")]
    assert order.index(("step", 2)) < order.index(("checkpoint", 1))     # step 2 ran during checkpoint 1's write
    assert [step for kind, step in order if kind == "checkpoint"] == list(range(1, STEPS + 1))
    names = RunDir.open(straight).checkpoint_names()
    assert names == RunDir.open(out).checkpoint_names() and len(names) == 2    # an earlier step's checkpoint too
    for name in names:
        ours = checkpoint.load_tensors(out / "checkpoints" / f"{name}.safetensors")
        theirs = checkpoint.load_tensors(straight / "checkpoints" / f"{name}.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), name


def test_a_failed_background_write_stops_the_run_and_is_reported():
    writer = checkpoint.BackgroundWriter()
    done = []
    writer.submit(lambda: done.append(1))
    writer.wait()
    assert done == [1]

    def full_disk():
        raise OSError(28, "No space left on device")

    writer.submit(full_disk)
    with pytest.raises(OSError, match="No space left"):
        writer.submit(lambda: done.append(2))          # the next checkpoint reports the last one's failure
    assert done == [1]
    writer.submit(full_disk)
    writer.join()                                       # a process leaving by another error: no second error
    writer.wait()


def test_a_full_disk_names_what_the_checkpoint_needs_and_how_to_go_on(tiny_teacher_dir, tmp_path, monkeypatch,
                                                                         capsys):
    """The disk fills up at the third checkpoint: the run stops with an error that gives the checkpoint's size, the
    disk's free space and the resume command, and the two checkpoints before it stay as they were; a run whose disk
    cannot hold its checkpoints says so when it starts."""
    import workbench.distill.run_dir as run_dir_module

    out = tmp_path / "run"
    real, calls = run_dir_module.save_tensors, []

    def save_tensors(path, tensors):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, tensors)

    monkeypatch.setattr(run_dir_module, "save_tensors", save_tensors)
    monkeypatch.setattr(run_dir_module, "disk_free", lambda path: 10**6)  # 1 MB free (start-up check and error)
    with pytest.raises(checkpoint.CheckpointWriteError) as failed:
        Run(tiny_config(tiny_teacher_dir), out, progress=False, final_eval_tokens=64).execute()
    message = str(failed.value)
    assert "step-000000003" in message and "No space left" in message and " GB free" in message
    assert f"workbench distill --resume {out}" in message and "room for 3" in message
    started = capsys.readouterr().err
    assert "0.00 GB free" in started and "checkpoints hold up to" in started and "--out" in started
    run = RunDir.open(out)
    assert run.checkpoint_names() == ["step-000000001", "step-000000002"] and run.latest_name() == "step-000000002"
    assert run.load_checkpoint().state["global_step"] == 2 and not temp_files(out)


@pytest.mark.slow
def test_real_sigkills_during_checkpoint_writes(tiny_teacher_dir, tmp_path, straight):
    """Three real SIGKILLs of a CLI run, each at a random moment once it checkpoints every step, then resumes."""
    rng = random.Random(7)
    config_file = tmp_path / "cfg.json"
    config_file.write_text(json.dumps(tiny_config(tiny_teacher_dir).to_dict()))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "workbench", "distill", "--config", str(config_file), "--out", str(out),
               "--final-eval-tokens", "64"]
    for _ in range(3):
        done = len(set(steps_of(out))) if out.exists() else 0
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(set(steps_of(out)) if out.exists() else ()) \
                <= done:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
        command = [sys.executable, "-m", "workbench", "distill", "--resume", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not temp_files(out)
    assert_no_step_lost(out)
    resumes = list(iter_events(out / "events.jsonl", "resume"))
    assert resumes and all(e["verified"] and not e["warnings"] for e in resumes)     # each from an intact checkpoint
    final, _ = RunDir.open(out).latest_checkpoint()
    expected, _ = RunDir.open(straight).latest_checkpoint()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


# ---- verification ------------------------------------------------------------------------------------------------
def saved_run(tmp_path: Path, steps=(1, 2, 3)) -> RunDir:
    run = RunDir.create(tmp_path / "run", {})
    for step in steps:
        run.save_checkpoint(step, {"param/w": torch.full((1000,), float(step))}, {"global_step": step})
    return run


def test_checkpoints_record_checksums_and_a_damaged_one_falls_back(tmp_path):
    """Flipped signs, a truncated file, a missing file, latest.json naming a deleted checkpoint: each is skipped
    with a line saying why, the previous checkpoint loads, and a writer's repair points latest.json at it.
    (Before checksums, flipped signs loaded silently and the others raised, with advice that led to "does not
    exist".)"""
    run = saved_run(tmp_path)
    state = json.loads((run.checkpoint_dir / "step-000000003.json").read_text())
    assert state["files"]["step-000000003.safetensors"]["sha256"] == \
           checkpoint.sha256(run.checkpoint_dir / "step-000000003.safetensors")
    tensors, state = run.latest_checkpoint()
    assert tensors["param/w"][0] == 3 and "files" not in state

    weights = run.checkpoint_dir / "step-000000003.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[-4000 + 3::4] = bytes(b ^ 0x80 for b in flipped[-4000 + 3::4])          # the sign bit of 1000 floats
    for damage, why in [(bytes(flipped), "does not match its recorded SHA-256"),
                        (original[:len(original) // 2], "truncated")]:
        weights.write_bytes(damage)
        loaded = run.load_checkpoint()
        assert loaded.name == "step-000000002" and loaded.tensors["param/w"][0] == 2 and loaded.verified
        assert len(loaded.skipped) == 1 and why in loaded.skipped[0] and "step-000000003" in loaded.skipped[0]
        assert any("falling back to checkpoint step-000000002" in line for line in loaded.notes)
    weights.write_bytes(original)

    (run.checkpoint_dir / "step-000000003.json").unlink()                           # "delete it": it now works
    (run.checkpoint_dir / "step-000000003.safetensors").unlink()
    loaded = run.load_checkpoint(repair=True)
    assert loaded.name == "step-000000002" and "does not exist" in loaded.skipped[0]
    assert run.latest_name() == "step-000000002" and not run.load_checkpoint().skipped    # repaired

    (run.checkpoint_dir / "step-000000002.safetensors").write_bytes(b"\0" * 10)           # the only one left
    with pytest.raises(CorruptCheckpoint, match=r"no intact checkpoint: checkpoint step-000000002.*move .*"
                                                r"checkpoints away to resume this run from step 0"):
        run.load_checkpoint()
    run.checkpoint_dir.rename(tmp_path / "damaged")                                 # the advice works
    assert run.load_checkpoint() is None

    run = saved_run(tmp_path / "again")                   # the writer's repair sets a damaged checkpoint aside
    (run.checkpoint_dir / "step-000000003.safetensors").write_bytes(bytes(flipped))
    assert run.load_checkpoint(repair=True).name == "step-000000002" and run.latest_name() == "step-000000002"
    assert run.checkpoint_names() == ["step-000000002"]
    assert (run.checkpoint_dir / "corrupt-step-000000003.safetensors").read_bytes() == bytes(flipped)


def test_a_damaged_checkpoint_resumes_from_the_previous_one_with_a_warning(tiny_teacher_dir, tmp_path, straight,
                                                                          capfd):
    """The sign of the newest checkpoint's weights flipped: resume falls back to the one before (a "resume" event
    with the warning, one line on stderr), trains the steps again and ends as the run never damaged. The stale
    temp file of an interrupted write is removed. load_run_student falls back the same way."""
    out = tmp_path / "run"
    Run(tiny_config(tiny_teacher_dir, steps=4), out, progress=False, final_eval_tokens=64).execute()
    run = RunDir.open(out)
    weights = run.checkpoint_dir / "step-000000004.safetensors"
    tensors = checkpoint.load_tensors(weights)
    checkpoint.save_file({k: -v for k, v in tensors.items()}, str(weights))   # same size, other bytes
    stale = run.checkpoint_dir / ".step-000000005.safetensors.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")

    loaded = load_run_student(out, device="cpu")
    assert loaded.step == 3
    err = capfd.readouterr().err
    assert "step-000000004" in err and "SHA-256" in err and "falling back to checkpoint step-000000003" in err

    assert run.latest_name() == "step-000000004"                     # a reader repairs nothing
    Run.resume(out, progress=False).execute()
    assert run.latest_name() == "step-000000004" and (run.checkpoint_dir / "corrupt-step-000000004.json").exists()
    assert not stale.exists()
    resume = list(iter_events(out / "events.jsonl", "resume"))[-1]
    assert resume["step"] == 3 and resume["checkpoint"] == "step-000000003" and resume["verified"] is True
    assert any("SHA-256" in line for line in resume["warnings"])
    err = capfd.readouterr().err
    assert "removed 1 temporary file" in err and "falling back to checkpoint step-000000003" in err
    assert steps_of(out)[-1] == 4 and steps_of(out).count(4) == 2


def test_old_checkpoints_without_checksums_load_unverified(tmp_path, capfd):
    fixture = Path(__file__).parents[1] / "fixtures" / "run-7a05f7d"
    loaded = RunDir.open(fixture).load_checkpoint()
    assert loaded.name == "step-000000006" and not loaded.verified and not loaded.skipped
    (line,) = loaded.notes
    assert "written before checkpoints recorded checksums: loaded unverified" in line


# ---- divergence --------------------------------------------------------------------------------------------------
def test_divergence_keeps_only_checkpoints_whose_weights_gave_a_finite_loss(tiny_teacher_dir, tmp_path,
                                                                            monkeypatch):
    """lr 1e6 with a checkpoint every step: the weights of step 1 are finite (near 1e6) but give a non-finite loss
    at step 2. That checkpoint is set aside, so no good checkpoint exists, and the error says so and advises a new
    run with a lower learning rate (resuming cannot change it). Before, latest.json named the diverged weights,
    a resume failed at once, and the message promised a good checkpoint. The checkpoint is still being written when
    the divergence shows (each write waits half a second here): it lands first, then is set aside."""
    out = tmp_path / "run"
    real = RunDir.save_checkpoint
    with monkeypatch.context() as patch, pytest.raises(NonFiniteLoss) as failure:
        patch.setattr(RunDir, "save_checkpoint", lambda *args: time.sleep(0.5) or real(*args))
        Run(tiny_config(tiny_teacher_dir, lr=1e6), out, progress=False).execute()
    (error,) = iter_events(out / "events.jsonl", "error")
    run = RunDir.open(out)
    assert "no last good checkpoint" in str(failure.value) and "new run with another --out" in str(failure.value)
    assert error["checkpoint"] is None and "lower the learning rate" in error["message"]
    assert run.load_checkpoint() is None and not run.checkpoint_names()
    assert (run.checkpoint_dir / f"diverged-step-{error['step']:09d}.safetensors").exists()

    # weights that overflow at step 2 (the loss of that step, computed before its update, is finite): never written
    train_step, updates = Run._train_step, []

    def overflowing(self, *args):
        result = train_step(self, *args)
        updates.append(1)
        if len(updates) == 2:
            with torch.no_grad():
                next(p for p in self.student.parameters() if p.requires_grad).fill_(float("inf"))
        return result

    with monkeypatch.context() as patch:
        patch.setattr(Run, "_train_step", overflowing)
        out = tmp_path / "overflow"
        with pytest.raises(NonFiniteLoss, match=r"non-finite weights after step 2; .* keeps its last good checkpoint, "
                                                r"step-000000001 \(step 1\)"):
            Run(tiny_config(tiny_teacher_dir), out, progress=False).execute()
    assert steps_of(out) == [1, 2] and RunDir.open(out).checkpoint_names() == ["step-000000001"]

    # a loss that turns non-finite at step 4: the checkpoint of step 3 (whose weights gave it) is set aside; the one
    # of step 2 is kept, and the error names it
    from workbench.distill import run as run_module

    stage_losses, calls = run_module.stage_losses, []

    def diverging(*args):
        calls.append(1)
        terms = stage_losses(*args)
        return {k: v * float("nan") for k, v in terms.items()} if len(calls) == 4 else terms

    monkeypatch.setattr(run_module, "stage_losses", diverging)
    out = tmp_path / "later"
    with pytest.raises(NonFiniteLoss, match=r"keeps its last good checkpoint, step-000000002 \(step 2\);") as failure:
        Run(tiny_config(tiny_teacher_dir), out, progress=False).execute()
    (error,) = iter_events(out / "events.jsonl", "error")
    kept = RunDir.open(out).load_checkpoint()
    assert error["step"] == 3 and error["checkpoint"] == kept.name == "step-000000002" and kept.verified
    assert "lower the learning rate" in str(failure.value)
    assert RunDir.open(out).checkpoint_names() == ["step-000000002"]
    assert (out / "checkpoints" / "diverged-step-000000003.safetensors").exists()
