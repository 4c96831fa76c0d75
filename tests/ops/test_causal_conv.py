"""causal_conv1d (shifted multiply-adds) against its reference (ATen's grouped conv1d): outputs and gradients."""

import pytest
import torch

from workbench.ops.causal_conv import causal_conv1d, causal_conv1d_ref


def _inputs(L: int, C: int, W: int, dtype: torch.dtype, bias: bool):
    g = torch.Generator().manual_seed(L * 100 + W)
    x = torch.randn(2, L, C, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(C, W, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("L", [1, 3, 4, 37])
@pytest.mark.parametrize("W", [1, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv1d_in_float64(L, W, bias):
    x, w, b = _inputs(L, 5, W, torch.float64, bias)
    y = causal_conv1d(x, w, b)
    y_ref = causal_conv1d_ref(x, w, b)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    params = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad(y, params, grad)
    want = torch.autograd.grad(y_ref, params, grad)
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"gradient of {name}")


def test_is_causal_and_starts_from_zeros():
    x, w, b = _inputs(9, 3, 4, torch.float64, True)
    y = causal_conv1d(x, w, b).detach()
    later = x.detach().clone()
    later[:, 5:] += 1.0                                                     # change the future only
    torch.testing.assert_close(causal_conv1d(later, w.detach(), b.detach())[:, :5], y[:, :5])
    torch.testing.assert_close(y[:, 0], x.detach()[:, 0] * w.detach()[:, -1] + b.detach())   # only tap W-1 at t=0


def test_bfloat16_keeps_the_dtype_and_accumulates_in_float32():
    """bf16 in, bf16 out; the float32 accumulator leaves only the final rounding: within one bf16 ulp (2^-8
    relative) of the float64 result, where the reference's bf16 products may be off by more."""
    x, w, b = _inputs(33, 8, 4, torch.bfloat16, True)
    y = causal_conv1d(x, w, b)
    assert y.dtype == torch.bfloat16
    exact = causal_conv1d_ref(x.double(), w.double(), b.double())
    scale = exact.abs().clamp_min(1e-2)
    assert ((y.double() - exact).abs() / scale).max() <= 2**-8


def test_bad_shapes_name_the_layout():
    with pytest.raises(ValueError, match=r"x \(B, L, C\) and weight \(C, W\)"):
        causal_conv1d(torch.randn(2, 5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"bias must be \(C,\)"):
        causal_conv1d(torch.randn(2, 5, 3), torch.randn(3, 4), torch.randn(4))
