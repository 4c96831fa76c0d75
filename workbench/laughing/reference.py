"""Per-channel reference fits in numpy / scipy (float64, CPU, one filter at a time): the textbook form of the
"balanced" (exact FIR balanced truncation and Kung's Hankel realisation) and "prony" methods and of the Hankel
singular values of ``workbench.laughing.fit`` / ``workbench.laughing.hankel``, which batch the same steps over
channels in torch. The tests hold the batched fits to these; they are slow (a Python loop over channels) and not
used by the distillery itself.

    reference_singular_values(h)                (C, m) numpy
    reference_fit(h, order, method)             ModalSSM (complex128, CPU, with ``errors``)

Conventions, steps and constants are those of ``workbench.laughing.fit`` (B1-B5, P1-P4, "real-system modes").
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from workbench.laughing import fit
from workbench.laughing.hankel import as_filters
from workbench.laughing.modal import ModalSSM


def _hankel(taps: np.ndarray, m: int) -> np.ndarray:
    return scipy.linalg.hankel(taps[:m], taps[m - 1:2 * m - 1])              # H[i, j] = h_{i+j+1}


def reference_singular_values(h, size: int | None = None) -> np.ndarray:
    """Singular values of each channel's Hankel matrix (``hankel.hankel_singular_values``), by np.linalg.svd."""
    h = as_filters(h, "cpu").numpy()
    m = h.shape[1] // 2 if size is None else size
    return np.stack([np.linalg.svd(_hankel(row[1:], m), compute_uv=False) for row in h])


def _residues(taps: np.ndarray, poles: np.ndarray) -> np.ndarray:
    """Least-squares residues (``fit.solve_residues``) for one channel, by scipy's gelsd."""
    d = len(poles)
    t = np.arange(len(taps))
    with np.errstate(divide="ignore", invalid="ignore"):
        V = np.where(poles[:, None] == 0, (t[None] == 0).astype(float), poles[:, None] ** t[None])   # (d, n)
    design = np.concatenate([V.real, -V.imag]).T                              # (n, 2d)
    norms = np.linalg.norm(design, axis=0)
    keep = norms > 1e-10 * norms.max(initial=0.0)
    coef = np.zeros(2 * d)
    if keep.any():
        sol = scipy.linalg.lstsq(design[:, keep] / norms[keep], taps, lapack_driver="gelsd")[0]
        coef[keep] = sol / norms[keep]
    return coef[:d] + 1j * coef[d:]


def _to_modes(taps: np.ndarray, poles: np.ndarray, coeffs: np.ndarray | None, order: int,
              max_radius: float, refit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``fit.to_modes`` for one channel."""
    tol = 1e-12 * np.maximum(np.abs(poles), 1.0)
    upper, real = poles.imag > tol, np.abs(poles.imag) <= tol
    keep_p = np.concatenate([poles[upper], poles[real].real + 0j])
    keep_r = (np.concatenate([2 * coeffs[upper], coeffs[real].real + 0j]) if coeffs is not None
              else np.zeros_like(keep_p))
    radius = np.abs(keep_p)
    pulled = np.where(radius > max_radius, keep_p * (max_radius / np.maximum(radius, 1e-300)), keep_p)
    refit = refit or coeffs is None or bool((pulled != keep_p).any()) or len(keep_p) != order
    keep_p = pulled
    if len(keep_p) > order:
        if coeffs is None:
            keep_r = _residues(taps, keep_p)
        energy = np.abs(keep_r) ** 2 / np.maximum(1 - np.abs(keep_p) ** 2, 1e-12)
        top = np.argsort(-energy, kind="stable")[:order]
        keep_p, keep_r = keep_p[top], keep_r[top]
    if len(keep_p) < order:
        k = order - len(keep_p)
        spare = fit.SPARE_RADIUS * np.exp(1j * np.pi * (np.arange(k) + 0.5) / k)
        keep_p, keep_r = np.concatenate([keep_p, spare]), np.concatenate([keep_r, np.zeros(k)])
    return keep_p, (_residues(taps, keep_p) if refit else keep_r)


def _kung(taps: np.ndarray, order: int, max_radius: float, size: int):
    m = min(size, (len(taps) + 1) // 2)
    r = min(2 * order, m - 1)
    U, S, _ = np.linalg.svd(_hankel(taps, m))
    O = U[:, :r] * np.sqrt(S[:r])
    A = np.linalg.pinv(O[:-1]) @ O[1:]
    return _to_modes(taps, np.linalg.eigvals(A), None, order, max_radius)


def _balanced(taps: np.ndarray, order: int, max_radius: float, hankel_size: int | None):
    n = len(taps)
    if hankel_size is not None or n > fit.FULL_HANKEL:
        return _kung(taps, order, max_radius, hankel_size or fit.KUNG_SIZE)
    r = min(2 * order, n)
    O = scipy.linalg.hankel(taps)                                            # zero below the anti-diagonal
    V = np.linalg.svd(O)[2][:r].T                                            # (n, r)
    lam, W = np.linalg.eig(V[1:].T @ V[:-1])
    coeffs = (taps @ V @ W) * np.linalg.solve(W, V[0])
    return _to_modes(taps, lam, coeffs, order, max_radius, refit=True)


def _prony(taps: np.ndarray, order: int, max_radius: float):
    n = len(taps)
    r = min(2 * order, n // 2)
    if r == 0:
        return _to_modes(taps, np.zeros(0, complex), None, order, max_radius)
    past = np.stack([taps[r - k:n - k] for k in range(1, r + 1)], axis=1)   # (n - r, r): h_{t-k}
    sv = np.linalg.svd(past, compute_uv=False)
    rc = max(1, int((sv > fit.RANK_RTOL * sv[0]).sum()))
    a = scipy.linalg.lstsq(past[:, :rc], -taps[r:], lapack_driver="gelsd")[0]
    return _to_modes(taps, np.roots(np.concatenate([[1.0], a])), None, order, max_radius)


def reference_fit(h, order: int, method: str = "balanced", max_radius: float = fit.MAX_RADIUS,
                  hankel_size: int | None = None) -> ModalSSM:
    """``fit.distill_filter(h, order, method)`` for "balanced" or "prony", one channel at a time in numpy."""
    if method not in ("balanced", "prony"):
        raise ValueError(f"the reference fits 'balanced' and 'prony', got {method!r}")
    h = as_filters(h, "cpu")
    poles, residues = [], []
    for row in h.numpy():
        if method == "balanced":
            p, r = _balanced(row[1:], order, max_radius, hankel_size)
        else:
            p, r = _prony(row[1:], order, max_radius)
        poles.append(p)
        residues.append(r)
    ssm = ModalSSM(torch.from_numpy(np.stack(poles)).to(torch.complex128),
                   torch.from_numpy(np.stack(residues)).to(torch.complex128), h[:, 0].clone())
    return ssm.with_errors(fit.filter_errors(h, ssm))
