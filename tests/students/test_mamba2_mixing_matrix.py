"""Mamba-2's mixing matrix (MOHAWK stage 1's student side) built from only what it reads - in_proj's B, C and dt
rows, the conv of the B and C channels, one score matrix per group - against ``mixing_matrix_ref``, the same
formula on the mixer's whole ``ssm_inputs``: values and gradients (every parameter and the input), odd lengths,
both decays, shared and per-head B/C, with and without biases."""

import pytest
import torch

from tests.helpers.mixer_checks import assert_rel_close, perturbed
from workbench.students.mamba2 import Mamba2, Mamba2Config

D = 24

MIXERS = {
    "G1-norm": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, chunk_size=8)),
    "G2-biases": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, n_groups=2, bias=True,
                                             chunk_size=8)),
    "per-head-BC": lambda: Mamba2(Mamba2Config(d_model=D, d_state=4, head_dim=4, n_heads=6, n_groups=6,
                                               conv_init_identity=True, gate_bias=True, gate_init_one=True)),
    "discrete-G3": lambda: Mamba2(Mamba2Config.mohawk(D, d_state=8, head_dim=4, n_heads=6, n_groups=3, bias=True)),
    "dt-limit": lambda: Mamba2(Mamba2Config(d_model=D, d_state=8, head_dim=4, n_heads=6, dt_limit=(0.01, 0.05))),
}


def matrix_and_grads(mixer, x, weights, method):
    """M = method(x), and the gradients of <weights, M> for x and every parameter of the mixer (None for those M
    does not read: the gate, out_proj)."""
    x = x.clone().requires_grad_(True)
    mixer.zero_grad(set_to_none=True)
    M = getattr(mixer, method)(x)
    (M * weights).sum().backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in mixer.named_parameters()}
    return M.detach(), grads, x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", [1, 7, 21])
@pytest.mark.parametrize("make", MIXERS.values(), ids=MIXERS.keys())
def test_mixing_matrix_matches_ref_in_values_and_gradients(make, L, dtype):
    torch.manual_seed(L)
    mixer = perturbed(make(), dtype)
    x = torch.randn(2, L, D, dtype=dtype)
    H = mixer.config.n_heads
    weights = torch.randn(2, H, L, L, dtype=dtype)
    M, grads, grad_x = matrix_and_grads(mixer, x, weights, "mixing_matrix")
    M_ref, grads_ref, grad_x_ref = matrix_and_grads(mixer, x, weights, "mixing_matrix_ref")
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert M.shape == M_ref.shape == (2, H, L, L)
    assert_rel_close(M, M_ref, rtol, "M")
    assert_rel_close(grad_x, grad_x_ref, rtol, "grad x")
    assert grads.keys() == grads_ref.keys()
    assert {n for n, g in grads.items() if g is None} == {n for n, g in grads_ref.items() if g is None}
    for name, g in grads.items():
        if g is not None:
            assert_rel_close(g, grads_ref[name], rtol, f"grad {name}")
    in_proj = grads["in_proj.weight"]
    E = mixer.config.d_inner
    assert torch.all(in_proj[:2 * E] == 0) and in_proj[2 * E:].abs().sum() > 0   # z and x rows: M never reads them
