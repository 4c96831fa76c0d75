"""The SSD scan of Mamba-2 (Dao & Gu, "Transformers are SSMs", arXiv 2405.21060), and its discrete MOHAWK variant.

Per head h (B batch, L length, H heads, P head width, G groups of B/C, N state size), with state h_t (P, N):

    h_t = exp(Δ_t · A_t) · h_{t-1}  +  Δ_t · x_t ⊗ B_t          (x_t: P, B_t: N)
    y_t = h_t · C_t                                              (C_t: N)

Mamba-2: Δ_t > 0 per token and head, A < 0 per head (shape (H,)).
Discrete Mamba-2 (MOHAWK, arXiv 2408.10189): pass ``dt=None`` (Δ ≡ 1, no scaling of the input) and the per-token
log-decay as ``A`` (shape (B, L, H)): A_t = log a_t = -softplus(Λ_t). Both variants go through the same code: only
the log-decay log a_t = Δ_t·A_t and the input scale Δ_t differ.

Unrolled, y = M x with the semiseparable matrix M[l, s] = (C_l · B_s) · exp(Σ_{k=s+1..l} Δ_k A_k) · Δ_s (s ≤ l).
Heads share B and C in groups: head h reads group h // (H / G).

Backends (``workbench.ops.backend``, op name "ssd"):
  "triton"         mamba-ssm's fused kernel ``mamba_chunk_scan_combined`` (CUDA only, when mamba-ssm and triton
                   import; see ``_mamba_ssm`` for how it is imported without mamba-ssm's package ``__init__``).
  "torch-chunked"  ``ssd_scan_chunked``: the paper's chunked algorithm (its Listing 1) in plain PyTorch. Memory
                   O(L·Q) per head for chunk length Q, plus one (P, N) state per chunk; never an L×L matrix.
  "ref"            ``ssd_scan_ref``: the recurrence above, one token at a time. The reference for tests.
Every backend has the signature of ``ssd_scan``; ``chunk_size`` changes speed and memory, never the result.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.ops import _mamba_ssm
from workbench.ops.backend import Backend, register, select


def ssd_scan(x: Tensor, dt: Tensor | None, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
             initial_state: Tensor | None = None, return_final_state: bool = False):
    """y (B, L, H, P) [, final_state (B, H, P, N)] on the backend ``workbench.ops.backend`` selects for x's device.

    x (B, L, H, P); dt (B, L, H) or None (Δ ≡ 1); A (H,) or (B, L, H), ≤ 0; B, C (B, L, G, N) with G dividing H;
    initial_state (B, H, P, N) or None (zeros). y has x's dtype; the final state is float32 (float64 for float64 input).
    """
    return select("ssd", x.device).fn(x, dt, A, B, C, chunk_size, initial_state, return_final_state)


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


def segment_sum(log_a: Tensor) -> Tensor:
    """S[..., l, s] = Σ_{k=s+1..l} log_a[..., k] for s ≤ l, -inf above the diagonal: (..., T) -> (..., T, T).

    exp(S) holds the decay products ∏_{k=s+1..l} a_k (ones on the diagonal, zeros above). It is built as a masked
    cumulative sum, not as the difference of two cumulative sums, which loses precision once the sums grow.
    """
    T = log_a.shape[-1]
    strictly_below = torch.ones(T, T, dtype=torch.bool, device=log_a.device).tril(-1)
    terms = log_a[..., :, None].expand(*log_a.shape, T).masked_fill(~strictly_below, 0)  # [k, s] = log_a[k] if k > s
    sums = terms.cumsum(dim=-2)                                                          # [l, s] = Σ_{s<k≤l} log_a[k]
    return sums.masked_fill(~torch.ones_like(strictly_below).tril(), float("-inf"))


def _check(x: Tensor, dt: Tensor | None, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None) -> None:
    Bsz, L, H, P = x.shape
    G, N = B.shape[-2:]
    if dt is not None and dt.shape != (Bsz, L, H):
        raise ValueError(f"dt has shape {tuple(dt.shape)}, expected {(Bsz, L, H)}")
    if dt is None and A.shape != (Bsz, L, H):
        raise ValueError(f"with dt=None (discrete variant) A must be per token, {(Bsz, L, H)}; got {tuple(A.shape)}")
    if A.shape not in ((H,), (Bsz, L, H)):
        raise ValueError(f"A has shape {tuple(A.shape)}, expected {(H,)} or {(Bsz, L, H)}")
    if B.shape != (Bsz, L, G, N) or C.shape != B.shape:
        raise ValueError(f"B {tuple(B.shape)} and C {tuple(C.shape)} must both be {(Bsz, L, G, N)}")
    if H % G:
        raise ValueError(f"{H} heads cannot share {G} groups of B/C (H must be a multiple of G)")
    if initial_state is not None and initial_state.shape != (Bsz, H, P, N):
        raise ValueError(f"initial_state has shape {tuple(initial_state.shape)}, expected {(Bsz, H, P, N)}")


def _discretise(x: Tensor, dt: Tensor | None, A: Tensor) -> tuple[Tensor, Tensor]:
    """(Δ·x (B, L, H, P), log a = Δ·A (B, L, H)) in the compute dtype: float32, or float64 for float64 input."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, A = x.to(dtype), A.to(dtype)
    if dt is None:  # discrete variant: A already is log a_t, the input is not scaled
        return x, A
    dt = dt.to(dtype)
    return x * dt[..., None], dt * A


# ---------------------------------------------------------------------------------------------------------------------
# Reference: the recurrence, one token at a time


def ssd_scan_ref(x: Tensor, dt: Tensor | None, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
                 initial_state: Tensor | None = None, return_final_state: bool = False):
    """Sequential twin of ``ssd_scan`` (``chunk_size`` is ignored)."""
    _check(x, dt, A, B, C, initial_state)
    Bsz, L, H, P = x.shape
    G, N = B.shape[-2:]
    x_in, log_a = _discretise(x, dt, A)
    B_h = B.to(x_in.dtype).repeat_interleave(H // G, dim=2)  # (B, L, H, N): head h reads group h // (H/G)
    C_h = C.to(x_in.dtype).repeat_interleave(H // G, dim=2)
    log_a = log_a.expand(Bsz, L, H)

    h = x_in.new_zeros(Bsz, H, P, N) if initial_state is None else initial_state.to(x_in.dtype)
    ys = []
    for t in range(L):
        h = log_a[:, t, :, None, None].exp() * h + x_in[:, t, :, :, None] * B_h[:, t, :, None, :]  # (B, H, P, N)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C_h[:, t]))
    y = torch.stack(ys, dim=1).to(x.dtype) if L else x.new_zeros(x.shape)  # (B, L, H, P)
    return (y, h) if return_final_state else y


# ---------------------------------------------------------------------------------------------------------------------
# The chunked algorithm (arXiv 2405.21060, Section 6 and Listing 1)


def ssd_scan_chunked(x: Tensor, dt: Tensor | None, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
                     initial_state: Tensor | None = None, return_final_state: bool = False):
    """Chunked twin of ``ssd_scan`` in plain PyTorch.

    Split the sequence into c chunks of Q tokens. M's diagonal blocks (within a chunk) are computed as small masked
    attention-like products; its off-diagonal blocks are low rank and go through one (P, N) state per chunk.
    Heads are viewed as (G, R) with R = H / G so that B and C are never repeated per head.
    Letters in the einsum strings: b batch, c/z chunk, l/s position in a chunk (target/source), g group, r head within
    its group, p head width, n state.
    """
    _check(x, dt, A, B, C, initial_state)
    Bsz, L, H, P = x.shape
    G, N = B.shape[-2:]
    R, Q = H // G, chunk_size
    x_in, log_a = _discretise(x, dt, A)
    dtype = x_in.dtype
    log_a = log_a.expand(Bsz, L, H)

    # 0. Pad to whole chunks (padded steps have log a = 0 and no input, so they change neither y nor the state) and
    #    reshape: x (b, c, l, g, r, p), log a (b, g, r, c, l), B and C (b, c, l, g, n).
    pad = (-L) % Q
    n_chunks = (L + pad) // Q
    x_in = F.pad(x_in, (0, 0, 0, 0, 0, pad)).reshape(Bsz, n_chunks, Q, G, R, P)
    B = F.pad(B.to(dtype), (0, 0, 0, 0, 0, pad)).reshape(Bsz, n_chunks, Q, G, N)
    C = F.pad(C.to(dtype), (0, 0, 0, 0, 0, pad)).reshape(Bsz, n_chunks, Q, G, N)
    log_a = F.pad(log_a, (0, 0, 0, pad)).reshape(Bsz, n_chunks, Q, G, R).permute(0, 3, 4, 1, 2)
    log_a_cum = log_a.cumsum(dim=-1)  # (b, g, r, c, l): log of the decay from the chunk's start to position l

    # 1. Diagonal blocks: within each chunk, y_l = Σ_{s≤l} (C_l·B_s) · exp(Σ_{s<k≤l} log a_k) · x_s
    decay_within = segment_sum(log_a).exp()                                     # (b, g, r, c, l, s)
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B)                            # (b, g, c, l, s)
    y_diag = torch.einsum("bgcls,bgrcls,bcsgrp->bclgrp", scores, decay_within, x_in)

    # 2. Each chunk's own contribution to the state at its end (as if it started from zero)
    decay_to_end = (log_a_cum[..., -1:] - log_a_cum).exp()                       # (b, g, r, c, s)
    chunk_states = torch.einsum("bcsgn,bgrcs,bcsgrp->bcgrpn", B, decay_to_end, x_in)

    # 3. Pass states across chunks: the state entering chunk z is Σ_{c<z} (decay from c's end to z's start) · state_c,
    #    with the initial state as chunk -1. A (c+1)×(c+1) recurrence per head, tiny next to the rest.
    h0 = x_in.new_zeros(Bsz, H, P, N) if initial_state is None else initial_state.to(dtype)
    chunk_states = torch.cat([h0.reshape(Bsz, 1, G, R, P, N), chunk_states], dim=1)  # (b, 1+c, g, r, p, n)
    decay_across = segment_sum(F.pad(log_a_cum[..., -1], (1, 0))).exp()               # (b, g, r, 1+c, 1+c)
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_across, chunk_states)
    states_in, final_state = states[:, :-1], states[:, -1]

    # 4. Off-diagonal blocks: what the state entering each chunk contributes to each of its positions
    y_off = torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, states_in, log_a_cum.exp())

    y = (y_diag + y_off).reshape(Bsz, n_chunks * Q, H, P)[:, :L].to(x.dtype)
    return (y, final_state.reshape(Bsz, H, P, N)) if return_final_state else y


# ---------------------------------------------------------------------------------------------------------------------
# mamba-ssm's Triton kernel


TRITON_MODULE = "mamba_ssm.ops.triton.ssd_combined"


@functools.cache
def _triton_kernel():
    """mamba_ssm's ``mamba_chunk_scan_combined``, or None when mamba-ssm or triton is missing."""
    return _mamba_ssm.try_import(TRITON_MODULE, "mamba_chunk_scan_combined")


@torch.compiler.disable
def ssd_scan_triton(x: Tensor, dt: Tensor | None, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64,
                    initial_state: Tensor | None = None, return_final_state: bool = False):
    """``ssd_scan`` through mamba-ssm's fused Triton kernel (CUDA; chunk_size a power of two).

    The kernel takes a per-head A (H,) and always scales the input by its Δ. A per-token decay (the discrete variant)
    is passed as Δ' = -log a_t with A' = -1, and the input pre-divided by Δ' to undo the scaling it then applies
    (phi-mamba does the same); accuracy suffers only where a_t rounds to 1.
    """
    _check(x, dt, A, B, C, initial_state)
    kernel = _triton_kernel()
    if kernel is None:
        raise RuntimeError(f"the 'triton' SSD backend needs mamba-ssm and triton: "
                           f"{_mamba_ssm.IMPORT_ERRORS.get(TRITON_MODULE, 'not loaded')}")
    if A.dim() == 1 and dt is not None:
        out = kernel(x, dt, A.float(), B, C, chunk_size, initial_states=initial_state,
                     return_final_states=return_final_state)
    else:
        log_a = A.float() if dt is None else dt.float() * A.float()
        dt_kernel = -log_a                                                   # (B, L, H) ≥ 0
        scale = 1.0 if dt is None else dt.float()
        x_kernel = (x.float() * (scale / dt_kernel)[..., None]).to(x.dtype)
        A_kernel = -torch.ones(x.shape[2], device=x.device, dtype=torch.float32)
        out = kernel(x_kernel, dt_kernel, A_kernel, B, C, chunk_size, initial_states=initial_state,
                     return_final_states=return_final_state)
    return out


@torch.compiler.assume_constant_result
def _triton_available() -> bool:
    """Is the Triton kernel importable? A constant to torch.compile (the mixers pick their backend inside compiled
    code, and the compiler would otherwise trace the import behind the cache of ``_triton_kernel``)."""
    return _triton_kernel() is not None


register("ssd", Backend("triton", ssd_scan_triton,
                        available=lambda device: device.type == "cuda" and _triton_available(),
                        note="mamba-ssm mamba_chunk_scan_combined (Triton)"))
register("ssd", Backend("torch-chunked", ssd_scan_chunked, available=lambda device: True,
                        note="pure PyTorch, chunked (Listing 1 of arXiv 2405.21060)"))
register("ssd", Backend("ref", ssd_scan_ref, available=lambda device: True, note="sequential recurrence"))
