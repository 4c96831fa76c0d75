"""Hankel analysis of long-convolution filters: how many states a filter really needs, and the best error any
state-space model of a given size can reach (Laughing Hyena Distillery, Massaroli et al., arXiv 2310.18780, §3).

Shapes: C channels (filters), L taps, m = L // 2 Hankel size. Everything is batched over channels in torch, on the
filters' device (or ``device=``).

A filter h (L taps) is the impulse response of a discrete-time linear system: h_0 is the feed-through (lag 0) and
h_1, h_2, ... are the Markov parameters C A^{t-1} B. Its Hankel matrix

    H[i, j] = h_{i + j + 1}            i, j = 0 .. m - 1,   m = L // 2   (uses h_1 .. h_{2m-1}, never h_0)

maps past inputs to future outputs. Facts used by the distillery:

  1. rank H = the McMillan degree r: the smallest number of REAL states that reproduce h_1.. exactly. A sum of k
     real damped modes has rank k; a real filter  Re Σ_{n≤d} R_n λ_n^{t-1}  with non-real poles has rank 2d
     (every complex mode is a conjugate pair of real states).
  2. The singular values σ_1 ≥ σ_2 ≥ ... of H (the Hankel singular values) bound what a smaller model can do
     (Adamjan-Arov-Krein): any system of real degree k has Hankel-norm error ≥ σ_{k+1}, and its H-infinity error
     sup_ω |H(e^{iω}) - Ĥ(e^{iω})| ≥ σ_{k+1} as well. Balanced truncation gets within 2 Σ_{i>k} σ_i.
  3. The modal SSMs of ``workbench.laughing.modal`` use d complex modes read through Re(), i.e. real degree ≤ 2d.
     So the error floor of an order-d modal SSM is σ_{2d+1}, and the smallest modal order that can reach a
     tolerance is ceil(r / 2) (exactly achievable when the poles come in conjugate pairs; real poles cost one mode
     each, so ceil(r / 2) is a lower bound in general).

With the finite (truncated) Hankel matrix these statements hold for the length-L filter up to the truncation of the
tail; for the filters of trained Hyenas (decaying windows) the truncation is negligible.

  4. Capped floors (``capped_floors``, used by the error table). The m x m Hankel matrix H_m is the leading block of
     the full one H (size M = L // 2), and deleting rows and columns can only lower singular values (interlacing:
     σ_k(H_m) ≤ σ_k(H) for every k). So σ_{2d+1}(H_m) is a weaker but still valid floor, at O(C m³) instead of
     O(C M³) (576 channels of 2048 taps: 576 eigvalsh of 256 x 256 instead of 1024 x 1024, ~60x less work). For the
     RELATIVE floor the denominator must not shrink, so it uses an upper bound of σ_1(H) instead of σ_1(H):
     σ_1(H) ≤ σ_1(H_m) + ‖H - H_m‖_F (triangle inequality, H_m zero-padded to M x M), and ‖H - H_m‖_F² =
     ‖H‖_F² - ‖H_m‖_F² takes O(L) from the squared taps. Hence σ_{2d+1}(H_m) / (σ_1(H_m) + ‖H - H_m‖_F) ≤
     σ_{2d+1}(H) / σ_1(H), with equality when m = M; for decaying filters the two are close.
"""

from __future__ import annotations

import math

import torch

from workbench.laughing.pool import chunk_slices, map_chunks

HSV_CHUNK = 64    # channels per batched eigvalsh (memory chunk * m² float64)
FLOOR_SIZE = 256  # Hankel size of the error table's floors (``capped_floors``)


def as_filters(h, device: torch.device | str | None = None) -> torch.Tensor:
    """A filter (L,) or filters (C, L) as a float64 tensor (C, L) on ``device`` (default: h's own; the CPU for
    arrays and lists)."""
    h = torch.as_tensor(h).detach()
    h = h.to(h.device if device is None else device, torch.float64)
    if h.dim() == 1:
        h = h[None]
    if h.dim() != 2:
        raise ValueError(f"filters must have shape (L,) or (C, L), got {tuple(h.shape)}")
    return h


def hankel_matrix(h, size: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Hankel matrices H[c, i, j] = h[c, i + j + 1]: (C, m, m) float64 on ``device`` (default h's), m = ``size`` or
    L // 2."""
    h = as_filters(h, device)                                           # (C, L)
    L = h.shape[1]
    m = L // 2 if size is None else size
    if m < 1 or 2 * m > L:
        raise ValueError(f"a Hankel matrix of size {m} needs at least {2 * m} taps; the filters have {L}")
    idx = torch.arange(m, device=h.device)
    return h[:, 1 + idx[:, None] + idx[None, :]]                         # (C, m, m)


def hankel_singular_values(h, size: int | None = None, device: torch.device | str | None = None,
                           chunk: int = HSV_CHUNK, workers: int | None = None) -> torch.Tensor:
    """Singular values of each filter's Hankel matrix, largest first: h (L,) or (C, L) -> (C, m) float64 on h's
    device, m = ``size`` or L // 2. Computed on ``device`` (default h's), ``chunk`` channels per batched call; the
    Hankel matrix is symmetric, so they are the |eigenvalues| of one batched ``eigvalsh`` (cheaper than svdvals).
    On the CPU the chunks run on a pool of ``workers`` threads (``workbench.laughing.pool``; default
    ``pool.default_workers()``: torch's thread count, at most the CPUs this process may use). Feed them to
    ``workbench.viz.spectra.hankel_figure``."""
    h = torch.as_tensor(h)
    home = h.device
    h = as_filters(h, device)

    def part(s: slice) -> torch.Tensor:
        return torch.linalg.eigvalsh(hankel_matrix(h[s], size)).abs().sort(-1, descending=True).values

    if h.device.type == "cpu":
        parts = map_chunks(part, h.shape[0], chunk, workers)
    else:
        parts = [part(s) for s in chunk_slices(h.shape[0], chunk)]
    return torch.cat(parts).to(home)                                    # (C, m)


def hankel_frobenius_sq(h, size: int) -> torch.Tensor:
    """‖H_m‖_F² = Σ_{i,j<m} h_{i+j+1}² of the size-m Hankel matrices, from the taps in O(L): h (C, L) float64 ->
    (C,) (tap h_{s+1} appears min(s, 2m-2-s) + 1 times)."""
    s = torch.arange(2 * size - 1, device=h.device)
    weight = (torch.minimum(s, 2 * size - 2 - s) + 1).to(h.dtype)     # (2m - 1,)
    return (h[:, 1:2 * size].pow(2) * weight).sum(-1)


def capped_floors(h, orders, size: int | None = FLOOR_SIZE,
                  workers: int | None = None) -> tuple[torch.Tensor, int]:
    """Relative Hankel floors of order-d modal SSMs from the leading m x m Hankel block (point 4 of the module
    docstring): h (L,) or (C, L), ``orders`` (k,) -> (floors (C, k) float64 on the CPU, m), m = min(``size``, L // 2)
    (``size`` None: L // 2, the full floor). floors[c, i] = σ_{2d+1}(H_m) / (σ_1(H_m) + ‖H - H_m‖_F) with d =
    orders[i] (0 when 2d ≥ m), never above the full floor σ_{2d+1}(H) / σ_1(H)."""
    h = as_filters(h, "cpu")                                            # (C, L)
    full = h.shape[1] // 2
    m = full if size is None else max(1, min(int(size), full))
    s = hankel_singular_values(h, m, workers=workers)                   # (C, m)
    rest = (hankel_frobenius_sq(h, full) - hankel_frobenius_sq(h, m)).clamp_min(0).sqrt() if m < full else 0.0
    top = (s[:, 0] + rest).clamp_min(math.ulp(1.0))                     # ≥ σ_1(H)
    zero = torch.zeros_like(top)
    floors = [s[:, 2 * d] / top if 2 * d < m else zero for d in (int(d) for d in orders)]
    return torch.stack(floors, -1), m


def hankel_rank(h, rtol: float = 1e-3, size: int | None = None) -> torch.Tensor:
    """Numerical McMillan degree r per channel: the number of Hankel singular values above rtol * σ_1: (C,) long."""
    s = hankel_singular_values(h, size)                                 # (C, m)
    return (s > rtol * s[:, :1]).sum(-1)


def minimal_order(h, rtol: float = 1e-3, size: int | None = None) -> torch.Tensor:
    """Smallest modal order d (complex modes read through Re) that can capture each channel down to rtol * σ_1:
    ceil(r / 2) with r = ``hankel_rank`` (see point 3 of the module docstring): (C,) long."""
    return (hankel_rank(h, rtol, size) + 1) // 2


def error_floor(h, order: int, size: int | None = None) -> torch.Tensor:
    """σ_{2d+1} per channel for an order-d modal SSM (real degree 2d): the AAK lower bound on its H-infinity (and
    Hankel-norm) error, (C,) float64; 0 when the Hankel matrix has no (2d+1)-th singular value."""
    s = hankel_singular_values(h, size)                                 # (C, m)
    k = 2 * order
    if k >= s.shape[1]:
        return torch.zeros(s.shape[0], dtype=torch.float64)
    return s[:, k]


def relative_floor(h, order: int, size: int | None = None) -> torch.Tensor:
    """σ_{2d+1} / σ_1 per channel (C,): the floor relative to the filter's own Hankel norm (0 for a zero filter)."""
    s = hankel_singular_values(h, size)
    k = 2 * order
    top = s[:, 0].clamp_min(math.ulp(1.0))
    return torch.zeros_like(top) if k >= s.shape[1] else s[:, k] / top
