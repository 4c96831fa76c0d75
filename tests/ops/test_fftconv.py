import pytest
import torch

from workbench.ops import backend
from workbench.ops.fftconv import causal_toeplitz, fftconv, fftconv_ref, fftconv_torch

# (B, L, C, L_h, skip): odd lengths, filters shorter and longer than the input, with and without the skip term
CASES = {
    "L1": (2, 1, 3, 1, True),
    "L7-odd": (2, 7, 5, 7, True),
    "L63-no-skip": (1, 63, 4, 63, False),
    "L257": (2, 257, 3, 257, True),
    "short-filter": (2, 31, 4, 9, True),
    "long-filter": (3, 20, 2, 50, True),
}


def _inputs(B, L, C, L_h, skip, dtype):
    u = torch.randn(B, L, C, dtype=dtype, requires_grad=True)
    h = (torch.randn(C, L_h, dtype=dtype) * torch.exp(-torch.arange(L_h, dtype=dtype) / 10)).requires_grad_()
    D = torch.randn(C, dtype=dtype, requires_grad=True) if skip else None
    return u, h, D


def _value_and_grads(fn, u, h, D, cotangent):
    """fn's output and the gradients of <output, cotangent> w.r.t. u, h (and D)."""
    y = fn(u, h, D)
    params = [u, h] + ([D] if D is not None else [])
    return y, torch.autograd.grad((y * cotangent).sum(), params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fft_matches_ref_outputs_and_gradients(case, dtype):
    u, h, D = _inputs(*case, dtype)
    cotangent = torch.randn_like(u)  # random, so every output position weighs in the gradients
    y_fft, g_fft = _value_and_grads(fftconv_torch, u, h, D, cotangent)
    y_ref, g_ref = _value_and_grads(fftconv_ref, u, h, D, cotangent)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    assert y_fft.shape == u.shape and y_fft.dtype == dtype
    torch.testing.assert_close(y_fft, y_ref, **tol)
    for a, b in zip(g_fft, g_ref):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_ref_is_the_causal_toeplitz_product(case):
    u, h, D = _inputs(*case, torch.float64)
    T = causal_toeplitz(h, u.shape[1])                                   # (C, L, L)
    expected = torch.einsum("cls,bsc->blc", T, u)
    if D is not None:
        expected = expected + D * u
    torch.testing.assert_close(fftconv_ref(u, h, D), expected)
    assert torch.all(torch.triu(T, diagonal=1) == 0)


def test_low_precision_inputs_are_computed_in_float32_and_cast_back():
    u, h, D = _inputs(2, 40, 3, 40, True, torch.float32)
    y = fftconv(u.bfloat16(), h, D)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), fftconv_ref(u.bfloat16().float(), h, D), rtol=2e-2, atol=2e-2)


def test_backend_choice_and_override(monkeypatch):
    assert backend.select("fftconv", "cpu").name == "torch-fft"
    assert [b.name for b in backend.backends("fftconv")][-1] == "ref"
    u, h, D = _inputs(2, 17, 3, 17, True, torch.float64)
    expected = fftconv(u, h, D)

    def no_fft(*args, **kwargs):
        raise AssertionError("the ref backend must not use the FFT")

    monkeypatch.setattr(torch.fft, "rfft", no_fft)
    with backend.force_backend("fftconv", "ref"):
        torch.testing.assert_close(fftconv(u, h, D), expected)
    monkeypatch.setenv("WORKBENCH_BACKEND_FFTCONV", "ref")
    torch.testing.assert_close(fftconv(u, h, D), expected)


def test_shape_errors_are_clear():
    u = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="u \\(B, L, C\\) and h \\(C, L_h\\)"):
        fftconv(u, torch.randn(4, 5))
    with pytest.raises(ValueError, match="skip D must have shape"):
        fftconv_ref(u, torch.randn(3, 5), torch.randn(2))
