"""A projection of RMS-normalised rows, for decode steps: y = (RMSNorm(x) ⊙ w) Wᵀ (+ b), the pre-norm of a decoder
layer folded into the first projection that reads it (a Mamba-2 mixer's in_proj).

Shapes: M rows (the batch of a decode step), K model width, N outputs; x (M, K), the norm's weight w (K,), W (N, K)
as ``nn.Linear`` stores it, b (N,), y (M, N). The norm is transformers' RMSNorm (Llama, Mistral, Qwen2/3, Phi-3):
x / sqrt(mean(x²) + eps) in float32, rounded to x's dtype, times w (``rms_norm_ref``).

At batch 1 a decode step is a chain of small dependent kernels (docs/results.md, "Kernels per decode step"): the norm
is one of them, and reads and writes one row. Backends (``workbench.ops.backend``, op "norm_linear"), in this order:
  "triton"  one Triton kernel (``norm_linear_kernel``): each program computes its rows' inverse RMS, then reads a
            block of W's rows once and multiplies them with the normalised rows in float32; one rounding at the end.
            CUDA with Triton only; no backward (decoding runs without gradients).
  "ref"     the norm and ``F.linear`` in PyTorch, what the norm module and the projection compute one after the
            other; everywhere else, and forced with ``WORKBENCH_BACKEND_NORM_LINEAR=ref``.
The decode step reaches this op through ``workbench.generation.compile`` for the layers ``anatomy.pre_norms`` finds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.ops.backend import Backend, register, select, triton_installed


def _check(x: Tensor, norm_weight: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    K = x.shape[-1]
    if norm_weight.shape != (K,) or weight.dim() != 2 or weight.shape[1] != K or (
            bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError(f"x {tuple(x.shape)}, norm weight {tuple(norm_weight.shape)}, weight {tuple(weight.shape)} "
                         f"and bias {None if bias is None else tuple(bias.shape)} do not fit: expected (..., K), "
                         f"(K,), (N, K) and (N,) or None")


def rms_norm_ref(x: Tensor, norm_weight: Tensor, eps: float) -> Tensor:
    """transformers' RMSNorm: x (..., K) normalised in float32, rounded to x's dtype, times the weight (K,)."""
    x32 = x.to(torch.float32)
    return norm_weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rms_norm_linear(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """(RMSNorm(x) ⊙ w) Wᵀ (+ b): x (..., K) -> (..., N), on the backend selected for x's device."""
    return select("norm_linear", x.device).fn(x, norm_weight, eps, weight, bias)


def rms_norm_linear_ref(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor,
                        bias: Tensor | None = None) -> Tensor:
    """``rms_norm_linear`` in PyTorch ops: the norm module's, then the projection's."""
    _check(x, norm_weight, weight, bias)
    return F.linear(rms_norm_ref(x, norm_weight, eps), weight, bias)


@torch.library.custom_op("workbench::norm_linear_kernel", mutates_args=())
def _kernel_op(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The kernel's launch as one operator to torch.compile (an opaque call in a compiled decode step)."""
    from workbench.ops.norm_linear_kernel import launch  # imports Triton

    out = x.new_empty(x.shape[0], weight.shape[0])
    launch(x, norm_weight, eps, weight, bias, out)
    return out


@_kernel_op.register_fake
def _(x, norm_weight, eps, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


def rms_norm_linear_triton(x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor,
                           bias: Tensor | None = None) -> Tensor:
    """``rms_norm_linear`` as one Triton kernel (module docstring)."""
    _check(x, norm_weight, weight, bias)
    if not triton_installed():
        raise RuntimeError("rms_norm_linear_triton needs Triton (pip install triton); use rms_norm_linear_ref")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, norm_weight, weight, bias)):
        raise RuntimeError("rms_norm_linear_triton has no backward: run it under torch.no_grad() (as decoding does), "
                           "or use rms_norm_linear_ref where a gradient is needed")
    rows = x.reshape(-1, x.shape[-1])
    rows, weight = (t if t.stride(-1) == 1 else t.contiguous() for t in (rows, weight))
    return _kernel_op(rows, norm_weight.contiguous(), float(eps), weight, bias).view(*x.shape[:-1], weight.shape[0])


register("norm_linear", Backend("triton", rms_norm_linear_triton,
                                available=lambda device: device.type == "cuda" and triton_installed(),
                                note="one Triton kernel for the RMSNorm and the projection (decoding, no gradient)"))
register("norm_linear", Backend("ref", rms_norm_linear_ref, available=lambda device: True,
                                note="the RMSNorm and F.linear in PyTorch, as the norm module and the projection"))
