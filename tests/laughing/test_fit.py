"""Fitting filters (workbench.laughing.fit, .hankel, .reference): exact recovery of modal filters, Hankel
singular values, batched torch fits against the per-channel numpy reference."""

import numpy as np
import pytest
import torch

from tests.helpers.laughing_checks import D_MODEL, random_ssm
from workbench.laughing import (
    distill_filter,
    error_floor,
    hankel_singular_values,
    minimal_order,
)
from workbench.laughing.hankel import hankel_rank
from workbench.laughing.reference import reference_fit, reference_singular_values
from workbench.students.hyena import Hyena, HyenaConfig

# ---- exact recovery --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, kwargs", [("prony", {}), ("balanced", {}), ("balanced", {"hankel_size": 20}),
                                            ("modal", {"steps": 20})], ids=["prony", "balanced", "kung", "modal"])
def test_exact_modal_filter_is_recovered(method, kwargs):
    d, L = 4, 96
    true = random_ssm(C=2, d=d, seed=3)
    h = true.impulse_response(L)                                             # (2, L) float64
    fitted = distill_filter(h, d, method, **kwargs)
    assert fitted.poles.shape == (2, d) and fitted.residues.shape == (2, d) and fitted.h0.shape == (2,)
    assert fitted.poles.dtype == torch.complex128 and fitted.poles.abs().max() < 1
    assert fitted.errors["rel_l2"].max() < 1e-8
    assert fitted.errors["hinf"].max() < 1e-7 * h.abs().sum(-1).max()
    # same poles, up to order
    for c in range(2):
        got = sorted(fitted.poles[c].tolist(), key=lambda z: (round(z.real, 6), z.imag))
        want = sorted(true.poles[c].tolist(), key=lambda z: (round(z.real, 6), z.imag))
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_hankel_singular_values_reveal_the_order():
    d, L = 4, 96
    h = random_ssm(C=2, d=d, seed=3).impulse_response(L)
    s = hankel_singular_values(h)
    assert s.shape == (2, L // 2)
    # d complex modes read through Re() are 2d real states
    assert (s[:, 2 * d:] < 1e-10 * s[:, :1]).all() and (s[:, 2 * d - 1] > 1e-6 * s[:, 0]).all()
    assert hankel_rank(h, rtol=1e-8).tolist() == [2 * d, 2 * d]
    assert minimal_order(h, rtol=1e-8).tolist() == [d, d]
    assert (error_floor(h, d) < 1e-10 * s[:, 0]).all() and (error_floor(h, d - 1) > 1e-6 * s[:, 0]).all()
    # a sum of d REAL damped modes has rank d
    t = torch.arange(1, L, dtype=torch.float64)
    real = torch.zeros(L, dtype=torch.float64)
    real[1:] = 2.0 * 0.9 ** (t - 1) - 0.5 * 0.6 ** (t - 1) + 0.3 * (-0.7) ** (t - 1)
    s1 = hankel_singular_values(real)
    assert s1.shape == (1, L // 2) and (s1[0, 3:] < 1e-10 * s1[0, 0]).all()
    fitted = distill_filter(real, 3, "prony")
    assert fitted.errors["rel_l2"].item() < 1e-8


def test_modal_fit_is_no_worse_than_its_start_on_a_hyena_filter():
    h = Hyena(D_MODEL, 4, HyenaConfig(max_len=128, filter_width=16)).filter(128).detach()
    balanced = distill_filter(h, 4, "balanced")
    modal = distill_filter(h, 4, "modal", steps=60)
    assert (modal.errors["rel_l2"] <= balanced.errors["rel_l2"] + 1e-12).all()
    # more modes, less error (and never below the Hankel floor of the H-infinity error)
    high = distill_filter(h, 12, "balanced")
    assert high.errors["rel_l2"].mean() < balanced.errors["rel_l2"].mean()
    assert (high.errors["hinf"] >= error_floor(h, 12) * (1 - 1e-6)).all()
    with pytest.raises(ValueError, match="method"):
        distill_filter(h, 4, "magic")


# ---- batched torch fits against the per-channel numpy reference ----------------------------------------------

def damped_modes(C=6, L=700, seed=5):
    """Random sums of damped modes: complex pairs and real poles (some negative), a few modes per channel."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L - 1, dtype=torch.float64)
    h = torch.zeros(C, L, dtype=torch.float64)
    h[:, 0] = torch.randn(C, generator=g, dtype=torch.float64)
    for c in range(C):
        for _ in range(1 + c % 4):
            lam = torch.polar(0.6 + 0.35 * torch.rand((), generator=g, dtype=torch.float64),
                              torch.pi * torch.rand((), generator=g, dtype=torch.float64))
            h[c, 1:] += (torch.randn((), generator=g, dtype=torch.float64) * lam ** t).real
        for _ in range(c % 3):
            h[c, 1:] += torch.randn((), generator=g, dtype=torch.float64) * (1.8 * torch.rand(
                (), generator=g, dtype=torch.float64) - 0.9) ** t
    return h


def assert_same_fit(batched, reference, h, tol=1e-8):
    L = h.shape[1]
    scale = h.norm(dim=-1, keepdim=True)
    diff = (batched.impulse_response(L) - reference.impulse_response(L)).norm(dim=-1, keepdim=True)
    assert (diff <= tol * scale + 1e-12).all(), (diff / scale).max()
    torch.testing.assert_close(batched.errors["rel_l2"], reference.errors["rel_l2"], rtol=1e-6, atol=1e-10)
    for c in range(h.shape[0]):              # same poles, up to order (those with a residue: others are arbitrary)
        def significant(ssm):
            keep = ssm.residues[c].abs() > 1e-6 * ssm.residues[c].abs().max()
            return sorted(ssm.poles[c][keep].tolist(), key=lambda z: (round(z.real, 5), round(z.imag, 5)))
        np.testing.assert_allclose(significant(batched), significant(reference), atol=1e-6)


@pytest.mark.parametrize("method, kwargs", [("balanced", {}), ("balanced", {"hankel_size": 64}), ("prony", {})],
                         ids=["balanced", "kung", "prony"])
@pytest.mark.parametrize("order", [2, 3, 8])
def test_batched_fit_equals_reference_on_damped_modes(method, kwargs, order):
    h = damped_modes(L=300 if not kwargs else 700)
    batched = distill_filter(h, order, method, chunk=4, **kwargs)
    assert_same_fit(batched, reference_fit(h, order, method, **kwargs), h)
    if order == 8:                                                            # enough modes: exact recovery
        assert batched.errors["rel_l2"].max() < 1e-8


@pytest.mark.parametrize("method, L", [("balanced", 300), ("balanced", 1024), ("prony", 1024)],
                         ids=["balanced", "kung", "prony"])
def test_batched_fit_equals_reference_on_a_hyena_filter(method, L):
    torch.manual_seed(1)
    h = Hyena(D_MODEL, 8, HyenaConfig(max_len=L, filter_width=16)).filter(L).detach().double()
    tol = 1e-6 if method == "prony" else 1e-8          # linear prediction + polynomial roots: less well conditioned
    for order in (4, 12):
        assert_same_fit(distill_filter(h, order, method), reference_fit(h, order, method), h, tol)
    np.testing.assert_allclose(hankel_singular_values(h, chunk=3).numpy(), reference_singular_values(h),
                               rtol=1e-9, atol=1e-12 * reference_singular_values(h).max())


def test_modal_fit_is_batched_over_channels():
    """A chunk of channels fits as each channel alone, and a channel's fit does not depend on its neighbours.

    Not bit for bit: a chunk of 6 and a chunk of 1 round differently (the batched LAPACK / BLAS calls), and Adam's
    normalised steps turn that 1e-16 into up to ~1e-7 of a tap within a few steps on coordinates whose gradient is
    pure rounding (the angle of a real pole), before M3's least squares settles the fit again. So the bound is 1e-6
    of each filter's norm; a coupling through the loss or the step sizes moves a fit by the order of the learning
    rate (5e-3)."""
    torch.manual_seed(2)
    h = Hyena(D_MODEL, 6, HyenaConfig(max_len=128, filter_width=16)).filter(128).detach().double()
    torch.manual_seed(3)
    other = 1e3 * Hyena(D_MODEL, 6, HyenaConfig(max_len=128, filter_width=16)).filter(128).detach().double()
    together = distill_filter(h, 4, "modal", steps=30, chunk=6)
    alone = distill_filter(h, 4, "modal", steps=30, chunk=1)
    neighbours = distill_filter(torch.cat([h[:3], other[3:]]), 4, "modal", steps=30, chunk=6)

    def relative_gap(a, b):                         # (C,) ‖ĥ_a - ĥ_b‖ / ‖h‖ over the first C = min(channels) channels
        C = min(len(a.poles), len(b.poles))
        return (a.impulse_response(128)[:C] - b.impulse_response(128)[:C]).norm(dim=-1) / h[:C].norm(dim=-1)

    assert relative_gap(together, alone).max() < 1e-6
    torch.testing.assert_close(together.errors["rel_l2"], alone.errors["rel_l2"], rtol=1e-6, atol=0)
    first_three = distill_filter(h[:3], 4, "modal", steps=30, chunk=3)
    assert relative_gap(first_three, together).max() < 1e-6
    assert relative_gap(first_three, neighbours).max() < 1e-6
    assert (together.poles[3:] - neighbours.poles[3:]).abs().max() > 1e-3   # the neighbours did change


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["balanced", "prony", "modal"])
def test_fit_on_cuda_equals_cpu(method):
    """The closed-form steps run on the CPU for either device; the modal method's Adam steps (M2) and the errors run on
    the device, in float64. CUDA rounds the same float64 sums in other orders (~1e-16 apart), and Adam's normalised
    steps can turn that into ~1e-7 of a tap on coordinates whose gradient is pure rounding before M3's least squares
    settles the fit: each channel's fit within 1e-6 of its filter's norm (a real difference moves it by the order of
    the learning rate, 5e-3). Each relative error then differs by at most that gap (‖h - ĥ_a‖ - ‖h - ĥ_b‖ is at most
    ‖ĥ_a - ĥ_b‖), plus float64 rounding."""
    h = damped_modes(L=1024)
    on_cpu = distill_filter(h, 4, method, steps=20, device="cpu")
    on_cuda = distill_filter(h, 4, method, steps=20, device="cuda")
    assert on_cuda.poles.device.type == "cpu"
    gap = (on_cuda.impulse_response(1024) - on_cpu.impulse_response(1024)).norm(dim=-1) / h.norm(dim=-1)   # (C,)
    assert gap.max() < 1e-6, gap
    assert ((on_cuda.errors["rel_l2"] - on_cpu.errors["rel_l2"]).abs() <= gap + 1e-12).all()
