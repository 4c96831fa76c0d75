"""The selective scan of Mamba-1 (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv 2312.00752, Algorithm 2).

Per channel e (B batch, L length, E channels, N state size, G groups of B/C), with a diagonal state h_t (N,):

    Δ_t        = softplus(delta_t + delta_bias)          (softplus and bias optional)
    h_t        = exp(Δ_t,e · A_e) ⊙ h_{t-1}  +  Δ_t,e · u_t,e · B_t        (A_e: N, ≤ 0; the "Ā, B̄" of the paper)
    y_t,e      = h_t · C_t  +  D_e · u_t,e
    out_t,e    = y_t,e · silu(z_t,e)                      (gate optional)

B and C are (B, L, N), shared by all channels as in Mamba-1, or (B, L, G, N): channel e reads group e // (E / G)
(the multi-head layout of Mamba in the Llama's Mamba-1 student).
Unlike SSD's scalar per-head decay, the decay here differs per (channel, state) pair, so the L×L form needs an
(N, L, L) tensor per channel; the fast paths keep the recurrence instead.

Backends (``workbench.ops.backend``, op name "selective_scan"):
  "cuda"           mamba-ssm's compiled ``selective_scan_cuda`` through its ``selective_scan_fn`` (only where that
                   extension was built; it has no initial-state input, so calls with one take the chunked path).
  "torch-chunked"  ``selective_scan_chunked``: chunks of Q tokens, one after the other; within a chunk a log-depth
                   (Hillis-Steele) scan over the Q positions. Working memory O(Q·E·N); under autograd each chunk is
                   recomputed in the backward pass (activation checkpointing) so training memory stays O(L·E + L/Q·E·N).
  "ref"            ``selective_scan_ref``: the recurrence above, one token at a time. The reference for tests.
All backends share the signature of ``selective_scan``; ``chunk_size`` changes speed and memory, never the result.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from workbench.ops import _mamba_ssm
from workbench.ops.backend import Backend, register, select


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   initial_state: Tensor | None = None, return_last_state: bool = False, chunk_size: int = 64):
    """out (B, L, E) [, last_state (B, E, N)] on the backend ``workbench.ops.backend`` selects for u's device.

    u, delta, z (B, L, E); A (E, N); B, C (B, L, N) or (B, L, G, N); D, delta_bias (E,); initial_state (B, E, N).
    out has u's dtype; the state is float32 (float64 for float64 input).
    """
    return select("selective_scan", u.device).fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                 initial_state, return_last_state, chunk_size)


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None) -> None:
    Bsz, L, E = u.shape
    N = A.shape[-1]
    if delta.shape != u.shape:
        raise ValueError(f"delta has shape {tuple(delta.shape)}, expected {tuple(u.shape)}")
    if A.shape != (E, N):
        raise ValueError(f"A has shape {tuple(A.shape)}, expected {(E, N)}")
    if B.shape != C.shape or B.shape[:2] != (Bsz, L) or B.shape[-1] != N or B.dim() not in (3, 4):
        raise ValueError(f"B {tuple(B.shape)} and C {tuple(C.shape)} must both be {(Bsz, L, N)} or {(Bsz, L, 'G', N)}")
    if B.dim() == 4 and E % B.shape[2]:
        raise ValueError(f"{E} channels cannot share {B.shape[2]} groups of B/C (E must be a multiple of G)")
    if initial_state is not None and initial_state.shape != (Bsz, E, N):
        raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}, expected {(Bsz, E, N)}")


def _prepare(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None,
             delta_softplus: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(u, Δ, A, B, C) in the compute dtype (float32, or float64 for float64 input), B and C as (B, L, G, N)."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B[:, :, None], C[:, :, None]
    return u.to(dtype), delta, A.to(dtype), B.to(dtype), C.to(dtype)


def _per_channel(t: Tensor, E: int) -> Tensor:
    """(..., G, N) -> (..., E, N): channel e reads group e // (E / G)."""
    return t.repeat_interleave(E // t.shape[-2], dim=-2)


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """y + D·u, times silu(z), in the output dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Reference: the recurrence, one token at a time


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       initial_state: Tensor | None = None, return_last_state: bool = False, chunk_size: int = 64):
    """Sequential twin of ``selective_scan`` (``chunk_size`` is ignored)."""
    _check(u, delta, A, B, C, initial_state)
    Bsz, L, E = u.shape
    u_, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    B, C = _per_channel(B, E), _per_channel(C, E)  # (B, L, E, N)

    h = u_.new_zeros(Bsz, E, A.shape[-1]) if initial_state is None else initial_state.to(u_.dtype)
    ys = []
    for t in range(L):
        h = (delta[:, t, :, None] * A).exp() * h + (delta[:, t] * u_[:, t])[..., None] * B[:, t]  # (B, E, N)
        ys.append((h * C[:, t]).sum(-1))                                                         # (B, E)
    y = torch.stack(ys, dim=1) if L else u_.new_zeros(u.shape)
    out = _finish(y, u_, D, z, u.dtype)
    return (out, h) if return_last_state else out


# ---------------------------------------------------------------------------------------------------------------------
# Chunked pure-PyTorch path


def _scan_chunk(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: u, delta (B, Q, E); B, C (B, Q, G, N); h0 (B, E, N) -> y (B, Q, E), state after the chunk.

    Inclusive scan of h_t = a_t ⊙ h_{t-1} + b_t in log2(Q) doubling steps (Hillis & Steele 1986): after the step
    with offset d, (a_t, b_t) describe the span of the last 2d positions ending at t. All factors a ≤ 1: stable.
    """
    E = u.shape[-1]
    a = (delta[..., None] * A).exp()                                    # (B, Q, E, N)
    b = (delta * u)[..., None] * _per_channel(B, E)                     # (B, Q, E, N)
    offset = 1
    while offset < u.shape[1]:
        b = torch.cat([b[:, :offset], a[:, offset:] * b[:, :-offset] + b[:, offset:]], dim=1)
        a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    h = b + a * h0[:, None]                                             # (B, Q, E, N): a is now ∏_{k≤t} a_k
    y = (h * _per_channel(C, E)).sum(-1)                                # (B, Q, E)
    return y, h[:, -1]


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                           z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           initial_state: Tensor | None = None, return_last_state: bool = False,
                           chunk_size: int = 64):
    """Chunked twin of ``selective_scan``: chunks in sequence, a parallel scan within each."""
    _check(u, delta, A, B, C, initial_state)
    Bsz, L, E = u.shape
    u_, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u_.new_zeros(Bsz, E, A.shape[-1]) if initial_state is None else initial_state.to(u_.dtype)
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (u_, delta, A, B, C, h))
    ys = []
    for start in range(0, L, chunk_size):
        part = slice(start, start + chunk_size)
        args = (u_[:, part], delta[:, part], A, B[:, part], C[:, part], h)
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if recompute else _scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else u_.new_zeros(u.shape)
    out = _finish(y, u_, D, z, u.dtype)
    return (out, h) if return_last_state else out


# ---------------------------------------------------------------------------------------------------------------------
# mamba-ssm's compiled CUDA kernel


CUDA_MODULE = "mamba_ssm.ops.selective_scan_interface"


@functools.cache
def _cuda_kernel():
    """mamba_ssm's ``selective_scan_fn``, or None unless mamba-ssm and its compiled ``selective_scan_cuda`` exist."""
    if importlib.util.find_spec("selective_scan_cuda") is None:  # the pure wheel lacks it; don't even try
        _mamba_ssm.IMPORT_ERRORS[CUDA_MODULE] = "mamba-ssm's compiled extension selective_scan_cuda is not installed"
        return None
    return _mamba_ssm.try_import(CUDA_MODULE, "selective_scan_fn")


def _channels_first(t: Tensor | None) -> Tensor | None:
    """(B, L, ...) -> (B, ..., L), contiguous, as mamba-ssm's kernel wants it."""
    return None if t is None else t.movedim(1, -1).contiguous()


@torch.compiler.disable
def selective_scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                        z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                        initial_state: Tensor | None = None, return_last_state: bool = False, chunk_size: int = 64):
    """``selective_scan`` through mamba-ssm's CUDA kernel, which works channels-first: (B, E, L), B/C (B, [G,] N, L).

    The kernel starts from a zero state and does not backpropagate into the returned last state; a call with an
    initial state takes the chunked path instead.
    """
    if initial_state is not None:
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                      return_last_state, chunk_size)
    _check(u, delta, A, B, C, initial_state)
    kernel = _cuda_kernel()
    if kernel is None:
        raise RuntimeError(f"the 'cuda' selective-scan backend needs mamba-ssm built with selective_scan_cuda: "
                           f"{_mamba_ssm.IMPORT_ERRORS.get(CUDA_MODULE, 'not loaded')}")
    out = kernel(_channels_first(u), _channels_first(delta), A.float(), _channels_first(B), _channels_first(C),
                 None if D is None else D.float(), _channels_first(z),
                 None if delta_bias is None else delta_bias.float(), delta_softplus, return_last_state)
    if return_last_state:
        return out[0].transpose(1, 2), out[1]
    return out.transpose(1, 2)


@torch.compiler.assume_constant_result
def _cuda_available() -> bool:
    """Is the CUDA kernel importable? A constant to torch.compile (as ``ssd._triton_available``)."""
    return _cuda_kernel() is not None


register("selective_scan", Backend("cuda", selective_scan_cuda,
                                   available=lambda device: device.type == "cuda" and _cuda_available(),
                                   note="mamba-ssm selective_scan_cuda (compiled extension)"))
register("selective_scan", Backend("torch-chunked", selective_scan_chunked, available=lambda device: True,
                                   note="pure PyTorch, chunks with a log-depth scan inside"))
register("selective_scan", Backend("ref", selective_scan_ref, available=lambda device: True,
                                   note="sequential recurrence"))
