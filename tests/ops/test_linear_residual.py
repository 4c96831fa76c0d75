"""A projection added to the residual in one GEMM (``workbench.ops.linear_residual``): the opaque addmm against the
reference (the layer's projection, then its add) on odd shapes, eager and inside a compiled function, where it must
stay one operator; and its refusals."""

from __future__ import annotations

import pytest
import torch

from workbench.ops.backend import backends, select
from workbench.ops.linear_residual import linear_residual, linear_residual_addmm, linear_residual_ref


@pytest.mark.parametrize("shape", [(1, 7, 5), (3, 1, 33, 20), (17, 130, 70)])
def test_addmm_matches_reference(shape):
    """The same products and one add, in another order (addmm adds inside the GEMM): float32 rounding."""
    *lead, K, N = shape
    gen = torch.Generator().manual_seed(0)
    r, x, w = (torch.randn(*dims, generator=gen) for dims in ((*lead, N), (*lead, K), (N, K)))
    ref = linear_residual_ref(r, x, w)
    with torch.no_grad():
        out = linear_residual_addmm(r, x, w)
        compiled = torch.compile(linear_residual_addmm, fullgraph=True)(r, x, w)
    for got in (out, compiled):
        assert got.shape == r.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_it_stays_one_operator_when_compiled():
    """In a compiled graph the op is one call of ``workbench::linear_residual`` (no separate product and add)."""
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    r, x, w = torch.randn(1, 6), torch.randn(1, 4), torch.randn(6, 4)
    with torch.no_grad():
        torch.compile(linear_residual_addmm, backend=backend, fullgraph=True)(r, x, w)
    assert [t for t in seen if "linear_residual" in t] and not [t for t in seen if "addmm" in t]


def test_backend_choice_and_refusals():
    r, x, w = torch.randn(2, 6), torch.randn(2, 4), torch.randn(6, 4)
    assert [b.name for b in backends("linear_residual")] == ["addmm", "ref"]
    assert select("linear_residual", "cpu").name == "addmm"
    torch.testing.assert_close(linear_residual(r, x, w), r + x @ w.T)
    with pytest.raises(ValueError, match="do not fit"):
        linear_residual_ref(r[:, :5], x, w)
    with pytest.raises(ValueError, match="do not fit"):
        linear_residual_addmm(r, x[:, :3], w)
    with pytest.raises(RuntimeError, match="has no backward"):
        linear_residual_addmm(r, x, w.requires_grad_())
