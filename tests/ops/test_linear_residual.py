"""A projection added to the residual in one kernel (``workbench.ops.linear_residual``): the Triton kernel against the
reference, the layer's projection then its add (in Triton's interpreter on the CPU, compiled on CUDA with
``pytest -m gpu``); and the refusals."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.triton_interpreter import (
    HAS_TRITON,
    errors_on_cuda,
    errors_within_in_interpreter,
    relative_error,
)
from workbench.ops.backend import backends, force_backend, select
from workbench.ops.linear_residual import (
    linear_residual,
    linear_residual_ref,
    linear_residual_triton,
)


def kernel_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """The kernel against the reference (computed in float32 from the same inputs) over odd sizes, one case on
    strided rows and one compiled: per case, the largest error relative to the reference's largest magnitude."""
    errors = {}
    gen = torch.Generator().manual_seed(0)
    for M, K, N in ((1, 40, 50), (2, 300, 16), (17, 130, 70)):     # rows past one block, K past two blocks
        r, x, w = (torch.randn(*shape, generator=gen) for shape in ((M, N), (M, K), (N, K)))
        on = [t.to(device=device, dtype=dtype) for t in (r, x, w)]
        with torch.no_grad():
            errors[f"{M}x{K}x{N}"] = relative_error(linear_residual_triton(*on), linear_residual_ref(r, x, w))
    wide = torch.randn(17, 2 * 130, generator=gen)[:, :130]         # rows with a stride past their width (17x130x70)
    with torch.no_grad():
        out = linear_residual_triton(on[0], wide.to(device=device, dtype=dtype), on[2])
        errors["strided rows"] = relative_error(out, linear_residual_ref(r, wide, w))
        compiled = torch.compile(linear_residual_triton, fullgraph=True)(*on)
        errors["compiled"] = relative_error(compiled, linear_residual_ref(r, x, w))
    return errors


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_kernel_matches_reference_in_the_interpreter():
    errors_within_in_interpreter("tests.ops.test_linear_residual.kernel_errors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "dependent-launch"])
def test_kernel_matches_reference_on_cuda(dtype, pdl):
    """float32: products in IEEE float32 (no TF32), so float32 rounding. bf16: the inputs are rounded to bf16 (2^-8
    relative each, which the float32 reference does not see), the product accumulates in float32 and is rounded once,
    then the sum once more: within a few 2^-8 of the output's scale."""
    limit = 1e-5 if dtype == torch.float32 else 8 * 2 ** -8
    errors = errors_on_cuda(kernel_errors, dtype, pdl)
    assert all(e <= limit for e in errors.values()), errors


def test_backend_choice_and_refusals():
    r, x, w = torch.randn(2, 6), torch.randn(2, 4), torch.randn(6, 4)
    assert [b.name for b in backends("linear_residual")] == ["triton", "ref"]
    assert select("linear_residual", "cpu").name == "ref"
    torch.testing.assert_close(linear_residual(r, x, w), r + x @ w.T)
    with pytest.raises(ValueError, match="do not fit"):
        linear_residual_ref(r[:, :5], x, w)
    if HAS_TRITON:
        with pytest.raises(RuntimeError, match="has no backward"):
            linear_residual_triton(r, x, w.requires_grad_())
        with pytest.raises(ValueError, match="do not fit"):
            linear_residual_triton(r, x[:, :3], w)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot run on cpu"), force_backend("linear_residual", "triton"):
            linear_residual(r, x, w.detach())
