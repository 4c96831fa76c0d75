"""A bias-free projection added to a residual stream in one GEMM, for decode steps: out = r + x Wᵀ.

Shapes: M rows (the batch of a decode step), K input width, N outputs; r (M, N), x (M, K), W (N, K) as ``nn.Linear``
stores it. A decoder layer ends each branch with such a projection and the residual add; as two kernels they are two
steps of a chain of small dependent kernels (docs/results.md, "Folded norms").

Backends (``workbench.ops.backend``, op "linear_residual"), in this order:
  "triton" one Triton kernel (``linear_residual_kernel``): each program reads a block of W's rows once, multiplies
           them with its rows of x in float32 and adds the residual in its epilogue, rounding as the layer does (the
           product, then the sum). CUDA with Triton only. In an H200's decode step it replaced 60 GEMVs and 60 adds
           with 60 kernels and took 8% off the replay (docs/results.md, "Residual adds in a GEMV's epilogue").
  "ref"    ``r + F.linear(x, W)`` in PyTorch; everywhere else, and forced with
           ``WORKBENCH_BACKEND_LINEAR_RESIDUAL=ref``.
An earlier "addmm" backend (``torch.addmm`` from r, as an opaque operator) kept the step's kernel count and was
slower on an H200 (an out-of-place addmm copies r into its output first: docs/results.md, "Folded norms" and
"Residual adds in a GEMV's epilogue"), so it is gone. The kernel has no backward (decoding runs without gradients);
decoding leaves the fold off by default.
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


def linear_residual(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """residual + x Wᵀ: residual (..., N), x (..., K), W (N, K) -> (..., N), on the backend selected for x's device."""
    return select("linear_residual", x.device).fn(residual, x, weight)


def linear_residual_ref(residual: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """``linear_residual`` as the layer computes it: the projection, then the add."""
    _check(residual, x, weight)
    return residual + F.linear(x, weight)


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
    if torch.is_grad_enabled() and any(t.requires_grad for t in (residual, x, weight)):
        raise RuntimeError("linear_residual_triton has no backward: run it under torch.no_grad() (as decoding does), "
                           "or use linear_residual_ref where a gradient is needed")
    rows, x_rows = residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1])
    rows, x_rows, weight = (t if t.stride(-1) == 1 else t.contiguous() for t in (rows, x_rows, weight))
    return _kernel_op(rows, x_rows, weight).view(residual.shape)


register("linear_residual", Backend("triton", linear_residual_triton,
                                    available=lambda device: device.type == "cuda" and triton_installed(),
                                    note="one Triton kernel, the residual added in its epilogue (decoding, no "
                                         "gradient)"))
register("linear_residual", Backend("ref", linear_residual_ref, available=lambda device: True,
                                    note="F.linear, then the add"))
