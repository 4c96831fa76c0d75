"""Where the distillery's work runs: no more pool workers than the CPUs the process may use (affinity, cgroup quota),
torch's own threads capped during a fit, the modal refinement never split into one-channel tasks, a student's
layers fitted as one batch, and the gradient steps on the student's device."""

import copy

import pytest
import torch

from tests.helpers.tiny_models import tiny
from tests.laughing.test_speedups import noisy_modes
from workbench.laughing import distill_orders, distill_student, error_table, pool
from workbench.laughing import fit as fit_module
from workbench.laughing import student as student_module
from workbench.laughing.student import fit_device, layer_batches, student_filters
from workbench.students import build_student


def multihyena_student():
    """Two MultiHyena layers of 4 filters (64 taps) each."""
    torch.manual_seed(0)
    return build_student(tiny("llama"), "multihyena", keep_attention=[0], init="random", max_len=64,
                         filter_width=16, filter_layers=2, pos_bands=4).eval()


def spy_descend(monkeypatch) -> list[tuple[int, str]]:
    """Record (channels, device type) of every batch the modal refinement (M2) runs on."""
    calls = []
    descend = fit_module._descend

    def spy(taps, *args):
        calls.append((taps.shape[0], taps.device.type))
        return descend(taps, *args)

    monkeypatch.setattr(fit_module, "_descend", spy)
    return calls


# ---- the pool's size --------------------------------------------------------------------------------------------

def test_cgroup_quota_is_read_from_v2_else_v1(tmp_path):
    v2, v1 = tmp_path / "cpu.max", tmp_path / "cpu" / "cpu.cfs_quota_us"
    assert pool.cgroup_cpu_limit(v2, v1) is None                     # neither file: no quota visible
    v1.parent.mkdir()
    (v1.parent / "cpu.cfs_period_us").write_text("100000\n")
    v1.write_text("-1\n")
    assert pool.cgroup_cpu_limit(v2, v1) is None                     # v1, unlimited
    v1.write_text("250000\n")
    assert pool.cgroup_cpu_limit(v2, v1) == 3                        # 2.5 CPUs of time: 3 threads can use it
    v2.write_text("max 100000\n")
    assert pool.cgroup_cpu_limit(v2, v1) is None                     # v2 is read first: unlimited
    v2.write_text("1600000 100000\n")
    assert pool.cgroup_cpu_limit(v2, v1) == 16


def test_default_workers_never_exceed_the_usable_cpus(monkeypatch, tmp_path):
    monkeypatch.setattr(pool, "CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(pool, "CFS_QUOTA", tmp_path / "no-cgroup-v1")
    monkeypatch.setattr(pool.torch, "get_num_threads", lambda: 96)   # torch counting every core of the host
    monkeypatch.setattr(pool.os, "sched_getaffinity", lambda pid: set(range(48)), raising=False)
    assert pool.usable_cpus() == 48 and pool.default_workers() == 48
    (tmp_path / "cpu.max").write_text("1600000 100000\n")            # a 16-CPU quota on those 48
    assert pool.usable_cpus() == 16 and pool.default_workers() == 16
    monkeypatch.setattr(pool.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert pool.default_workers() == 3                               # pinned to 3 CPUs: below the quota
    monkeypatch.delattr(pool.os, "sched_getaffinity")                # a platform without affinity masks
    monkeypatch.setattr(pool.os, "cpu_count", lambda: 8)
    assert pool.usable_cpus() == 8
    monkeypatch.setattr(pool.torch, "get_num_threads", lambda: 4)
    assert pool.default_workers() == 4                               # fewer torch threads: those
    assert pool.default_workers(100) == 100 and pool.default_workers(0) == 1     # an explicit count is kept


def test_a_fit_caps_torch_threads_at_its_workers_and_restores_them(monkeypatch):
    seen = []
    errors = fit_module.filter_errors

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())                         # the main thread, outside the pool
        return errors(*args, **kwargs)

    monkeypatch.setattr(fit_module, "filter_errors", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        distill_orders(noisy_modes(C=3, L=64), [2], "balanced", workers=1)
        assert seen == [1] and torch.get_num_threads() == 2
        with pool.capped_threads(5) as capped:                       # a cap above the count changes nothing
            assert capped == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_the_modal_refinement_is_not_split_into_one_channel_tasks(monkeypatch):
    calls = spy_descend(monkeypatch)
    distill_orders(noisy_modes(C=9, L=200), [3], "modal", steps=2, workers=9)
    assert calls == [(9, "cpu")]                                     # one task of nine channels, not nine of one
    calls.clear()
    distill_orders(noisy_modes(C=70, L=200), [3], "modal", steps=2, workers=9)
    assert sorted(n for n, _ in calls) == [6, 32, 32]                # REFINE_CHUNK channels per task at least
    calls.clear()
    distill_orders(noisy_modes(C=9, L=200), [3], "modal", steps=2, workers=9, chunk=1)
    assert [n for n, _ in calls] == [1] * 9                          # an explicit chunk is kept


# ---- a student's layers, and their device -----------------------------------------------------------------------

def test_layer_batches_stack_the_layers_of_each_length():
    filters = {1: torch.randn(2, 8), 3: torch.randn(3, 8), 4: torch.randn(1, 5)}
    batches = layer_batches(filters)
    assert [(tuple(h.shape), rows) for h, rows in batches] == [((5, 8), {1: slice(0, 2), 3: slice(2, 5)}),
                                                                ((1, 5), {4: slice(0, 1)})]
    for h, rows in batches:
        for layer, part in rows.items():
            assert torch.equal(h[part], filters[layer])


def test_error_table_fits_all_layers_as_one_batch_and_each_as_alone(monkeypatch):
    student = multihyena_student()
    filters = student_filters(student)
    assert len(filters) == 2
    calls = spy_descend(monkeypatch)
    fits, spent = {}, {}
    rows = error_table(student, orders=[2, 4], method="modal", steps=10, fits=fits, seconds=spent)
    assert calls == [(8, "cpu"), (8, "cpu")]                         # one refinement per order, both layers in it
    calls.clear()
    for layer, h in filters.items():
        alone = distill_orders(h, [2, 4], "modal", steps=10)
        for d, ssm in alone.items():
            together = fits[d][layer]
            gap = (together.impulse_response(64) - ssm.impulse_response(64)).norm(dim=-1) / h.norm(dim=-1)
            assert gap.max() < 1e-6                                  # rounding only (test_fit's batching bound)
            row, = [r for r in rows if (r["layer"], r["order"]) == (layer, d)]
            assert row["channels"] == h.shape[0] and row["fit_s"] > 0
            assert row["rel_l2"] == together.errors["rel_l2"].mean().item()     # the slice keeps its errors
            torch.testing.assert_close(together.errors["rel_l2"], ssm.errors["rel_l2"], rtol=1e-6, atol=1e-12)
    assert [(r["layer"], r["order"]) for r in rows] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert spent["fits"] > 0 and spent["floors"] > 0


def test_fits_run_where_the_student_is(monkeypatch):
    student = multihyena_student()
    assert fit_device(student) is None                               # a CPU student: the CPU thread pool
    assert fit_device(student, "cpu") == torch.device("cpu")         # an explicit device is kept
    elsewhere = copy.deepcopy(student).to("meta")                    # any device but the CPU (CUDA on a GPU)
    assert fit_device(elsewhere) == torch.device("meta")
    seen = []
    orders_fit = student_module.distill_orders

    def spy(h, orders, method, **kwargs):
        seen.append(kwargs["device"])
        return orders_fit(h, orders, method, **kwargs)

    monkeypatch.setattr(student_module, "distill_orders", spy)
    error_table(student, [2], "balanced")
    distill_student(student, 2, method="balanced")
    distill_student(student, 2, method="balanced", device="cpu")
    assert seen == [None, None, torch.device("cpu")]


@pytest.mark.gpu
def test_a_student_on_cuda_refines_on_cuda(monkeypatch):
    """The same filters (read from the CUDA student) refined on CUDA by default and on the CPU when asked: the same
    table within the bound of test_fit.test_fit_on_cuda_equals_cpu (each channel's fit within 1e-6 of its filter's
    norm, so each relative error within 1e-6 too)."""
    student = multihyena_student().to("cuda")
    calls = spy_descend(monkeypatch)
    on_cuda = error_table(student, [2, 4], "modal", steps=20)
    assert calls == [(8, "cuda"), (8, "cuda")]
    on_cpu = error_table(student, [2, 4], "modal", steps=20, device="cpu")
    assert calls[2:] == [(8, "cpu"), (8, "cpu")]
    for a, b in zip(on_cuda, on_cpu, strict=True):
        assert (a["layer"], a["order"]) == (b["layer"], b["order"])
        assert abs(a["rel_l2"] - b["rel_l2"]) <= 1e-6
