"""The first half of a gated MLP (Llama, Mistral, Qwen2, Gemma...: down(act(gate(x)) · up(x))), for decode steps:
h = act(x W_gᵀ) ⊙ (x W_uᵀ).

Shapes: M rows (the batch of a decode step), K model width, I the MLP's inner width; x (M, K), W_g and W_u (I, K) as
``nn.Linear`` stores them, h (M, I). ``act``: "silu" (SiLU, most families) or "gelu_tanh" (GELU's tanh approximation,
Gemma's ``gelu_pytorch_tanh``). With ``norm_weight`` (K,), x is first RMS-normalised as the layer's pre-MLP norm
does it (``workbench.ops.norm_linear.rms_norm_ref``, epsilon ``eps``): the norm folded into the op.

At batch 1 a decode step's GEMMs read their weights at a small fraction of the memory bandwidth (3.8 µs per call on an
H200 for the default teacher's 1.8 MB projections, docs/results.md), and the gated MLP makes three kernels of this
half: the gate's GEMM, the up projection's GEMM, and act·mul. Backends (``workbench.ops.backend``, op "gated_mlp"), in
this order of preference:
  "triton"  one Triton kernel (``gated_mlp_kernel``): each program reads a block of rows of both weights, keeps both
            products in float32 and writes act(gate)·up once, rounded to x's dtype. CUDA with Triton only; no
            backward (decoding runs without gradients). On an H200 it took two kernels per layer out of a decode step
            and made it 6-9% faster at batch 1 and 16 (docs/results.md, "The gated MLP kernel").
  "ref"     two ``F.linear`` calls and the activation in PyTorch, what the family's own MLP module computes; everywhere
            else, and forced with ``WORKBENCH_BACKEND_GATED_MLP=ref``.
The decode step reaches this op through ``workbench.generation.compile`` for the MLPs ``anatomy.gated_mlp`` finds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.ops.backend import Backend, register, select, triton_installed
from workbench.ops.norm_linear import rms_norm_ref

ACTIVATIONS = ("silu", "gelu_tanh")


def _check(x: Tensor, w_gate: Tensor, w_up: Tensor, act: str, norm_weight: Tensor | None) -> None:
    if norm_weight is not None and norm_weight.shape != x.shape[-1:]:
        raise ValueError(f"norm weight {tuple(norm_weight.shape)} does not fit x {tuple(x.shape)}: expected (K,)")
    if act not in ACTIVATIONS:
        raise ValueError(f"act={act!r}: the gated MLP op knows {ACTIVATIONS}")
    if w_gate.dim() != 2 or w_gate.shape != w_up.shape or x.shape[-1] != w_gate.shape[1]:
        raise ValueError(f"x {tuple(x.shape)}, gate {tuple(w_gate.shape)} and up {tuple(w_up.shape)} do not fit: "
                         f"expected (..., K), (I, K), (I, K)")


def gated_mlp_up(x: Tensor, w_gate: Tensor, w_up: Tensor, act: str, norm_weight: Tensor | None = None,
                 eps: float = 1e-6) -> Tensor:
    """act(x W_gᵀ) ⊙ (x W_uᵀ): x (..., K), weights (I, K) -> (..., I), on the backend selected for x's device; x
    RMS-normalised first where ``norm_weight`` (K,) is given."""
    return select("gated_mlp", x.device).fn(x, w_gate, w_up, act, norm_weight, eps)


def gated_mlp_up_ref(x: Tensor, w_gate: Tensor, w_up: Tensor, act: str, norm_weight: Tensor | None = None,
                     eps: float = 1e-6) -> Tensor:
    """``gated_mlp_up`` in PyTorch ops, as the norm module and the families' MLP modules compute it."""
    _check(x, w_gate, w_up, act, norm_weight)
    if norm_weight is not None:
        x = rms_norm_ref(x, norm_weight, eps)
    gate = F.linear(x, w_gate)
    gate = F.silu(gate) if act == "silu" else F.gelu(gate, approximate="tanh")
    return gate * F.linear(x, w_up)


@torch.library.custom_op("workbench::gated_mlp_up_kernel", mutates_args=())
def _kernel_op(x: Tensor, w_gate: Tensor, w_up: Tensor, act: str, norm_weight: Tensor | None, eps: float) -> Tensor:
    """The kernel's launch as one operator to torch.compile (an opaque call in a compiled decode step)."""
    from workbench.ops.gated_mlp_kernel import launch  # imports Triton

    out = x.new_empty(x.shape[0], w_gate.shape[0])
    launch(x, w_gate, w_up, out, act, norm_weight, eps)
    return out


@_kernel_op.register_fake
def _(x, w_gate, w_up, act, norm_weight, eps):
    return x.new_empty(x.shape[0], w_gate.shape[0])


def gated_mlp_up_triton(x: Tensor, w_gate: Tensor, w_up: Tensor, act: str, norm_weight: Tensor | None = None,
                        eps: float = 1e-6) -> Tensor:
    """``gated_mlp_up`` as one Triton kernel (module docstring)."""
    _check(x, w_gate, w_up, act, norm_weight)
    if not triton_installed():
        raise RuntimeError("gated_mlp_up_triton needs Triton (pip install triton); use gated_mlp_up_ref")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w_gate, w_up, norm_weight)):
        raise RuntimeError("gated_mlp_up_triton has no backward: run it under torch.no_grad() (as decoding does), "
                           "or use gated_mlp_up_ref where a gradient is needed")
    rows = x.reshape(-1, x.shape[-1])
    rows, w_gate, w_up = (t if t.stride(-1) == 1 else t.contiguous() for t in (rows, w_gate, w_up))
    norm_weight = None if norm_weight is None else norm_weight.contiguous()
    return _kernel_op(rows, w_gate, w_up, act, norm_weight, float(eps)).view(*x.shape[:-1], w_gate.shape[0])


register("gated_mlp", Backend("triton", gated_mlp_up_triton,
                              available=lambda device: device.type == "cuda" and triton_installed(),
                              note="one Triton kernel for both projections and act·mul (decoding, no gradient)"))
register("gated_mlp", Backend("ref", gated_mlp_up_ref, available=lambda device: True,
                              note="two linears and the activation in PyTorch, as the family's MLP"))
