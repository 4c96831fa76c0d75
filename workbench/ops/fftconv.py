"""Causal long convolution, the token mixer inside Hyena (Hyena Hierarchy, arXiv 2302.10866).

    y[b, l, c] = sum_{s <= l} h[c, l - s] * u[b, s, c]  +  D[c] * u[b, l, c]

Shapes: B batch, L length, C channels; the filter h is (C, L_h). Taps beyond L are never used (an output at l only
sees lags up to l), and a filter shorter than the input (L_h < L) counts as zero past its end.

Two backends with the same signature, chosen by ``workbench.ops.backend``:
  "torch-fft"  O(L log L): zero-pad u and h to 2L so the circular FFT convolution equals the linear (causal) one,
               multiply the spectra, transform back and keep the first L outputs. Computed in float32 at least (float64
               stays float64), cast back to u's dtype.
  "ref"        O(L^2) direct sum (a depthwise conv1d with the flipped filter), no FFT: the reference for tests.
``causal_toeplitz(h, L)`` materialises the (C, L, L) matrix both compute; mixers use it to build mixing matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.ops import backend


def _check(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor | None) -> None:
    if u.dim() != 3 or h.dim() != 2 or h.shape[0] != u.shape[2]:
        raise ValueError(f"fftconv expects u (B, L, C) and h (C, L_h); got u {tuple(u.shape)}, h {tuple(h.shape)}")
    if D is not None and tuple(D.shape) != (u.shape[2],):
        raise ValueError(f"fftconv skip D must have shape ({u.shape[2]},), got {tuple(D.shape)}")


def _filter_taps(h: torch.Tensor, L: int) -> torch.Tensor:
    """The first L taps of h (C, L_h), zero-padded when the filter is shorter: (C, L)."""
    return h[:, :L] if h.shape[1] >= L else F.pad(h, (0, L - h.shape[1]))


def fftconv_torch(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Causal long convolution by FFT: u (B, L, C), h (C, L_h), D (C,) or None -> (B, L, C)."""
    _check(u, h, D)
    L = u.shape[1]
    n = 2 * L  # FFT size: no wrap-around of lags 0..L-1 into the first L outputs
    compute = torch.promote_types(torch.promote_types(u.dtype, h.dtype), torch.float32)
    u_f = torch.fft.rfft(u.to(compute), n=n, dim=1)                        # (B, n/2+1, C) complex
    h_f = torch.fft.rfft(_filter_taps(h, L).to(compute).t(), n=n, dim=0)  # (n/2+1, C) complex
    y = torch.fft.irfft(u_f * h_f, n=n, dim=1)[:, :L]                      # (B, L, C)
    if D is not None:
        y = y + u.to(compute) * D.to(compute)
    return y.to(u.dtype)


def fftconv_ref(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """The same convolution summed directly, O(L^2) per channel: u (B, L, C), h (C, L_h), D (C,) or None -> (B, L, C).

    conv1d computes out[l] = sum_k w[k] * u_padded[l + k]; with L-1 zeros on the left and w[k] = h[L-1-k] (the filter
    flipped) this is sum_s h[l - s] * u[s] over s <= l.
    """
    _check(u, h, D)
    L, C = u.shape[1], u.shape[2]
    compute = torch.promote_types(torch.promote_types(u.dtype, h.dtype), torch.float32)
    weight = _filter_taps(h, L).to(compute).flip(-1).unsqueeze(1)    # (C, 1, L)
    x = F.pad(u.to(compute).transpose(1, 2), (L - 1, 0))              # (B, C, 2L-1)
    y = F.conv1d(x, weight, groups=C).transpose(1, 2)                 # (B, L, C)
    if D is not None:
        y = y + u.to(compute) * D.to(compute)
    return y.to(u.dtype)


def causal_toeplitz(h: torch.Tensor, L: int) -> torch.Tensor:
    """The lower-triangular Toeplitz matrices of the filters: h (C, L_h) -> T (C, L, L), T[c, l, s] = h[c, l - s] for
    s <= l, else 0. ``fftconv(u, h)[b, :, c] == T[c] @ u[b, :, c]``."""
    taps = _filter_taps(h, L)                                          # (C, L)
    idx = torch.arange(L, device=h.device)
    lag = idx[:, None] - idx[None, :]                                  # (L, L), l - s
    T = taps[:, lag.clamp(min=0)]                                      # (C, L, L)
    return T * (lag >= 0).to(T.dtype)


def fftconv(u: torch.Tensor, h: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """Causal long convolution u (B, L, C) * h (C, L_h) (+ D (C,) * u) -> (B, L, C), on the backend chosen for
    u's device (see ``workbench.ops.backend``; force one with ``force_backend("fftconv", "ref")``)."""
    return backend.select("fftconv", u.device).fn(u, h, D)


backend.register("fftconv", backend.Backend(
    "torch-fft", fftconv_torch, lambda device: True, "torch.fft, padded to 2L, float32 inside"))
backend.register("fftconv", backend.Backend(
    "ref", fftconv_ref, lambda device: True, "direct O(L^2) sum, for tests"))
