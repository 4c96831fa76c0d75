"""An SSD backend's outputs and gradients against the float64 sequential reference, within the rounding error that
the analysis of ``tests.helpers.precision`` allows for its arithmetic.

Per summand of each result (a product of C, B, Δ·x, a decay exp(Σ log a), a projection g), a backend makes
  - a few rounding errors of its products' unit u: float32 (u = 2^-24) for the PyTorch paths with TF32 off, TF32
    (u = 2^-11) for mamba-ssm's Triton kernel, whose ``tl.dot`` rounds float32 inputs to TF32;
  - the error of its decay: the chunked paths take exp of a difference of float32 cumulative sums of log a within a
    chunk, each off by up to u32·Λ with Λ = the largest |cumulative log-decay| within a chunk, so the decay is off by
    a relative u32·Λ (the sequential reference multiplies one decay a step instead: below that).
So each result's error is about (u + u32·Λ) · (root-sum-square of its summands), plus, for the discrete variant's
d_A through the Triton wrapper, a float32 cancellation outside the summands (``reparametrisation_floor``). The largest
error over a tensor is a few times that (the largest of many random-walk errors, several roundings per summand). The
factors allow it: the float32 paths reach at most 1.3 of that (CPU, lengths 1 to 257, 3 seeds), the Triton kernel at
most 12.3 (d_C; y 7.6, d_x 7.3, d_dt 9.7, d_B 11.2, the final state 3.2; one H200, mamba-ssm 2.3.2, Triton 3.6, 252
cases: lengths 1 to 300, 1 to 4 groups, both variants, with and without an initial state), and d_A at most 22.5 when
scaled by Σ_k Δ_k²·(its d_log a_k summands)², a scale 1.1 to 2.9 times smaller than the one of step 3 of
``summand_rss``. A wrong term or sign moves a result by about its root-sum-square: over 1e4 times the float32 bound
(Λ ≤ ~100 here), 60 times the TF32 one.

Shapes: x (B, L, H, P); dt (B, L, H) or None (the discrete variant); A (H,), or (B, L, H) for the discrete variant;
B, C (B, L, G, N); h0 (B, H, P, N) or None. Results are compared for the loss Σ g_y · y + Σ g_h · h_L with fixed
random projections g_y (like y) and g_h (like the final state h_L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tests.helpers.precision import FP32_UNIT, assert_error_within
from workbench.ops.ssd import ssd_scan_ref

FP32_FACTOR = 8        # float32 PyTorch paths (TF32 off); 1.3 seen (module docstring)
TF32_FACTOR = 32       # mamba-ssm's Triton kernel (TF32 products); 12.3 seen (module docstring)

# The Triton cases' kernel shape: H = 4 heads of P = 8 channels, state N = 8, chunks of Q = 64, the tiny Mamba-2
# students' (tests.helpers.generation_checks). mamba-ssm autotunes each of its ~20 kernels over up to 11
# configurations for every new (Q, P, N, H), which takes minutes for a forward and backward pass; lengths, batch and
# groups are not part of its keys, so every case with this shape reuses one autotuning.
KERNEL_H, KERNEL_P, KERNEL_N, KERNEL_CHUNK = 4, 8, 8, 64

Args = tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor, Tensor | None]  # (x, dt, A, B, C, h0)


def result_names(args: Args) -> list[str]:
    """The names of what ``outputs_and_grads`` returns, in its order: y, the final state, then one gradient per
    input that is not None."""
    inputs = ["d_x", "d_dt", "d_A", "d_B", "d_C", "d_h0"]
    return ["y", "final_state"] + [name for name, t in zip(inputs, args, strict=True) if t is not None]


def projections(args: Args, seed: int = 1) -> tuple[Tensor, Tensor]:
    """(g_y (B, L, H, P), g_h (B, H, P, N)): seeded random projections in x's dtype, on x's device."""
    x, B = args[0], args[3]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    g_y = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    g_h = torch.randn(*x.shape[:1], *x.shape[2:], B.shape[-1], generator=gen, device=x.device, dtype=x.dtype)
    return g_y, g_h


def outputs_and_grads(fn, args: Args, chunk: int, g_y: Tensor, g_h: Tensor) -> list[Tensor]:
    """[y, final state, gradients of Σ g_y·y + Σ g_h·h_L w.r.t. each input that is not None] of the SSD backend
    ``fn`` (the signature of ``ssd_scan``) on fresh leaves holding ``args``' values."""
    leaves = [t.detach().clone().requires_grad_() for t in args if t is not None]
    given = iter(leaves)
    x, dt, A, B, C, h0 = [None if t is None else next(given) for t in args]
    y, h = fn(x, dt, A, B, C, chunk, h0, True)
    loss = (y * g_y.to(y.dtype)).sum() + (h * g_h.to(h.dtype)).sum()
    return [y.detach(), h.detach(), *torch.autograd.grad(loss, leaves)]


def summand_rss(args: Args, g_y: Tensor, g_h: Tensor) -> list[Tensor]:
    """For every element of every result of ``outputs_and_grads`` (same order and shapes): the root-sum-square of
    the summands it is the sum of, in float64.

    1. The discrete form: input x_in = Δ·x and log-decay log a = Δ·A per token (Δ ≡ 1 for the discrete variant).
       Then y, h_L and the gradients w.r.t. x_in, log a, B, C, h0 are sums of products of the factors C, B, x_in,
       h0, g_y, g_h and decays exp(Σ log a) (the derivative of a decay w.r.t. a log a inside it is the decay itself).
    2. Squaring every factor (a decay by doubling its log a) turns each of those sums into the sum of its squared
       summands: the reference scan and its gradients, run on the squared factors, give Σ t² for each result.
    3. The chain rule back to (x, Δ, A) multiplies summands by one more factor: d_x = Δ·d_x_in and
       d_Δ = Σ_p x·d_x_in + A·d_log_a, whose squared sums follow with that factor squared. The Mamba-2 d_A (per head)
       is no sum of independent Δ_k·d_log_a_k: each summand t of the loss has ONE derivative S_t·t w.r.t. A, with
       S_t = Σ Δ_k over its decay's range, computed (and rounded) once; Σ_t (S_t·t)² is the second derivative at
       c = 0 of the squared evaluation with log a shifted by c·Δ per head (each decay² then carries exp(c·S_t)).
    """
    x, dt, A, B, C, h0 = [None if t is None else t.detach().double() for t in args]
    g_y, g_h = g_y.double(), g_h.double()
    Bsz, L, H, P = x.shape
    x_in = x if dt is None else x * dt[..., None]                                      # 1. (B, L, H, P)
    log_a = (A if dt is None else dt * A).expand(Bsz, L, H)                            # (B, L, H)
    squared = [x_in.square(), 2 * log_a, B.square(), C.square()] + ([] if h0 is None else [h0.square()])  # 2.
    leaves = [t.contiguous().requires_grad_() for t in squared]
    shift = torch.zeros(H, dtype=torch.float64, device=x.device, requires_grad=True)  # c (H,), for the Mamba-2 d_A
    log_a2 = leaves[1] if dt is None else leaves[1] + shift * dt
    y2, h2 = ssd_scan_ref(leaves[0], None, log_a2, leaves[2], leaves[3], 1, leaves[4] if h0 is not None else None,
                          True)
    loss2 = (y2 * g_y.square()).sum() + (h2 * g_h.square()).sum()
    *grads, d_shift = torch.autograd.grad(loss2, [*leaves, shift], create_graph=dt is not None, allow_unused=True)
    d_xin2, d_loga2, d_B2, d_C2 = grads[:4]
    if dt is None:                                                                     # 3.
        d_in2 = [d_xin2, d_loga2]                                                      # d_x, d_A (per token)
    else:
        second = torch.autograd.grad(d_shift.sum(), shift)[0] if d_shift.requires_grad else torch.zeros_like(shift)
        d_in2 = [dt[..., None].square() * d_xin2,                                      # d_x (B, L, H, P)
                 (x.square() * d_xin2).sum(-1) + A.square() * d_loga2,                # d_dt (B, L, H)
                 second]                                                               # d_A (H,)
    squares = [y2, h2, *d_in2, d_B2, d_C2, *grads[4:]]
    return [sq.detach().clamp_min(0).sqrt() for sq in squares]


def reparametrisation_floor(args: Args, values: list[Tensor]) -> list[float]:
    """Per result, the size of what a backend may cancel in float32 beyond the summands: 0, except the discrete
    variant's d_A (per token log a) through ``ssd_scan_triton``, which feeds the kernel x' = x / (-log a) with
    Δ' = -log a, so that its d_log a is the kernel's Σ_p x'·d_x_in minus the wrapper's Σ_p x·d_x_in / (-log a), equal
    but each rounded once: Σ_p |x·d_x| / |log a| (d_x = d_x_in here) per token, in float32 units."""
    names = result_names(args)
    floors = [0.0] * len(names)
    if args[1] is None:
        x, log_a = args[0].detach().double(), args[2].detach().double()
        d_x = values[names.index("d_x")]
        floors[names.index("d_A")] = ((x * d_x).abs().sum(-1) / log_a.abs()).max().item() if x.numel() else 0.0
    return floors


@dataclass
class Expected:
    """The float64 reference's results, their summands' root-sum-squares and the float32 cancellation floors,
    computed once per set of inputs."""
    names: list[str]
    values: list[Tensor]
    rss: list[Tensor]
    floors: list[float]


def expected(args: Args, g_y: Tensor, g_h: Tensor) -> Expected:
    """The sequential reference in float64 on the same values (exact up to float64 rounding, 2^29 times finer than
    float32's), and the root-sum-squares that scale each result's rounding error."""
    as64 = tuple(None if t is None else t.detach().double() for t in args)
    values = outputs_and_grads(ssd_scan_ref, as64, 1, g_y.double(), g_h.double())
    return Expected(result_names(args), values, summand_rss(args, g_y, g_h), reparametrisation_floor(args, values))


def decay_exponent(args: Args, chunk: int) -> float:
    """Λ: the largest |Σ log a| over the first l tokens of any chunk of ``chunk`` tokens (log a = Δ·A per token)."""
    x, dt, A = args[0].detach().double(), args[1], args[2].detach().double()
    Bsz, L, H, _ = x.shape
    log_a = (A if dt is None else dt.detach().double() * A).expand(Bsz, L, H)
    padded = torch.nn.functional.pad(log_a, (0, 0, 0, (-L) % chunk))                  # (B, c·Q, H)
    return padded.reshape(Bsz, -1, chunk, H).cumsum(dim=2).abs().max().item() if L else 0.0


def assert_backend_close(fn, args: Args, chunk: int, want: Expected, g_y: Tensor, g_h: Tensor, unit: float,
                         factor: float, context: str) -> list[Tensor]:
    """``fn``'s outputs and gradients are within factor · ((unit + u32·Λ) · (root-sum-square of the summands) + u32 ·
    floor) of the float64 reference, each; the final state is float32 (float64 for float64 inputs). Returns them."""
    unit = unit + FP32_UNIT * decay_exponent(args, chunk)
    got = outputs_and_grads(fn, args, chunk, g_y, g_h)
    state_dtype = torch.promote_types(args[0].dtype, torch.float32)
    assert got[1].dtype == state_dtype, f"{context}: final state is {got[1].dtype}, not {state_dtype}"
    for name, actual, value, rss, floor in zip(want.names, got, want.values, want.rss, want.floors, strict=True):
        assert_error_within(actual, value, rss, unit, factor, f"{context} {name}", FP32_UNIT * floor)
    return got
