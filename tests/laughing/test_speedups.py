"""The distillery's speed-ups: closed-form fits on a CPU thread pool (results independent of the worker count), the
modal method's gradient steps on a device, and the capped Hankel floor of the error table (a valid, weaker floor)."""

import pytest
import torch

from workbench.laughing import distill_filter, distill_orders, error_floor, error_table
from workbench.laughing.fit import solve_residues
from workbench.laughing.hankel import capped_floors, hankel_singular_values, relative_floor
from workbench.laughing.pool import map_chunks
from workbench.students.hyena import Hyena, HyenaConfig


def noisy_modes(C: int = 7, L: int = 400, seed: int = 0) -> torch.Tensor:
    """(C, L) float64: sums of damped cosines plus a little white noise (full Hankel rank)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L, dtype=torch.float64)
    h = torch.zeros(C, L, dtype=torch.float64)
    for c in range(C):
        for _ in range(2 + c % 5):
            radius = 0.8 + 0.19 * torch.rand((), generator=g, dtype=torch.float64)
            freq = torch.pi * torch.rand((), generator=g, dtype=torch.float64)
            h[c] += torch.randn((), generator=g, dtype=torch.float64) * radius ** t * torch.cos(freq * t)
    return h + 1e-3 * torch.randn(C, L, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method, kwargs", [("balanced", {}), ("balanced", {"hankel_size": 48}), ("prony", {}),
                                            ("modal", {"steps": 8})], ids=["balanced", "kung", "prony", "modal"])
def test_thread_pool_fits_equal_single_thread_fits_exactly(method, kwargs):
    h = noisy_modes()
    alone = distill_filter(h, 5, method, chunk=2, workers=1, **kwargs)
    pooled = distill_filter(h, 5, method, chunk=2, workers=3, **kwargs)
    assert torch.equal(pooled.poles, alone.poles) and torch.equal(pooled.residues, alone.residues)
    assert torch.equal(pooled.h0, alone.h0)


def test_map_chunks_keeps_order_and_restores_threads():
    threads = torch.get_num_threads()
    seen = map_chunks(lambda s: (s.start, s.stop, torch.get_num_threads(), torch.is_grad_enabled()), 10, 3, 4)
    assert [(a, b) for a, b, _, _ in seen] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert all(n == 1 and not grad for _, _, n, grad in seen)
    assert torch.get_num_threads() == threads


def test_capped_floor_is_below_the_full_floor():
    torch.manual_seed(3)
    hyena = Hyena(12, 4, HyenaConfig(max_len=200, filter_width=16)).filter(200).detach().double()
    for h in (noisy_modes(L=200), hyena):
        orders = [1, 2, 4, 8, 16]
        full, m_full = capped_floors(h, orders, None)
        assert m_full == 100
        for d, column in zip(orders, full.T):                   # size None: the exact relative floor
            torch.testing.assert_close(column, relative_floor(h, d), rtol=1e-12, atol=0)
        for size in (10, 24, 64):
            capped, m = capped_floors(h, orders, size)
            assert m == size and capped.shape == (h.shape[0], len(orders))
            assert (capped <= full * (1 + 1e-12)).all()
            assert (capped[:, 0] > 0).all()                     # still informative
            for d in orders:                                    # interlacing: σ_k of the block ≤ σ_k of the whole
                assert (error_floor(h, d, size) <= error_floor(h, d) * (1 + 1e-12) + 1e-300).all()
        assert (hankel_singular_values(h, 24, workers=1) <= hankel_singular_values(h)[:, :24] * (1 + 1e-12)).all()


def test_error_table_records_the_hankel_size_and_seconds():
    from tests.helpers.tiny_models import tiny
    from workbench.students import build_student

    torch.manual_seed(0)
    student = build_student(tiny("llama"), "hyena", keep_attention=[0], init="random", max_len=64, filter_width=16,
                            filter_layers=2, pos_bands=4).eval()
    seconds = {}
    capped = error_table(student, orders=[1, 4], method="balanced", hankel_size=8, seconds=seconds)
    full = error_table(student, orders=[1, 4], method="balanced", hankel_size=None)
    assert {r["hankel_size"] for r in capped} == {8} and {r["hankel_size"] for r in full} == {32}
    assert set(seconds) == {"fits", "floors"} and all(v >= 0 for v in seconds.values())
    for a, b in zip(capped, full):
        assert a["floor"] <= b["floor"] * (1 + 1e-12) and a["rel_l2"] == b["rel_l2"] and a["fit_s"] >= 0


def test_modal_refinement_on_a_device_argument_matches():
    h = noisy_modes(C=5, L=300, seed=1)
    pooled = distill_filter(h, 4, "modal", steps=25)
    on_device = distill_filter(h, 4, "modal", steps=25, device="cpu")
    assert on_device.poles.device.type == "cpu"
    torch.testing.assert_close(on_device.impulse_response(300), pooled.impulse_response(300), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(on_device.errors["rel_l2"], pooled.errors["rel_l2"], rtol=1e-6, atol=1e-12)
    # the refinement only ever improves on its balanced start
    start = distill_filter(h, 4, "balanced")
    assert (pooled.errors["rel_l2"] <= start.errors["rel_l2"] + 1e-12).all()


def test_balanced_residues_are_least_squares():
    h = noisy_modes(C=4, L=300, seed=2)                        # n <= FULL_HANKEL: exact FIR balanced truncation
    fitted = distill_filter(h, 3, "balanced")
    torch.testing.assert_close(fitted.residues, solve_residues(h[:, 1:], fitted.poles), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method, kwargs", [("balanced", {}), ("balanced", {"hankel_size": 48}), ("prony", {}),
                                            ("modal", {"steps": 8})], ids=["balanced", "kung", "prony", "modal"])
def test_orders_in_one_call_equal_separate_fits_exactly(method, kwargs):
    h = noisy_modes(L=300)
    seconds = {}
    together = distill_orders(h, [6, 2, 4], method, chunk=3, seconds=seconds, **kwargs)
    assert sorted(together) == [2, 4, 6] and sorted(seconds) == [2, 4, 6] and min(seconds.values()) > 0
    for d, ssm in together.items():
        alone = distill_filter(h, d, method, chunk=3, **kwargs)
        assert torch.equal(ssm.poles, alone.poles) and torch.equal(ssm.residues, alone.residues)
        assert torch.equal(ssm.errors["rel_l2"], alone.errors["rel_l2"])
