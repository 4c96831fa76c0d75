"""A bias-free projection added to a residual stream in one GEMM, for decode steps: out = r + x Wᵀ.

Shapes: M rows (the batch of a decode step), K input width, N outputs; r (M, N), x (M, K), W (N, K) as ``nn.Linear``
stores it. A decoder layer ends each branch with such a projection and the residual add; as two kernels they are two
steps of a chain of small dependent kernels (docs/results.md, "Folded norms").

Backends (``workbench.ops.backend``, op "linear_residual"), in this order:
  "triton" one Triton kernel (``linear_residual_kernel``): each program reads a block of W's rows once, multiplies
           them with its rows of x in float32 and adds the residual in its epilogue, rounding as the layer does (the
           product, then the sum). CUDA with Triton only. In an H200's decode step it replaced 60 GEMVs and 60 adds
           with 60 kernels and took 8% off the replay (docs/results.md, "Residual adds in a GEMV's epilogue").
  "addmm"  ``torch.addmm(r, x, Wᵀ)`` as one opaque operator (``workbench::linear_residual``): the GEMM starts from r
           (cuBLAS with beta = 1 on CUDA). Opaque, because torch.compile's inductor may otherwise split an addmm of
           a few rows back into a product and an add, which measured the same kernel count as without the fold.
           Kept whole it measured that count too, and slower (an out-of-place addmm copies r into its output before
           the GEMM: docs/results.md, "Folded norms"). The default off CUDA.
  "ref"    ``r + F.linear(x, W)`` in PyTorch; forced with ``WORKBENCH_BACKEND_LINEAR_RESIDUAL=ref``.
Neither fast path has a backward (decoding runs without gradients); decoding leaves the fold off by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.ops.backend import Backend, register, select, triton_installed


def _check(residual: Tensor, x: Tensor, weight: Tensor) -> None:
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1] or residual.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(f"residual {tuple(residual.shape)}, x {tuple(x.shape)} and weight {tuple(weight.shape)} do "
                         f"not fit: expected (..., N), (..., K) and (N, K)")


def _refuse_gradient(name: str, *tensors: Tensor) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError(f"{name} has no backward: run it under torch.no_grad() (as decoding does), or use "
                           "linear_residual_ref where a gradient is needed")


def linear_residual(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """residual + x Wᵀ: residual (..., N), x (..., K), W (N, K) -> (..., N), on the backend selected for x's device."""
    return select("linear_residual", x.device).fn(residual, x, weight)


def linear_residual_ref(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``linear_residual`` as the layer computes it: the projection, then the add."""
    _check(residual, x, weight)
    return residual + F.linear(x, weight)


@torch.library.custom_op("workbench::linear_residual", mutates_args=())
def _addmm_op(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """One addmm on (rows, N) and (rows, K) views: an operator torch.compile keeps whole."""
    return torch.addmm(residual, x, weight.t())


@_addmm_op.register_fake
def _(residual, x, weight):
    return torch.empty_like(residual)


def linear_residual_addmm(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``linear_residual`` as one opaque addmm (module docstring)."""
    _check(residual, x, weight)
    _refuse_gradient("linear_residual_addmm", residual, x, weight)
    rows = _addmm_op(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), weight)
    return rows.view(residual.shape)


@torch.library.custom_op("workbench::linear_residual_kernel", mutates_args=())
def _kernel_op(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """The kernel's launch as one operator to torch.compile (an opaque call in a compiled decode step)."""
    from workbench.ops.linear_residual_kernel import launch  # imports Triton

    out = torch.empty_like(residual)
    launch(residual, x, weight, out)
    return out


@_kernel_op.register_fake
def _(residual, x, weight):
    return torch.empty_like(residual)


def linear_residual_triton(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``linear_residual`` as one Triton kernel (module docstring)."""
    _check(residual, x, weight)
    if not triton_installed():
        raise RuntimeError("linear_residual_triton needs Triton (pip install triton); use linear_residual_ref")
    _refuse_gradient("linear_residual_triton", residual, x, weight)
    rows, x_rows = residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1])
    rows, x_rows, weight = (t if t.stride(-1) == 1 else t.contiguous() for t in (rows, x_rows, weight))
    return _kernel_op(rows, x_rows, weight).view(residual.shape)


register("linear_residual", Backend("triton", linear_residual_triton,
                                    available=lambda device: device.type == "cuda" and triton_installed(),
                                    note="one Triton kernel, the residual added in its epilogue (decoding, no "
                                         "gradient)"))
register("linear_residual", Backend("addmm", linear_residual_addmm, available=lambda device: True,
                                    note="one addmm starting from the residual, opaque to torch.compile"))
register("linear_residual", Backend("ref", linear_residual_ref, available=lambda device: True,
                                    note="F.linear, then the add"))
