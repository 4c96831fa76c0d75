"""The first half of a gated MLP as one op (``workbench.ops.gated_mlp``): the reference against every family's own MLP
(where ``anatomy.gated_mlp`` finds one), the Triton kernel against the reference (in Triton's interpreter on the CPU,
compiled on CUDA with ``pytest -m gpu``), and its refusals."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.tiny_models import CONFIGS, tiny
from tests.helpers.triton_interpreter import (
    HAS_TRITON,
    errors_on_cuda,
    errors_within_in_interpreter,
    relative_error,
)
from workbench.generation.compile import GatedMLPStep
from workbench.ops.backend import backends, force_backend, select
from workbench.ops.gated_mlp import gated_mlp_up, gated_mlp_up_ref, gated_mlp_up_triton
from workbench.teachers import anatomy

GATED = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "olmo", "olmo2", "stablelm", "granite",
         "cohere"}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_the_gated_forward_is_the_familys_own_mlp(family):
    """Where the family's layout says its MLP is gated, the op's reference path computes exactly what the MLP module
    does (same ops), on every layer; elsewhere there is no gated MLP to fuse."""
    model = tiny(family)
    layers = anatomy.decoder_layers(model)
    found = [anatomy.gated_mlp(model, layer) for layer in layers]
    assert all(found) if family in GATED else not any(found)
    x = torch.randn(3, 5, model.config.hidden_size)
    for mlp in filter(None, found):
        with torch.no_grad():
            assert torch.equal(GatedMLPStep(mlp)(x), mlp.module(x))
    if family == "gemma":
        assert found[0].act == "gelu_tanh"
    if family == "llama":
        assert found[0].act == "silu"


def kernel_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """The kernel against the reference (computed in float32 from the same inputs) over odd sizes and both
    activations: per case, the largest error relative to the reference's largest magnitude."""
    errors = {}
    gen = torch.Generator().manual_seed(0)
    for M, K, I in ((1, 40, 50), (3, 64, 33), (17, 130, 70)):       # rows past one block, K past one block
        for act in ("silu", "gelu_tanh"):
            x, wg, wu = (torch.randn(*shape, generator=gen) for shape in ((M, K), (I, K), (I, K)))
            ref = gated_mlp_up_ref(x, wg, wu, act)
            with torch.no_grad():
                out = gated_mlp_up_triton(*(t.to(device=device, dtype=dtype) for t in (x, wg, wu)), act)
            errors[f"{M}x{K}x{I} {act}"] = relative_error(out, ref)
    compiled = torch.compile(gated_mlp_up_triton, fullgraph=True)      # one operator inside a compiled graph
    with torch.no_grad():
        out = compiled(*(t.to(device=device, dtype=dtype) for t in (x, wg, wu)), act)
    errors["compiled"] = relative_error(out, ref)
    return errors


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_kernel_matches_reference_in_the_interpreter():
    errors_within_in_interpreter("tests.ops.test_gated_mlp.kernel_errors")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "dependent-launch"])
def test_kernel_matches_reference_on_cuda(dtype, pdl):
    """float32: products in IEEE float32 (no TF32), so float32 rounding. bf16: the inputs are rounded to bf16 (relative
    2^-8 each, which the float32 reference here does not see), the products accumulate in float32 and the output is
    rounded once: within a few 2^-8 of the output's scale."""
    limit = 1e-5 if dtype == torch.float32 else 8 * 2 ** -8
    errors = errors_on_cuda(kernel_errors, dtype, pdl)
    assert all(e <= limit for e in errors.values()), errors


def test_backend_choice_and_refusals():
    x, w = torch.randn(2, 8), torch.randn(6, 8)
    assert [b.name for b in backends("gated_mlp")] == ["triton", "ref"]  # the kernel first: measured ahead on CUDA
    assert select("gated_mlp", "cpu").name == "ref"                      # and only there
    torch.testing.assert_close(gated_mlp_up(x, w, w, "silu"), torch.nn.functional.silu(x @ w.T) * (x @ w.T))
    with pytest.raises(ValueError, match="knows"):
        gated_mlp_up_ref(x, w, w, "relu")
    with pytest.raises(ValueError, match="do not fit"):
        gated_mlp_up_ref(x, w[:, :5], w, "silu")
    if HAS_TRITON:
        with pytest.raises(RuntimeError, match="has no backward"):
            gated_mlp_up_triton(x, w.requires_grad_(), w, "silu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot run on cpu"), force_backend("gated_mlp", "triton"):
            gated_mlp_up(x, w, w, "silu")
