"""aligned_linear (output rows padded to a multiple of 8 for the GEMM) against plain F.linear."""

import pytest
import torch

from workbench.ops.aligned_linear import AlignedLinear, aligned_linear, aligned_linear_ref


@pytest.mark.parametrize("M", [1, 7, 8, 13, 1545])
@pytest.mark.parametrize("bias", [True, False])
def test_same_values_and_gradients(M, bias):
    g = torch.Generator().manual_seed(M)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(M, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(M, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    y, y_ref = aligned_linear(x, w, b), aligned_linear_ref(x, w, b)
    assert y.shape == (3, 5, M)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    params = [t for t in (x, w, b) if t is not None]
    for a, e in zip(torch.autograd.grad(y, params, grad), torch.autograd.grad(y_ref, params, grad)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_module_keeps_nn_linear_state_dict():
    plain = torch.nn.Linear(16, 13)
    aligned = AlignedLinear(16, 13)
    aligned.load_state_dict(plain.state_dict())
    x = torch.randn(4, 16)
    torch.testing.assert_close(aligned(x), plain(x), rtol=1e-6, atol=1e-6)
    assert list(aligned.state_dict()) == ["weight", "bias"]
