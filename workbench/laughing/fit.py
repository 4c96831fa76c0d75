"""Fitting modal SSMs to long-convolution filters: the distillation step of Laughing Hyena (Massaroli et al., arXiv
2310.18780, §3-4). Convention of ``workbench.laughing.modal``: h_0 = h0, h_t = Re Σ_{n≤d} R_n λ_n^{t-1} (t ≥ 1).

Shapes: C channels, L taps, n = L - 1 taps after the feed-through, d modes (order), r = 2d real states.

Where each step runs. The closed-form linear algebra (Prony P1-P4, balanced B1-B5, the least-squares residues of
P4 / M3, eig) always runs on the CPU in float64 / complex128: CUDA has no batched eig / SVD for mid-size float64
matrices (torch loops over the matrices, and eig goes through MAGMA on the host), so an accelerator would be slower
than the host. It is batched over chunks of ``chunk`` channels (every step one batched torch operation over the
chunk: eigh / SVD, pinv, eig, least squares), and the chunks run in parallel on a thread pool of ``workers`` threads
(``workbench.laughing.pool``: torch releases the GIL; one intra-op thread per task, so the result does not depend on
``workers``; by default no more workers than the CPUs the process may use, and torch's own intra-op threads are
capped at ``workers`` for the whole fit). The gradient refinement of the modal method (M2, Adam on the
impulse-response error: exponentials and one batched complex matrix product per step, no factorisations) runs on
``device`` (CUDA when given) over all channels at once (up to DEVICE_ELEMENTS complex numbers per batch); its start
point is moved there and its result back. Without ``device``, a filter on an accelerator refines there and a CPU
filter refines on the thread pool like the other steps, in chunks of at least REFINE_CHUNK channels: a step costs
about a millisecond of Python and dispatch that holds the GIL whatever the chunk, so one-channel tasks would queue
on the GIL instead of running in parallel. The result is complex128 on the CPU (export with
``ssm.to(torch.complex64)``). ``workbench.laughing.reference`` fits one channel at a time with numpy / scipy: the
reference the tests hold the batched fits to. h0 is always the filter's own lag-0 tap: the feed-through is matched
exactly and the modes fit h_1 .. h_{L-1}.

Three methods, ``distill_filter(h, order, method)``; ``distill_orders(h, orders, method)`` fits several orders at
once, every order's fit the same as alone, with ONE Hankel eigendecomposition per chunk for all orders (B1 / B5).

  "prony"     Prony / linear prediction.
              P1. Real order r = 2d (at most n // 2), lowered to the numerical rank of the prediction matrix
                  [h_{t-k}] (a filter of degree < r makes it singular and the extra roots arbitrary); find
                  a_1..a_r minimising Σ_t (h_t + Σ_k a_k h_{t-k})² over t = r+1 .. n (least squares): a sum of
                  r modes satisfies this recursion exactly.
                  Batched: columns past a channel's rank are zeroed (the minimum-norm solution gives a_k = 0 there).
              P2. Poles = roots of z^r + a_1 z^{r-1} + ... + a_r (eigenvalues of the companion matrix). Batched:
                  one r x r matrix per channel, its companion block in the top-left r_c x r_c and SENTINEL on the
                  rest of the diagonal; the r - r_c eigenvalues nearest SENTINEL are dropped.
              P3. Modes in our convention (below), poles pulled inside |λ| ≤ max_radius.
              P4. Residues by linear least squares on h_1..h_n (the model is linear in R for fixed poles).

  "balanced"  Balanced truncation of the FIR system (Hankel model-order reduction).
              B1. Shift-register realisation of taps h_1..h_n: A = down-shift (n x n), B = e_1, C = (h_1..h_n).
                  Its controllability Gramian is P = I and its observability Gramian is Q = Oᵀ O with
                  O[k, j] = h_{k+j+1} (zero past n), the zero-padded Hankel matrix; Hankel singular values = svd(O).
                  O is symmetric, so its singular vectors come from one batched eigh (ordered by |eigenvalue|).
              B2. Because P = I, balancing and truncating to r states is (up to a similarity, which leaves the
                  transfer function unchanged) the projection onto the r leading right singular vectors V_r of O:
                  Â = V_rᵀ A V_r = V_r[1:]ᵀ V_r[:-1],  B̂ = V_r[0]ᵀ,  Ĉ = C V_r.   (stable when σ_r > σ_{r+1})
              B3. Diagonalise Â = W Λ W⁻¹: h_t ≈ Σ_k c_k λ_k^{t-1} with c = (Ĉ W) ⊙ (W⁻¹ B̂).
              B4. Modes in our convention (below), kept by the energies of B3's coefficients; residues by P4 (least
                  squares: never a larger ℓ2 error than B3's coefficients, and exact for an exact realisation).
              B5. Long filters (n > FULL_HANKEL taps, or ``hankel_size`` given): B1-B3 cost an n x n SVD per
                  channel, so instead take the m x m Hankel H[i, j] = h_{i+j+1} (m = ``hankel_size``, default
                  KUNG_SIZE), H = U Σ Vᵀ (by eigh: H is symmetric), O = U_r Σ_r^{1/2}, Â = pinv(O[:-1]) O[1:]
                  (Kung's shift invariance, a balanced realisation of the Hankel block), poles = eig(Â), residues by
                  P4 on all n taps.
              Several orders (B1, B5): U_r / V_r of order d are the first 2d columns of the largest order's, so one
              eigh (sorted by |eigenvalue|) per chunk serves them all.

  "modal"     The paper's method: gradient descent on the ℓ2 error of the impulse response.
              M1. Start from ``init`` ("balanced" or "prony").
              M2. Parametrise λ = exp(-exp(ν) + iθ) (so |λ| < 1 always), R = a + ib free; minimise
                  Σ_c Σ_{t≥1} (h_t - ĥ_t)² / Σ_{t≥1} h_t²  (every channel's relative ℓ2 error) with Adam; ĥ by the
                  two-level Vandermonde product of ``_impulse`` (never a C x d x n tensor).
              M3. Re-solve the residues by least squares for the final poles (P4: can only lower the error).
              M4. Per channel, keep whichever of start and result has the lower ℓ2 error.

Real modes -> our modes. A real system's modes come as real poles and conjugate pairs (λ, λ̄) with coefficients
(c, c̄); c λ^t + c̄ λ̄^t = Re(2c λ^t), so a pair becomes ONE mode (λ with Im λ > 0, R = 2c) and a real pole one mode
(R = Re c). A real system of degree 2d with only complex poles gives exactly d modes. If there are more (real poles),
the d modes of largest energy |R|² / (1 - |λ|²) are kept; if fewer, spare modes (|λ| = 0.5, spread angles) are
added; either way the residues are then re-solved by least squares.

Errors (``filter_errors``) on the length-L filter: MSE = mean_t (h_t - ĥ_t)², relative ℓ2 = ‖h - ĥ‖ / ‖h‖, and
H-infinity = max_k |FFT(h - ĥ)_k| over the rfft grid of size 2L (the response of the length-L difference filter).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from workbench.laughing.hankel import as_filters
from workbench.laughing.modal import ModalSSM
from workbench.laughing.pool import capped_threads, chunk_slices, default_workers, map_chunks

METHODS = ("modal", "balanced", "prony")
MAX_RADIUS = 1 - 1e-6   # poles are pulled inside this radius (a filter of finite length cannot ask for |λ| ≥ 1)
CHUNK = 64              # at most this many channels per batched CPU call (memory C * L * d); fewer so that every
                        # worker of the thread pool gets a chunk
REFINE_CHUNK = 32       # M2-M4 on the thread pool: at least this many channels per task (or all of them, and
                        # at most CHUNK), so that a step's GIL-holding overhead is shared by many channels
DEVICE_ELEMENTS = 2 ** 25   # M2 on a device, and the errors: channels per batch such that
                            # channels * (d * 2√n + n) stays below this (the two-level impulse response's factors
                            # and product)
SPARE_RADIUS = 0.5      # where spare modes start when a method finds fewer than d
RANK_RTOL = 1e-12       # Prony: singular values below this fraction of the largest count as zero
FULL_HANKEL = 512       # balanced: exact FIR balanced truncation (an n x n SVD per channel) up to n taps, else B5
KUNG_SIZE = 256         # balanced, B5: Hankel size m (realisations up to real order m - 1)


# ---- batched linear algebra (every function takes a chunk of C channels; everything stays on its device) ----------

def lstsq_min_norm(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares per channel: A (C, m, k), b (C, m) -> x (C, k), by a batched QR (A = QR, when
    m > k) and the SVD of R, with singular values below eps * max(m, k) * σ_max dropped (the rule of LAPACK's
    gelsd, which CUDA lacks)."""
    m, k = A.shape[-2:]
    if m > k:
        Q, A = torch.linalg.qr(A)                                            # ‖Ax - b‖² = ‖Rx - Qᵀb‖² + const
        b = (Q.transpose(1, 2) @ b[:, :, None])[:, :, 0]
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)                     # (C, ., k'), (C, k'), (C, k', k)
    cutoff = torch.finfo(A.dtype).eps * max(m, k) * S[:, :1]
    inv = torch.where(S > cutoff, 1 / torch.where(S > cutoff, S, torch.ones_like(S)), torch.zeros_like(S))
    return (Vh.transpose(1, 2) @ ((U.transpose(1, 2) @ b[:, :, None])[:, :, 0] * inv)[:, :, None])[:, :, 0]


def _powers(poles: torch.Tensor, n: int) -> torch.Tensor:
    """λ^{t-1} for t = 1..n: poles (C, d) complex128 -> (C, d, n), as λ^{bK} λ^j (t - 1 = bK + j, K ≈ √n): two
    small exponentials and one product instead of C d n complex exponentials (differentiable)."""
    log_p = poles.log()
    log_p = torch.where(poles == 0, torch.full_like(log_p, -1e4), log_p)
    K = max(1, math.isqrt(max(n, 1)))
    nb = -(-n // K)
    j = torch.arange(K, dtype=torch.float64, device=poles.device)
    inner = torch.exp(log_p[:, :, None] * j)                                  # (C, d, K)    λ^j
    outer = torch.exp(log_p[:, :, None] * (j.new_tensor(K) * torch.arange(nb, dtype=torch.float64,
                                                                         device=poles.device)))  # (C, d, nb)
    return (outer[:, :, :, None] * inner[:, :, None, :]).reshape(*poles.shape, nb * K)[:, :, :n]


def solve_residues(taps: torch.Tensor, poles: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares residues for fixed poles: taps (C, n) = h_1..h_n float64, poles (C, d) complex128 ->
    R (C, d) complex128 minimising Σ_t (h_t - Re Σ R λ^{t-1})². Real with R = a + ib: Re(R λ^{t-1}) =
    a Re λ^{t-1} - b Im λ^{t-1}, a real linear problem in (a, b). Columns are scaled to unit norm; columns that are
    rounding noise (Im λ^{t-1} of a real pole) or belong to poles outside ``valid`` (C, d) are dropped (R = 0
    there), and rank-deficient problems get the minimum-norm answer."""
    C, d = poles.shape
    V = _powers(poles, taps.shape[1])                                        # (C, d, n)
    design = torch.cat([V.real, -V.imag], dim=1).transpose(1, 2)             # (C, n, 2d)
    norms = design.norm(dim=1, keepdim=True)                                  # (C, 1, 2d) column scaling
    negligible = norms <= 1e-10 * norms.amax(-1, keepdim=True)               # e.g. Im λ^t of a real pole: rounding
    if valid is not None:
        dead = ~torch.cat([valid, valid], 1)[:, None, :]
        negligible = dead | (norms <= 1e-10 * torch.where(dead, 0, norms).amax(-1, keepdim=True))
    scale = torch.where(negligible, torch.ones_like(norms), norms)
    design = torch.where(negligible, torch.zeros_like(design), design / scale)
    coef = lstsq_min_norm(design, taps) / scale[:, 0]
    return torch.complex(coef[:, :d], coef[:, d:])


def _symmetric_top(H: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The r leading singular values (C, r) and singular vectors (C, m, r) of symmetric matrices H (C, m, m) (Hankel
    matrices are): eigenvectors of ``eigh`` ordered by |eigenvalue|, a few times cheaper than an SVD. A column's sign
    may differ from the SVD's left vectors, which changes no realisation built from them (a diagonal similarity)."""
    evals, evecs = torch.linalg.eigh(H)
    s, order = evals.abs().sort(dim=-1, descending=True)
    order = order[:, :r]
    return s[:, :r], evecs.gather(2, order[:, None, :].expand(-1, H.shape[1], -1))


# ---- real-system modes -> our modes ---------------------------------------------------------------------------------

def _pull_inside(poles: torch.Tensor, max_radius: float) -> torch.Tensor:
    r = poles.abs()
    return torch.where(r > max_radius, poles * (max_radius / r.clamp_min(1e-300)), poles)


def _first(values: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values (C, r) reordered by ascending ``key`` (C, r) (stable): (reordered values, the permutation)."""
    perm = key.argsort(dim=-1, stable=True)
    return values.gather(1, perm), perm


def to_modes(taps: torch.Tensor, poles: torch.Tensor, coeffs: torch.Tensor | None, order: int,
             max_radius: float = MAX_RADIUS, valid: torch.Tensor | None = None,
             refit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A real system h_t = Σ_k c_k λ_k^{t-1} (poles (C, r), coeffs (C, r) or None; ``valid`` (C, r) marks the poles
    that exist when channels have different real orders) as ``order`` modes of our convention (module docstring):
    (poles (C, d), residues (C, d)) complex128, all channels at once. Per channel: the poles with Im λ > 0 then the
    real ones (in their given order) are kept, pulled inside ``max_radius``; beyond d, the d of largest energy;
    short of d, spare poles. Residues come from ``coeffs`` when the mode count is exactly d, no pole had to be
    pulled inside and ``refit`` is off, else from least squares on ``taps`` (``coeffs`` then only rank the modes)."""
    C, r = poles.shape
    dev = poles.device
    if valid is None:
        valid = torch.ones(C, r, dtype=torch.bool, device=dev)
    tol = 1e-12 * poles.abs().clamp_min(1.0)
    upper = (poles.imag > tol) & valid                                         # one of each conjugate pair
    real = (poles.imag.abs() <= tol) & valid
    rank = torch.where(upper, 0, torch.where(real, 1, 2))                       # kept upper, kept real, dropped
    keep_p = torch.where(real, torch.complex(poles.real, torch.zeros_like(poles.real)), poles)
    keep_p, perm = _first(keep_p, rank)
    kept = (rank < 2).sum(-1)                                                  # (C,) modes found
    slots = torch.arange(r, device=dev)[None]
    live = slots < kept[:, None]                                               # (C, r) slots holding a mode
    if coeffs is not None:
        keep_r = torch.where(upper, 2 * coeffs, torch.where(real, torch.complex(coeffs.real, torch.zeros_like(
            coeffs.real)), torch.zeros_like(coeffs))).gather(1, perm)
    else:
        keep_r = torch.zeros_like(keep_p)
    pulled = _pull_inside(keep_p, max_radius)
    changed = ((pulled != keep_p) & live).any(-1) | (kept != order)
    if coeffs is None or refit:
        changed = torch.ones_like(changed)
    keep_p = torch.where(live, pulled, torch.zeros_like(pulled))
    if coeffs is None and bool((kept > order).any()):                          # energies need residues
        extra = kept > order
        keep_r[extra] = solve_residues(taps[extra], keep_p[extra], live[extra])
    energy = keep_r.abs() ** 2 / (1 - keep_p.abs() ** 2).clamp_min(1e-12)
    energy = torch.where(live, energy, torch.full_like(energy, -1.0))
    top = torch.where((kept > order)[:, None], energy.argsort(dim=-1, descending=True, stable=True), slots)
    width = max(order, r)
    out_p = torch.zeros(C, width, dtype=torch.complex128, device=dev)
    out_r = torch.zeros(C, width, dtype=torch.complex128, device=dev)
    out_p[:, :r], out_r[:, :r] = keep_p.gather(1, top), keep_r.gather(1, top)
    out_p, out_r = out_p[:, :order], out_r[:, :order]
    found = kept.clamp(max=order)                                              # spare poles fill slots ≥ found
    spare_slot = torch.arange(order, device=dev)[None] - found[:, None]        # (C, d): index among the spares
    spares = (order - found).clamp_min(1)[:, None].to(torch.float64)
    angles = math.pi * (spare_slot.to(torch.float64) + 0.5) / spares
    is_spare = spare_slot >= 0
    out_p = torch.where(is_spare, SPARE_RADIUS * torch.exp(1j * angles), out_p)
    out_r = torch.where(is_spare, torch.zeros_like(out_r), out_r)
    if bool(changed.any()):
        out_r[changed] = solve_residues(taps[changed], out_p[changed])
    return out_p, out_r


# ---- the three methods (each on a chunk of channels: taps (C, n) = h_1..h_n) ---------------------------------------

SENTINEL = 1e3   # Prony: eigenvalue of the padding block of a channel's companion matrix (far from any kept pole)


def _companion_roots(a: torch.Tensor, ranks: torch.Tensor | None = None) -> torch.Tensor:
    """Roots of z^k + a_1 z^{k-1} + ... + a_k for each row of a (C, r), k = ranks[c] (default r): (C, r) complex128,
    the r - k slots past a channel's degree hold the eigenvalue SENTINEL of the padding block."""
    C, r = a.shape
    dev = a.device
    ranks = torch.full((C,), r, device=dev) if ranks is None else ranks
    idx = torch.arange(r, device=dev)
    inside = idx[None] < ranks[:, None]                                       # (C, r)
    comp = torch.zeros(C, r, r, dtype=torch.float64, device=dev)
    comp[:, 0, :] = torch.where(inside, -a, torch.zeros_like(a))
    if r > 1:
        sub = (idx[1:, None] - 1 == idx[None, :-1]) & inside[:, 1:, None]      # z^{k-1} shift, inside the block
        comp[:, 1:, :-1] = sub.to(torch.float64)
    comp = comp + torch.diag_embed(torch.where(inside, 0.0, SENTINEL).to(torch.float64))
    return torch.linalg.eigvals(comp)


def _prony(taps: torch.Tensor, order: int, max_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    C, n = taps.shape
    dev = taps.device
    r = min(2 * order, n // 2)
    if r == 0:
        return to_modes(taps, torch.zeros(C, 0, dtype=torch.complex128, device=dev), None, order, max_radius)
    rows = torch.arange(r, n, device=dev)                                     # 0-based index of h_{t}, t = r+1..n
    past = taps[:, rows[:, None] - torch.arange(1, r + 1, device=dev)]        # (C, n-r, r): h_{t-k}
    sv = torch.linalg.svdvals(past)                                           # (C, r)
    ranks = (sv > RANK_RTOL * sv[:, :1]).sum(-1).clamp_min(1)                # P1: r_c = min(r, degree of h_c)
    inside = torch.arange(r, device=dev)[None] < ranks[:, None]
    a = lstsq_min_norm(past * inside[:, None, :], -taps[:, r:])               # (C, r), 0 past r_c
    roots = _companion_roots(a, ranks)                                        # P2 (C, r)
    valid = torch.ones_like(inside)                                           # drop r - r_c roots nearest SENTINEL
    far = (roots - SENTINEL).abs().argsort(dim=-1, descending=True, stable=True)
    valid = valid.scatter(1, far, torch.arange(r, device=dev)[None].expand(C, -1) < ranks[:, None])
    return to_modes(taps, roots, None, order, max_radius, valid)              # P3-P4


def _hankel_top(taps: torch.Tensor, r: int, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The r leading Hankel singular values (C, r') and vectors (C, m, r'), r' = min(r, what the Hankel allows): of
    the n x n zero-padded Hankel (B1, ``size`` None) or of the size x size block (B5). One batched eigh serves every
    order ≤ r / 2: an order's vectors are a prefix of these (same decomposition, same sort)."""
    C, n = taps.shape
    if size is None:
        idx = torch.arange(n, device=taps.device)
        padded = torch.cat([taps, taps.new_zeros(C, 1)], dim=1)
        return _symmetric_top(padded[:, (idx[:, None] + idx[None, :]).clamp(max=n)], min(r, n))   # O, (C, n, n)
    m = min(size, (n + 1) // 2)
    idx = torch.arange(m, device=taps.device)
    return _symmetric_top(taps[:, idx[:, None] + idx[None, :]], min(r, m - 1))                   # H_m, h_{i+j+1}


def _kung(taps: torch.Tensor, S: torch.Tensor, U: torch.Tensor, order: int,
          max_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B5 from ``_hankel_top`` of the size x size Hankel block (Kung / Ho-Kalman): its leading r = 2d values S and
    vectors U (a prefix when more were computed), residues by least squares."""
    r = min(2 * order, U.shape[1] - 1)
    O = U[:, :, :r] * S[:, None, :r].sqrt()                                   # (C, m, r) observability factor
    A = torch.linalg.pinv(O[:, :-1]) @ O[:, 1:]                               # shift invariance (C, r, r)
    return to_modes(taps, torch.linalg.eigvals(A), None, order, max_radius)


def _fir_balanced(taps: torch.Tensor, V: torch.Tensor, order: int,
                  max_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B2-B4 from the leading right singular vectors V (C, n, ≥ r) of the FIR Hankel O (``_hankel_top``, B1)."""
    V = V[:, :, :min(2 * order, taps.shape[1])]                               # (C, n, r)
    A = V[:, 1:].transpose(1, 2) @ V[:, :-1]                                  # (C, r, r)
    B = V[:, 0, :]                                                            # (C, r)
    Cv = (taps[:, None, :] @ V)[:, 0]                                         # (C, r)
    lam, W = torch.linalg.eig(A)                                              # B3
    Bm = torch.linalg.solve(W, B.to(W.dtype)[:, :, None])[:, :, 0]           # W⁻¹ B̂
    Cm = (Cv.to(W.dtype)[:, None, :] @ W)[:, 0]                               # Ĉ W
    return to_modes(taps, lam, Cm * Bm, order, max_radius, refit=True)        # B4


def _balanced(taps: torch.Tensor, orders: list[int], max_radius: float,
              hankel_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """B1-B5 for several orders from ONE Hankel eigendecomposition: [(poles, residues) (C, d)] per order."""
    size = None                                                               # B1-B4: exact FIR balanced truncation
    if hankel_size is not None or taps.shape[1] > FULL_HANKEL:
        size = hankel_size or KUNG_SIZE                                       # B5
    S, U = _hankel_top(taps, 2 * max(orders), size)
    if size is None:
        return [_fir_balanced(taps, U, d, max_radius) for d in orders]
    return [_kung(taps, S, U, d, max_radius) for d in orders]


def _impulse(poles: torch.Tensor, residues: torch.Tensor, n: int) -> torch.Tensor:
    """h_1..h_n = Re Σ R λ^{t-1}: poles, residues (C, d) complex128 -> (C, n) float64 (differentiable), by
    ``ModalSSM.impulse_response``'s two-level Vandermonde: memory C d (n/K + K), K ≈ √n, never the C d n of
    ``_powers``."""
    return ModalSSM(poles, residues, poles.real.new_zeros(poles.shape[0])).impulse_response(n + 1)[:, 1:]


def _relative_l2(taps: torch.Tensor, poles: torch.Tensor, residues: torch.Tensor) -> torch.Tensor:
    err = (taps - _impulse(poles, residues, taps.shape[1])).pow(2).sum(-1)
    return err / taps.pow(2).sum(-1).clamp_min(1e-300)


def _closed_form(taps: torch.Tensor, orders: list[int], method: str, max_radius: float,
                 hankel_size: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """"balanced" or "prony" on a chunk: taps (C, n) float64 -> [(poles, residues) (C, d) complex128] per order
    (balanced: one Hankel eigendecomposition for all of them)."""
    if method == "prony":
        return [_prony(taps, d, max_radius) for d in orders]
    return _balanced(taps, orders, max_radius, hankel_size)


def _descend(taps: torch.Tensor, p0: torch.Tensor, r0: torch.Tensor, steps: int, lr: float,
             max_radius: float) -> torch.Tensor:
    """M2 on one batch, on the tensors' device: taps (C, n) float64, start poles / residues (C, d) complex128 ->
    the poles after ``steps`` Adam steps (C, d) complex128 (not yet pulled inside). Each channel's loss term depends
    on its own parameters only and Adam is elementwise, so the batch changes a channel's result only through rounding
    (which Adam's normalised steps can grow to ~1e-7 of a tap on coordinates whose gradient is pure rounding)."""
    n = taps.shape[1]
    p_start = _pull_inside(p0, min(max_radius, 1 - 1e-9))
    p_start = torch.where(p_start.abs() < 1e-6, torch.full_like(p_start, 1e-6), p_start)     # |λ| > 0 for log
    with torch.enable_grad():
        nu = torch.log(-torch.log(p_start.abs())).requires_grad_(True)                       # |λ| = e^{-e^ν}
        theta = p_start.angle().clone().requires_grad_(True)
        res = torch.view_as_real(r0).clone().requires_grad_(True)                            # (C, d, 2)
        norm = taps.pow(2).sum(-1).clamp_min(1e-300)                                        # (C,)
        opt = torch.optim.Adam([nu, theta, res], lr=lr)
        for _ in range(steps):
            poles = torch.exp(torch.complex(-torch.exp(nu), theta))
            loss = ((taps - _impulse(poles, torch.view_as_complex(res), n)).pow(2).sum(-1) / norm).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.exp(torch.complex(-torch.exp(nu), theta))


def _settle(taps: torch.Tensor, moved: torch.Tensor, p0: torch.Tensor, r0: torch.Tensor,
            max_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """M3-M4 on a CPU chunk: least-squares residues for the descended poles ``moved`` (C, d), then per channel the
    better of (moved, residues) and the start (p0, r0): (poles, residues) (C, d) complex128."""
    poles = _pull_inside(moved, max_radius)
    residues = solve_residues(taps, poles)                                                   # M3
    better = _relative_l2(taps, poles, residues) < _relative_l2(taps, p0, r0)               # M4
    return torch.where(better[:, None], poles, p0), torch.where(better[:, None], residues, r0)


def _cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p for p, _ in parts]), torch.cat([r for _, r in parts])


# ---- public ---------------------------------------------------------------------------------------------------------

def filter_errors(h, ssm: ModalSSM, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Errors of ``ssm`` against filters h (L,) or (C, L), each (C,) float64 on the CPU: "mse" (mean over the L
    taps), "rel_l2" (‖h - ĥ‖ / ‖h‖) and "hinf" (max over the size-2L rfft grid of |H - Ĥ|); computed on ``device``
    (default h's)."""
    h = as_filters(h, device)
    L = h.shape[1]
    diff = h - ssm.to(torch.complex128, h.device).impulse_response(L)        # (C, L)
    errors = {"mse": diff.pow(2).mean(-1),
              "rel_l2": diff.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-300),
              "hinf": torch.fft.rfft(diff, n=2 * L, dim=-1).abs().amax(-1)}
    return {k: v.cpu() for k, v in errors.items()}


def distill_filter(h, order: int, method: str = "modal", **kwargs) -> ModalSSM:
    """Fit an order-``order`` modal SSM to each filter: h (L,) or (C, L) (any real dtype/device) -> ModalSSM with
    poles and residues (C, order) complex128, h0 (C,) float64 (C = 1 for a 1-D filter), on the CPU, carrying
    ``errors`` (``filter_errors`` on h). ``distill_orders`` with one order: see there for ``method`` and ``kwargs``
    (``init``, ``steps``, ``lr``, ``max_radius``, ``hankel_size``, ``chunk``, ``device``, ``workers``)."""
    return distill_orders(h, [order], method, **kwargs)[order]


def distill_orders(h, orders: Sequence[int], method: str = "modal", *, init: str = "balanced", steps: int = 300,
                   lr: float = 5e-3, max_radius: float = MAX_RADIUS, hankel_size: int | None = None,
                   chunk: int | None = None, device: torch.device | str | None = None, workers: int | None = None,
                   seconds: dict[int, float] | None = None,
                   after_order: Callable[[int], None] | None = None) -> dict[int, ModalSSM]:
    """Fit modal SSMs of several orders to each filter: h (L,) or (C, L) -> {order: ModalSSM} (each as
    ``distill_filter`` returns it: complex128 / float64 on the CPU, with ``errors``), every order's fit exactly the
    one ``distill_filter`` gives.

    ``method``: "modal" (gradient fit from ``init`` = "balanced" or "prony", ``steps`` Adam steps at ``lr``),
    "balanced" or "prony" (module docstring); ``hankel_size`` forces step B5 with that Hankel size. The closed-form
    steps run in float64 on the CPU, ``chunk`` channels per batched call (default: CHUNK, or fewer so that every
    worker gets a chunk) on a pool of ``workers`` threads (default ``pool.default_workers()``: torch's thread count,
    at most the CPUs this process may use); torch's intra-op threads are capped at ``workers`` during the fit.
    "balanced" (and a balanced start) computes ONE Hankel eigendecomposition per chunk for all orders (an order's
    leading singular vectors are a prefix of the largest order's). The modal method's gradient steps run on
    ``device`` over all channels at once (batches of at most DEVICE_ELEMENTS // (order * 2√n + n) channels), one
    order after another; without ``device``, on h's device when that is an accelerator, else on the CPU pool
    (``chunk`` channels per task; by default REFINE_CHUNK to CHUNK). Pass a dict as ``seconds`` to receive
    {order: wall-clock seconds}: the shared closed-form time split evenly over the orders plus that order's own
    refinement and errors; ``after_order(order)`` is called as each order's fits are done (a progress bar)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if init not in ("balanced", "prony"):
        raise ValueError(f"init must be 'balanced' or 'prony', got {init!r}")
    orders = list(orders)
    if not orders or any(not isinstance(d, int) or d < 1 for d in orders):
        raise ValueError(f"orders must be positive integers, got {orders!r}")
    orders = sorted(set(orders))
    began = time.perf_counter()
    h = torch.as_tensor(h)
    if device is None and h.device.type != "cpu":
        device = h.device
    h = as_filters(h, "cpu")                                                  # (C, L) float64
    if h.shape[1] < 2:
        raise ValueError(f"a filter needs at least 2 taps to fit modes, got {h.shape[1]}")
    C, n = h.shape[0], h.shape[1] - 1
    workers = default_workers(workers)
    spread = -(-C // workers)                                                 # channels per worker
    closed_chunk = chunk or max(1, min(CHUNK, spread))
    refine_chunk = chunk or min(CHUNK, max(REFINE_CHUNK, spread))
    taps = h[:, 1:]                                                           # (C, n)
    start = "balanced" if method == "balanced" else ("prony" if method == "prony" else init)
    fits = {}
    with capped_threads(workers):
        parts = map_chunks(lambda s: _closed_form(taps[s], orders, start, max_radius, hankel_size), C,
                           closed_chunk, workers)
        shared = (time.perf_counter() - began) / len(orders)                  # P1-P4 / B1-B5 / M1, all orders
        for i, d in enumerate(orders):
            began = time.perf_counter()
            batch = max(1, DEVICE_ELEMENTS // (d * 2 * (math.isqrt(n) + 1) + n))   # channels per device batch
            p0, r0 = _cat([part[i] for part in parts])                        # (C, d) each
            if method != "modal":
                poles, residues = p0, r0
            elif device is None:                                              # M2-M4 on the CPU pool
                def refine(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
                    moved = _descend(taps[s], p0[s], r0[s], steps, lr, max_radius)
                    return _settle(taps[s], moved, p0[s], r0[s], max_radius)

                poles, residues = _cat(map_chunks(refine, C, refine_chunk, workers))
            else:                                                             # M2 on the device, M3-M4 on the pool
                dev = torch.device(device)
                moved = torch.cat([_descend(taps[s].to(dev), p0[s].to(dev), r0[s].to(dev), steps, lr,
                                            max_radius).cpu() for s in chunk_slices(C, batch)])
                poles, residues = _cat(map_chunks(lambda s: _settle(taps[s], moved[s], p0[s], r0[s], max_radius),
                                                  C, closed_chunk, workers))
            ssm = ModalSSM(poles, residues, h[:, 0].clone())
            with torch.no_grad():
                errors = [filter_errors(h[s], ssm[s], device) for s in chunk_slices(C, batch)]
            fits[d] = ssm.with_errors({k: torch.cat([e[k] for e in errors]) for k in errors[0]})
            if seconds is not None:
                seconds[d] = shared + time.perf_counter() - began
            if after_order is not None:
                after_order(d)
    return fits
