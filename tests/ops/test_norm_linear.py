"""A decoder layer's RMS pre-norm folded into the projection that reads it (``workbench.ops.norm_linear``, and the
gated MLP op's ``norm_weight``): the references against transformers' own norm modules and ``nn.Linear``, the Triton
kernels against the references (in Triton's interpreter on the CPU, compiled on CUDA with ``pytest -m gpu``), and
the refusals."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from tests.helpers.triton_interpreter import (
    HAS_TRITON,
    errors_on_cuda,
    errors_within_in_interpreter,
    relative_error,
)
from workbench.ops.backend import backends, force_backend, select
from workbench.ops.gated_mlp import gated_mlp_up_ref, gated_mlp_up_triton
from workbench.ops.norm_linear import (
    rms_norm_linear,
    rms_norm_linear_ref,
    rms_norm_linear_triton,
    rms_norm_ref,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_is_the_norm_module_then_the_projection(dtype):
    """Bit for bit what transformers' RMSNorm and then nn.Linear compute, in float32 and in bf16 (where the norm's
    two roundings, before and after its weight, are where they are in the module)."""
    gen = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(40, eps=1e-5).to(dtype)
    linear = torch.nn.Linear(40, 24, bias=True).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(40, generator=gen))
        x = torch.randn(3, 5, 40, generator=gen).to(dtype)
        assert torch.equal(rms_norm_ref(x, norm.weight, 1e-5), norm(x))
        assert torch.equal(rms_norm_linear_ref(x, norm.weight, 1e-5, linear.weight, linear.bias), linear(norm(x)))
        gate, up = torch.randn(2, 16, 40, generator=gen).to(dtype)
        folded = gated_mlp_up_ref(x, gate, up, "silu", norm.weight, 1e-5)
        assert torch.equal(folded, gated_mlp_up_ref(norm(x), gate, up, "silu"))


def kernel_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """Both kernels with a norm against their references (computed in float32 from the same inputs) over odd sizes:
    per case, the largest error relative to the reference's largest magnitude."""
    errors = {}
    gen = torch.Generator().manual_seed(0)
    for M, K, N in ((1, 40, 50), (3, 64, 33), (17, 130, 70)):       # rows past one block, K past one block
        x, w_norm, W, b, wg, wu = (torch.randn(*shape, generator=gen)
                                   for shape in ((M, K), (K,), (N, K), (N,), (N, K), (N, K)))
        on = [t.to(device=device, dtype=dtype) for t in (x, w_norm, W, b, wg, wu)]
        with torch.no_grad():
            for name, bias in (("no bias", None), ("bias", b)):
                ref = rms_norm_linear_ref(x, w_norm, 1e-5, W, bias)
                out = rms_norm_linear_triton(on[0], on[1], 1e-5, on[2], None if bias is None else on[3])
                errors[f"norm_linear {M}x{K}x{N} {name}"] = relative_error(out, ref)
            ref = gated_mlp_up_ref(x, wg, wu, "silu", w_norm, 1e-5)
            out = gated_mlp_up_triton(on[0], on[4], on[5], "silu", on[1], 1e-5)
            errors[f"gated {M}x{K}x{N}"] = relative_error(out, ref)
    compiled = torch.compile(rms_norm_linear_triton, fullgraph=True)      # one operator inside a compiled graph
    with torch.no_grad():
        out = compiled(on[0], on[1], 1e-5, on[2], on[3])
    ref = rms_norm_linear_ref(x, w_norm, 1e-5, W, b)
    errors["compiled"] = relative_error(out, ref)
    return errors


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_kernels_match_references_in_the_interpreter():
    errors_within_in_interpreter("tests.ops.test_norm_linear.kernel_errors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "dependent-launch"])
def test_kernels_match_references_on_cuda(dtype, pdl):
    """float32: products in IEEE float32 (no TF32), so float32 rounding. bf16: the inputs are rounded to bf16, and so
    are the normalised rows twice (before and after the norm's weight, as the module does): relative 2^-8 each, which
    the float32 reference does not see; the products accumulate in float32 and the output is rounded once: within a
    few 2^-8 of the output's scale."""
    limit = 1e-5 if dtype == torch.float32 else 8 * 2 ** -8
    errors = errors_on_cuda(kernel_errors, dtype, pdl)
    assert all(e <= limit for e in errors.values()), errors


def test_backend_choice_and_refusals():
    x, w_norm, W = torch.randn(2, 8), torch.randn(8), torch.randn(6, 8)
    assert [b.name for b in backends("norm_linear")] == ["triton", "ref"]
    assert select("norm_linear", "cpu").name == "ref"
    torch.testing.assert_close(rms_norm_linear(x, w_norm, 1e-6, W), rms_norm_ref(x, w_norm, 1e-6) @ W.T)
    with pytest.raises(ValueError, match="do not fit"):
        rms_norm_linear_ref(x, w_norm[:5], 1e-6, W)
    with pytest.raises(ValueError, match="do not fit"):
        rms_norm_linear_ref(x, w_norm, 1e-6, W, torch.zeros(5))
    with pytest.raises(ValueError, match="does not fit"):
        gated_mlp_up_ref(x, W, W, "silu", w_norm[:5])
    if HAS_TRITON:
        with pytest.raises(RuntimeError, match="has no backward"):
            rms_norm_linear_triton(x, w_norm, 1e-6, W.requires_grad_())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot run on cpu"), force_backend("norm_linear", "triton"):
            rms_norm_linear(x, w_norm, 1e-6, W)
