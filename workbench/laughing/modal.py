"""Modal (diagonal) state-space models: the small recurrent systems the Laughing Hyena distillery puts in place of
long-convolution filters (Massaroli et al., arXiv 2310.18780).

Shapes: B batch, C channels (one SSM per filter), d modes (the order), L or T length, E extra trailing dims of the
input (e.g. the P x P outer products of a MultiHyena head), K block length of the two-level Vandermonde evaluation.

Convention (the paper's, used everywhere in workbench.laughing). Channel c has poles λ[c, n] (complex, |λ| < 1),
residues R[c, n] (complex) and a real feed-through h0[c]. Its impulse response is

    h_0 = h0,        h_t = Re Σ_{n=1}^{d} R_n λ_n^{t-1}     for t ≥ 1.

Each complex mode stands for a conjugate pair (Re(R λ^t) = (R λ^t + conj(R λ^t)) / 2), so order d means d complex
states but real degree ≤ 2d (see ``workbench.laughing.hankel``). A real pole is a complex mode with zero
imaginary part.

Recurrence (O(d) per token and channel; ``step`` returns a new state, ``step_`` updates it in place):

    (1) y_t = h0 u_t + Re Σ_n R_n x_{t-1, n}          output, read from the state before u_t
    (2) x_t = λ ⊙ x_{t-1} + u_t                        state update, x_{-1} = 0

    Unrolled: x_{t-1} = Σ_{s<t} λ^{t-1-s} u_s, so y_t = h0 u_t + Σ_{s<t} Re(Σ_n R_n λ_n^{t-1-s}) u_s = (h * u)_t.

Impulse response without an L x d x C tensor (``impulse_response``): with t - 1 = b K + j (j < K),
    λ^{t-1} = λ^{bK} λ^j,   so   h[1 + bK + j] = Re Σ_n (R_n λ_n^{bK}) λ_n^j,
one batched matrix product (C, L/K, d) @ (C, d, K) with K ≈ √L: memory C d (L/K + K) instead of C d L.
Powers are exp(t log λ), computed in complex128 and cast at the end.

Prefill (``prefill_state``): after a prompt u_0 .. u_{T-1} the state is x_{T-1} = Σ_s λ^{T-1-s} u_s, the last
sample of the causal convolution of u with the modal kernel λ^t. Only that one sample is needed, so it is computed
directly as a Vandermonde contraction over the prompt in blocks of K positions (one pass, no recurrence); the
prompt's outputs come from the FFT long convolution with ``impulse_response``. ``method="recurrence"`` runs (2) token
by token instead (the reference).
"""

from __future__ import annotations

import math

import torch

COMPUTE = torch.complex128  # the dtype of powers λ^t inside impulse_response and prefill_state


def _block(length: int) -> int:
    return max(1, math.isqrt(max(length, 1)))


class ModalSSM:
    """C independent modal SSMs of order d: ``poles`` (C, d) complex, ``residues`` (C, d) complex, ``h0`` (C,) real,
    and ``errors``: how well they fit the filters they were fitted to, per channel ({"mse", "rel_l2", "hinf"}: (C,)
    each, ``workbench.laughing.fit.filter_errors``), or None for systems that were not fitted.

    A plain container (not a Module): fitting returns complex128 / float64 with ``errors``; ``to(torch.complex64)``
    gives the float32 export the mixers store."""

    def __init__(self, poles: torch.Tensor, residues: torch.Tensor, h0: torch.Tensor,
                 errors: dict[str, torch.Tensor] | None = None):
        if poles.dim() != 2 or residues.shape != poles.shape or h0.shape != poles.shape[:1]:
            raise ValueError(f"ModalSSM needs poles (C, d), residues (C, d) and h0 (C,); got {tuple(poles.shape)}, "
                             f"{tuple(residues.shape)}, {tuple(h0.shape)}")
        if not (poles.is_complex() and residues.is_complex()) or h0.is_complex():
            raise ValueError("poles and residues must be complex tensors and h0 a real one")
        self.poles, self.residues, self.h0 = poles, residues, h0
        self.errors = errors

    # ---- basic properties ------------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.poles.shape[0]

    @property
    def order(self) -> int:
        return self.poles.shape[1]

    def __repr__(self) -> str:
        return (f"ModalSSM(channels={self.channels}, order={self.order}, dtype={self.poles.dtype}, "
                f"max |λ|={self.poles.abs().max().item() if self.poles.numel() else 0:.4f})")

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> ModalSSM:
        """A copy with complex ``dtype`` (complex64 or complex128; h0 gets the matching real dtype) on ``device``."""
        dtype = dtype or self.poles.dtype
        real = torch.float32 if dtype == torch.complex64 else torch.float64
        return ModalSSM(self.poles.to(device=device, dtype=dtype), self.residues.to(device=device, dtype=dtype),
                        self.h0.to(device=device, dtype=real), self.errors)

    def with_errors(self, errors: dict[str, torch.Tensor]) -> ModalSSM:
        """The same systems (the same tensors) carrying ``errors``, e.g. ``filter_errors(h, ssm)`` of a fit."""
        return ModalSSM(self.poles, self.residues, self.h0, errors)

    def __getitem__(self, channels) -> ModalSSM:
        """The SSMs of some channels (an index list or a slice), with their ``errors`` when these are known."""
        if isinstance(channels, int):
            channels = [channels]
        errors = None if self.errors is None else {k: v[channels] for k, v in self.errors.items()}
        return ModalSSM(self.poles[channels], self.residues[channels], self.h0[channels], errors)

    @staticmethod
    def cat(parts: list[ModalSSM]) -> ModalSSM:
        """Channels of several SSMs of the same order stacked: (sum C_i, d)."""
        return ModalSSM(torch.cat([p.poles for p in parts]), torch.cat([p.residues for p in parts]),
                        torch.cat([p.h0 for p in parts]))

    def padded(self, order: int) -> ModalSSM:
        """The same systems with order raised to ``order`` by inert modes (λ = 0, R = 0): same impulse response."""
        extra = order - self.order
        if extra < 0:
            raise ValueError(f"cannot pad order {self.order} down to {order}")
        zeros = self.poles.new_zeros(self.channels, extra)
        return ModalSSM(torch.cat([self.poles, zeros], 1), torch.cat([self.residues, zeros], 1), self.h0)

    # ---- the impulse response --------------------------------------------------------------------------------------
    def impulse_response(self, L: int) -> torch.Tensor:
        """h (C, L), real, in h0's dtype: h[:, 0] = h0, h[:, t] = Re Σ_n R_n λ_n^{t-1} (two-level Vandermonde)."""
        C, d = self.poles.shape
        out = self.h0.new_zeros(C, L)
        if L >= 1:
            out[:, 0] = self.h0
        if L <= 1 or d == 0:
            return out
        n = L - 1                                                              # taps h_1 .. h_{L-1}
        K = _block(n)
        nb = -(-n // K)
        log_p = _log(self.poles.to(COMPUTE))                                    # (C, d)
        j = torch.arange(K, device=log_p.device, dtype=torch.float64)
        b = torch.arange(nb, device=log_p.device, dtype=torch.float64) * K
        inner = torch.exp(log_p[:, :, None] * j)                               # (C, d, K)   λ^j
        outer = self.residues.to(COMPUTE)[:, None, :] * torch.exp(log_p[:, None, :] * b[:, None])  # (C, nb, d)
        taps = torch.bmm(outer, inner).real.reshape(C, nb * K)[:, :n]          # (C, n)
        out[:, 1:] = taps.to(out.dtype)
        return out

    def transfer_function(self, n_freq: int) -> torch.Tensor:
        """H(e^{iω}) on the rfft grid ω = 2π k / n_freq, k = 0 .. n_freq // 2, of the INFINITE impulse response:
        h0 + Σ_n [R_n / (e^{iω} - λ_n) + conj(R_n) / (e^{iω} - conj λ_n)] / 2: (C, n_freq // 2 + 1) complex128."""
        w = torch.exp(2j * math.pi * torch.arange(n_freq // 2 + 1, dtype=torch.float64) / n_freq).to(COMPUTE)
        p, r = self.poles.to("cpu", COMPUTE)[:, :, None], self.residues.to("cpu", COMPUTE)[:, :, None]
        modes = r / (w - p) + r.conj() / (w - p.conj())                       # (C, d, F)
        return self.h0.to("cpu", torch.float64)[:, None] + modes.sum(1) / 2

    # ---- recurrence ------------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, *extra: int) -> torch.Tensor:
        """x_{-1} = 0: (B, C, d, *E) in the poles' dtype."""
        return self.poles.new_zeros(batch_size, self.channels, self.order, *extra)

    def _modal(self, t: torch.Tensor, extra: int) -> torch.Tensor:
        """(C, d) -> (C, d, 1, ..., 1) broadcastable over E."""
        return t.reshape(*t.shape, *([1] * extra))

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: u_t (B, C, *E) real, state (B, C, d, *E) -> y_t (B, C, *E) in u_t's dtype, next state (a new
        tensor, promoted to the poles' precision; ``state`` is left as it is). Steps (1)-(2), by ``step_``."""
        new = state.to(torch.promote_types(state.dtype, self.poles.dtype), copy=True)
        return self.step_(u_t, new), new

    def step_(self, u_t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``step`` updating ``state`` (B, C, d, *E) IN PLACE (same tensor, same shape, so a decode step that uses it
        can be captured in a CUDA graph): u_t (B, C, *E) real -> y_t (B, C, *E) in u_t's dtype. Steps (1)-(2)."""
        extra = u_t.dim() - 2
        R = self._modal(self.residues, extra)                                  # (C, d, 1..)
        lam = self._modal(self.poles, extra)
        h0 = self.h0.reshape(-1, *([1] * extra))                               # (C, 1..)
        y = h0 * u_t + (R * state).sum(2).real                                 # (1) (B, C, *E)
        state.mul_(lam).add_(u_t.unsqueeze(2))                                 # (2) (B, C, d, *E), in place
        return y.to(u_t.dtype)

    def scan(self, u: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence over a sequence: u (B, L, C, *E) -> y (B, L, C, *E), final state (B, C, d, *E)."""
        if state is None:
            state = self.init_state(u.shape[0], *u.shape[3:])
        outputs = []
        for t in range(u.shape[1]):
            y_t, state = self.step(u[:, t], state)
            outputs.append(y_t)
        y = torch.stack(outputs, 1) if outputs else u.new_zeros(u.shape)
        return y, state

    def prefill_state(self, u: torch.Tensor, method: str = "vandermonde") -> torch.Tensor:
        """The state after the whole prompt u (B, T, C, *E): x_{T-1} = Σ_s λ^{T-1-s} u_s, (B, C, d, *E).

        ``method="vandermonde"``: one contraction over the prompt in blocks of K positions (module docstring);
        ``"recurrence"``: step (2) token by token (the fallback and reference)."""
        if method == "recurrence":
            return self.scan(u)[1]
        if method != "vandermonde":
            raise ValueError(f"prefill method must be 'vandermonde' or 'recurrence', got {method!r}")
        B, T, C = u.shape[:3]
        extra = u.shape[3:]
        flat = u.reshape(B, T, C, -1)                                          # (B, T, C, E)
        log_p = _log(self.poles.to(COMPUTE))                                   # (C, d)
        state = torch.zeros(B, C, self.order, flat.shape[-1], dtype=COMPUTE, device=u.device)
        K = max(_block(T), 64)
        for start in range(0, T, K):
            s = torch.arange(start, min(start + K, T), device=u.device, dtype=torch.float64)
            powers = torch.exp(log_p[:, :, None] * (T - 1 - s))               # (C, d, K)  λ^{T-1-s}
            state = state + torch.einsum("cdk,bkce->bcde", powers, flat[:, start:start + K].to(COMPUTE))
        return state.reshape(B, C, self.order, *extra).to(self.poles.dtype)


def _log(p: torch.Tensor) -> torch.Tensor:
    """log λ, with λ = 0 (inert padding modes) mapped to -1e4 so that exp(t log λ) = [t == 0] without inf * 0."""
    log_p = p.log()
    return torch.where(p == 0, torch.full_like(log_p, -1e4), log_p)
