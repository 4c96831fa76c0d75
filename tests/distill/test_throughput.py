"""Throughput and memory of a distillation step: the FLOP count, MFU, a stage's rate, and the error of a batch that
does not fit the GPU (the memory fit on synthetic numbers, the probes with a fake step, and a run on the CPU whose
first step raises CUDA's out-of-memory error)."""

import dataclasses
import math
import weakref

import numpy as np
import pytest
import torch

from workbench.distill import throughput as tp
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import iter_events
from workbench.distill.run import Run

GIB = 2**30


# ---- FLOPs and MFU -----------------------------------------------------------------------------------------------
def test_flops_per_token_counts_forward_activation_and_weight_gradients():
    assert tp.train_flops_per_token(10) == 60                        # 6N: every parameter trained
    assert tp.train_flops_per_token(10, n_trained=3) == 4 * 10 + 2 * 3
    assert tp.train_flops_per_token(10, n_trained=0) == 40           # nothing trained: forward + activation grads
    assert tp.kd_flops_per_token(10, 7) == 6 * 10 + 2 * 7            # + the teacher's forward
    assert tp.kd_flops_per_token(10, 7, n_trained=3) == 4 * 10 + 2 * 3 + 2 * 7
    with pytest.raises(ValueError, match="between 0 and n_params=10"):
        tp.train_flops_per_token(10, n_trained=11)


def test_stage_flops_count_each_parameter_once():
    student = torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 11, bias=False))
    student[1].weight = student[0].weight                            # tied: one parameter of 44 entries
    teacher = torch.nn.Linear(4, 5)                                  # 25 parameters
    tied = student[0].weight
    assert tp.stage_flops_per_token(student, teacher, [tied, tied]) == 6 * 44 + 2 * 25
    mixer = torch.nn.Linear(4, 4)                                    # a second, untrained-by-default part
    student.append(mixer)
    assert tp.stage_flops_per_token(student, teacher, mixer.parameters()) == 4 * (44 + 20) + 2 * 20 + 2 * 25


def test_peak_flops_by_device_name_and_mfu_only_with_a_peak():
    assert tp.peak_flops("NVIDIA H200") == tp.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert tp.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    for name in ("NVIDIA H100 PCIe", "NVIDIA H200 NVL", "NVIDIA GeForce RTX 4090", "x86_64", ""):
        assert tp.peak_flops(name) is None, name
    assert tp.mfu(100_000.0, 8 * 10**9, None) is None and tp.mfu(None, 8 * 10**9, 989e12) is None
    assert tp.mfu(100_000.0, 8 * 10**9, 989e12) == pytest.approx(100_000 * 8e9 / 989e12)
    assert tp.mfu(100_000.0, 8 * 10**9, 989e12, devices=4) == pytest.approx(100_000 * 8e9 / (4 * 989e12))


def test_steady_rate_leaves_out_the_warm_up_steps():
    assert tp.WARMUP_STEPS == 3
    assert tp.steady_rate([100.0, 5.0, 7.0, 10.0, 14.0, 11.0]) == (11.0, 3)
    assert tp.steady_rate([100.0, 5.0, 7.0, 10.0, 14.0, 11.0, 12.0]) == (11.5, 4)
    assert tp.steady_rate([3.0, 1.0]) == (2.0, 2)                     # a short stage: every step
    assert tp.steady_rate([]) == (None, 0)


def test_a_stage_meter_on_the_cpu_reports_rss_and_no_mfu():
    meter = tp.StageMeter.start(torch.device("cpu"))
    for rate in (1.0, 2.0, 3.0, 40.0, 50.0):
        meter.add(rate)
    stats = meter.stats(flops_per_token=600)
    assert stats["tokens_per_s"] == 45.0 and stats["steps_timed"] == 2 and stats["flops_per_token"] == 600
    assert stats["mfu"] is None and stats["peak_flops"] is None and stats["peak_rss_gb"] > 0
    assert "peak_gpu_mem_gb" not in stats and set(stats) <= set(tp.MEASURED)


def test_stage_summary_lists_every_stage_and_measures_only_those_logged():
    from workbench.distill.events import StageEnd

    stages = [StageConfig("a", tokens=4 * 2 * 8, batch_size=2, seq_len=8),
              StageConfig("b", tokens=3 * 4 * 16, batch_size=4, seq_len=16)]
    ends = [StageEnd(stage="b", stage_idx=1, step=3, tokens_per_s=1.0),
            StageEnd(stage="b", stage_idx=1, step=7, tokens_per_s=65_600.0, mfu=0.081, peak_gpu_mem_gb=3.0)]
    a, b = tp.stage_summary(stages, ends)                            # the last end of a stage counts (a resume)
    assert (a["stage"], a["batch_size"], a["seq_len"], a["steps"], a["tokens_per_s"]) == ("a", 2, 8, 4, None)
    assert (b["steps"], b["tokens_per_s"], b["mfu"], b["peak_gpu_mem_gb"]) == (3, 65_600.0, 0.081, 3.0)
    table = tp.format_stages([a, b]).splitlines()
    assert len(table) == 3 and table[2].split()[:5] == ["b", "4", "x", "16", "65.6k"]
    slow = tp.format_stages([b | {"tokens_per_s": 85.4}, b | {"tokens_per_s": 1_234_567.0}]).splitlines()
    assert slow[1].split()[4] == "85" and slow[2].split()[4] == "1.23M"
    assert "8.1%" in table[2] and "3.00 GiB (GPU" in table[2]
    assert table[1].split()[-3:] == ["-", "-", "-"]


# ---- a batch that does not fit -----------------------------------------------------------------------------------
def test_memory_fit_through_two_or_more_batches():
    fit = tp.fit_memory({1: 10.5 * GIB, 2: 12 * GIB})
    assert fit.fixed == pytest.approx(9 * GIB) and fit.per_row == pytest.approx(1.5 * GIB)
    assert fit.peak(64) == pytest.approx(9 * GIB + 64 * 1.5 * GIB)
    assert fit.largest(40 * GIB) == 20 and fit.largest(9.1 * GIB) == 0 and fit.largest(5 * GIB) == 0
    points = {1: 11.0, 2: 12.9, 4: 17.1}                              # least squares over three batches
    noisy, (slope, intercept) = tp.fit_memory(points), np.polyfit(list(points), list(points.values()), 1)
    assert noisy.per_row == pytest.approx(slope) and noisy.fixed == pytest.approx(intercept)
    with pytest.raises(ValueError, match="two batch sizes"):
        tp.fit_memory({1: 10.0})
    with pytest.raises(ValueError, match="does not grow"):
        tp.fit_memory({1: 10.0, 2: 10.0})


class FakeMemory:
    """A device whose step of ``rows`` rows peaks at fixed + rows · per_row bytes and runs out of memory above
    ``capacity``; ``step`` is the probe's step function."""

    def __init__(self, fixed: float, per_row: float, capacity: float, total: float = 141 * GIB):
        self.fixed, self.per_row, self.capacity, self.total_bytes = fixed, per_row, capacity, total
        self.calls: list[int] = []
        self.resets = self.releases = 0
        self._peak = 0.0

    def step(self, rows: int) -> None:
        self.calls.append(rows)
        if self.fixed + rows * self.per_row > self.capacity:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at {rows} rows")
        self._peak = self.fixed + rows * self.per_row

    def release(self) -> None:
        self.releases += 1

    def reset_peak(self) -> None:
        self.resets += 1
        self._peak = 0.0

    def peak(self) -> float:
        return self._peak

    def limit(self) -> float:
        return self.capacity

    def total(self) -> float:
        return self.total_bytes

    def name(self) -> str:
        return "Fake GPU"


def test_probes_measure_small_batches_and_stop_at_the_first_that_does_not_fit():
    memory = FakeMemory(fixed=10 * GIB, per_row=3 * GIB, capacity=14 * GIB)
    assert tp.probe_peaks(memory.step, memory, rows=(2, 1, 4)) == {1: 13 * GIB}
    assert memory.calls == [1, 2] and memory.resets == 2 and memory.releases == 3  # freed before each and after


def test_batch_fit_says_what_the_batch_needs_and_the_largest_that_fits():
    memory = FakeMemory(fixed=10 * GIB, per_row=2 * GIB, capacity=100 * GIB)
    fit = tp.batch_fit(memory.step, rows=64, seq_len=512, memory=memory, held=3 * GIB)
    assert memory.calls == [1, 2] and fit.peaks == {1: 12 * GIB, 2: 14 * GIB}
    assert fit.needed == pytest.approx(13 * GIB + 64 * 2 * GIB)      # the line, plus the moments and gradients
    expected = math.floor((100 * GIB * (1 - tp.HEADROOM) - 13 * GIB) / (2 * GIB))
    assert fit.largest == expected == 41
    message = fit.message("kd")
    assert "stage 'kd': a batch of 64 x 512 tokens does not fit on Fake GPU (141.0 GiB" in message
    assert f"about {141:.1f} GiB" in message and "pass --batch-size 41" in message
    assert "--micro-batch 32 to keep the batch" in message             # the largest divisor of 64 that fits

    # the fit may think the batch asked fits (fragmentation, a kernel's workspace): it did not, so one row fewer
    roomy = FakeMemory(fixed=10 * GIB, per_row=2 * GIB, capacity=1000 * GIB)
    assert tp.batch_fit(roomy.step, rows=8, seq_len=512, memory=roomy).largest == 7


def test_batch_fit_when_one_or_no_row_fits():
    one = FakeMemory(fixed=10 * GIB, per_row=5 * GIB, capacity=18 * GIB)
    fit = tp.batch_fit(one.step, rows=16, seq_len=4096, memory=one)
    assert fit.fit is None and fit.needed is None and fit.largest == 1
    assert "one row takes 15.00 GiB and two do not fit" in fit.message("kd") and "--batch-size 1" in fit.message("kd")
    none = FakeMemory(fixed=10 * GIB, per_row=9 * GIB, capacity=18 * GIB)
    fit = tp.batch_fit(none.step, rows=16, seq_len=4096, memory=none)
    assert fit.peaks == {} and fit.largest == 0 and "not even one row of 4096 tokens fits" in fit.message("kd")
    asked_two = FakeMemory(fixed=10 * GIB, per_row=1 * GIB, capacity=100 * GIB)
    assert tp.batch_fit(asked_two.step, rows=2, seq_len=64, memory=asked_two).largest == 1
    assert asked_two.calls == [1]                                    # never probes the batch that failed


@pytest.mark.gpu
def test_cuda_probes_fit_real_allocations_and_the_largest_batch_fits():
    """Real allocations and real out-of-memory errors: the process may take 1 GiB more than it holds; a step of B
    rows allocates B·64 MiB twice (an activation and its result). The fit finds 128 MiB per row, the batch asked
    does not fit, the largest batch the fit names does."""
    memory = tp.CudaMemory(torch.device("cuda"))   # a bare "cuda", as resolve_device gives it
    device = memory.device
    memory.release()
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    total = torch.cuda.mem_get_info(device)[1]
    row = 64 * 2**20

    def step(rows: int) -> None:
        x = torch.ones(rows * row, dtype=torch.uint8, device=device)   # an activation
        y = x + 1                                                    # its result, both held at the peak
        del x, y

    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(device) + GIB) / total, device)
    try:
        fit = tp.batch_fit(step, rows=64, seq_len=512, memory=memory)
        assert fit.fit.per_row == pytest.approx(2 * row, rel=0.01)
        assert fit.limit == pytest.approx(torch.cuda.memory_reserved(device) + GIB, abs=64 * 2**20)
        assert 1 <= fit.largest < 8 and f"pass --batch-size {fit.largest}" in fit.message("probe")
        step(fit.largest)                                            # fits
        with pytest.raises(torch.cuda.OutOfMemoryError):
            step(64)
    finally:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        memory.release()


def test_held_bytes_count_gradients_and_the_moments_not_yet_made():
    layer = torch.nn.Linear(4, 3)                                    # 15 fp32 entries: 60 bytes
    opt = torch.optim.AdamW(layer.parameters())
    assert tp.held_bytes(opt, layer.parameters()) == 60 + 2 * 60
    layer(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert tp.held_bytes(opt, layer.parameters()) == 60               # the moments exist: the probes measured them


# ---- in a run ----------------------------------------------------------------------------------------------------
def test_the_failed_steps_tensors_are_freed_before_the_probes(tmp_path, monkeypatch):
    run = Run(RunConfig(stages=[StageConfig(tokens=64, batch_size=2, seq_len=32)]), tmp_path, progress=False)
    run.device = torch.device("cpu")
    held = []

    def probes(*args):
        held.append(activations())
        raise tp.BatchTooLarge("stop")

    monkeypatch.setattr(run, "_batch_too_large", probes)
    activations = None

    def step(*args):
        nonlocal activations
        saved = torch.ones(1000)                                    # what a failed forward left on the device
        activations = weakref.ref(saved)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(run, "_train_step", step)
    with pytest.raises(tp.BatchTooLarge):
        run._first_step(None, StageConfig(), 0, None, None, None, torch.zeros(2, 33))
    assert held == [None]


def test_a_first_step_out_of_memory_stops_the_run_with_the_largest_batch(tiny_teacher_dir, tmp_path, monkeypatch):
    """The first step raises CUDA's out-of-memory error (on the CPU): the run probes steps of 1 and 2 rows through
    the stage's real loss, leaves the weights as they were, writes an "error" event and raises BatchTooLarge."""
    from workbench.distill import run as run_module

    memory = FakeMemory(fixed=20 * GIB, per_row=3 * GIB, capacity=40 * GIB)
    memory.peak = lambda: memory.fixed + memory.resets * memory.per_row  # probe k (1, then 2 rows) peaks at k rows
    monkeypatch.setattr(tp, "CudaMemory", lambda device: memory)
    before: dict[str, torch.Tensor] = {}

    def out_of_memory(self, stage, model, opt, train_params, batch):
        before.update({n: p.detach().clone() for n, p in self.student.named_parameters()})
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB")

    probed = []
    stage_losses = run_module.stage_losses
    monkeypatch.setattr(run_module, "stage_losses", lambda *args: probed.append(args[5].shape) or stage_losses(*args))
    monkeypatch.setattr(Run, "_train_step", out_of_memory)
    stages = [StageConfig("kd", losses={"kl": 1.0}, train="all", tokens=3 * 8 * 32, batch_size=8, seq_len=32)]
    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, device="cpu",
                       eval_every=0)
    run = Run(config, tmp_path / "run", progress=False)
    with pytest.raises(tp.BatchTooLarge, match=r"a batch of 8 x 32 tokens does not fit on Fake GPU") as caught:
        run.execute()
    assert probed == [(1, 33), (2, 33)]                              # rows of seq_len + 1 tokens (inputs, targets)
    params = dict(run.student.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in before.items()) and all(p.grad is None for p in params.values())
    held = tp.held_bytes(torch.optim.AdamW(params.values()), params.values())
    largest = math.floor((40 * GIB * (1 - tp.HEADROOM) - 20 * GIB - held) / (3 * GIB))
    assert 0 < largest < 8 and f"pass --batch-size {largest}" in str(caught.value)
    (error,) = iter_events(tmp_path / "run" / "events.jsonl", "error")
    assert error["message"] == str(caught.value) and error["stage"] == "kd" and error["step"] == 0
    assert error["largest_batch_size"] == largest and error["gpu_total_gb"] == 141.0
    assert error["needed_gb"] == pytest.approx(20 + held / GIB + 8 * 3)
    assert not list(iter_events(tmp_path / "run" / "events.jsonl", "step"))


def test_a_batch_that_does_not_fit_goes_on_in_the_largest_micro_batch_that_does(tiny_teacher_dir, tmp_path,
                                                                               monkeypatch):
    """With ``fit_micro_batch``, a first step that runs out of memory is probed as above and the stage goes on in
    parts of the largest divisor of the batch that fits (a "micro_batch" event says so): the same steps, so the
    weights end as those of a run given that micro-batch; without it the run stops (the test above)."""
    memory = FakeMemory(fixed=20 * GIB, per_row=3 * GIB, capacity=40 * GIB)
    memory.peak = lambda: memory.fixed + memory.resets * memory.per_row
    monkeypatch.setattr(tp, "CudaMemory", lambda device: memory)
    stages = [StageConfig("kd", losses={"kl": 1.0}, train="all", tokens=3 * 8 * 32, batch_size=8, seq_len=32)]
    config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0], stages=stages, device="cpu",
                       eval_every=0, seed=3)
    train_step = Run._train_step
    parts = []

    def out_of_memory_above(self, stage, model, opt, train_params, batch):
        rows = stage.micro_batch or len(batch)
        parts.append(rows)
        if rows * 3 * GIB + 20 * GIB > 40 * GIB:                   # the fake device's capacity
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at {rows} rows")
        return train_step(self, stage, model, opt, train_params, batch)

    monkeypatch.setattr(Run, "_train_step", out_of_memory_above)
    fitted = Run(config, tmp_path / "fitted", progress=False, final_eval_tokens=64, fit_micro_batch=True)
    fitted.execute()
    (event,) = iter_events(tmp_path / "fitted" / "events.jsonl", "micro_batch")
    params = dict(fitted.student.named_parameters())
    held = tp.held_bytes(torch.optim.AdamW(params.values()), params.values())
    largest = math.floor((40 * GIB * (1 - tp.HEADROOM) - 20 * GIB - held) / (3 * GIB))
    micro = max(d for d in range(1, largest + 1) if 8 % d == 0)
    assert 1 <= micro < 8 and event["micro_batch"] == micro and event["stage"] == "kd" and event["step"] == 0
    assert f"parts of {micro} rows" in event["message"]
    assert parts == [8, micro, micro, micro]                         # the whole batch once, then its parts
    assert len(list(iter_events(tmp_path / "fitted" / "events.jsonl", "step"))) == 3
    monkeypatch.setattr(Run, "_train_step", train_step)
    given = dataclasses.replace(config, stages=[dataclasses.replace(stages[0], micro_batch=micro)])
    asked = Run(given, tmp_path / "given", progress=False, final_eval_tokens=64)
    asked.execute()
    ours, theirs = dict(fitted.student.named_parameters()), dict(asked.student.named_parameters())
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


# ---- the profile's baseline row ----------------------------------------------------------------------------------
def test_the_profiles_baseline_is_a_plain_cross_entropy_step_on_the_same_tokens():
    """benchmarks/distill_profile.py's baseline: one step of the model's own loss on the next token of every input
    position of the (B, L + 1) batch the KD step trains on, the same update as cross-entropy written out."""
    import copy
    import importlib.util
    from pathlib import Path

    from transformers import AutoModelForCausalLM, LlamaConfig

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_profile.py"
    spec = importlib.util.spec_from_file_location("distill_profile", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reference = copy.deepcopy(model)
    batch = torch.randint(0, 50, (2, 9))                             # (B, L + 1), L = 8
    phases = bench.baseline_step(model, batch, torch.optim.SGD(model.parameters(), lr=1.0), grad_clip=math.inf)
    assert list(phases) == ["forward_loss", "backward", "optimizer"] and all(t > 0 for t in phases.values())
    logits = reference(input_ids=batch[:, :-1]).logits               # (B, L, V)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q.detach() - q.grad)
