"""The Triton kernel of ``workbench.ops.mamba2_step`` (one decode step of the Mamba-2 mixer between its two
projections; shapes and steps as there). Imported only where Triton is installed. One program per (row, head):
it reads its head's x channels and its group's B and C from the in_proj output, moves the conv's ring buffer on,
updates its (P, N) block of the state and writes its P gated (and, with a group per head, normalised) outputs.

A program has little arithmetic and a chain of memory round trips, so its loads are ordered by what they wait for:
everything that depends neither on the position nor on the program's own stores (the state block, z, Δ's raw value
and the per-head parameters) is loaded first, so that those round trips overlap the position's and the conv's
instead of queueing behind the conv's stores (the compiler does not move a load above a store it cannot prove
apart). Those that read neither the in_proj's output nor the position come before
``dependent_launch.wait_for_inputs``: launched with PDL, the kernel makes them while the in_proj's kernel is still
running. The last program to finish moves the position on (step 7 of ``workbench.ops.mamba2_step``)."""

from __future__ import annotations

import math

import triton
import triton.language as tl
from torch import Tensor

from workbench.ops.dependent_launch import launch_pdl, wait_for_inputs


@triton.jit
def conv_channels(xbc_row, conv_row, s_cc, conv_w, s_cw, conv_b, channels, mask, write, slots, taps, pos, W,
                  HAS_CONV_BIAS: tl.constexpr, ACTIVATION: tl.constexpr):
    """Step 2 for some channels of one row: the token's inputs go into slot pos mod W where ``write`` (a mask within
    ``mask``); returns the conv's outputs (float32)."""
    x_new = tl.load(xbc_row + channels, mask=mask, other=0.0).to(conv_row.dtype.element_ty)
    tl.store(conv_row + channels * s_cc + pos % W, x_new, mask=write)
    older = taps < W - 1                                        # taps 0..W-2 read positions pos-W+1 .. pos-1,
    window = tl.load(conv_row + channels[:, None] * s_cc + slots[None, :],      # never the slot written above
                     mask=mask[:, None] & older[None, :], other=0.0).to(tl.float32)
    window = tl.where(taps[None, :] == W - 1, x_new.to(tl.float32)[:, None], window)
    w = tl.load(conv_w + channels[:, None] * s_cw + taps[None, :], mask=mask[:, None] & (taps < W)[None, :],
                other=0.0).to(tl.float32)
    y = tl.sum(window * w, axis=1)
    if HAS_CONV_BIAS:
        y += tl.load(conv_b + channels, mask=mask, other=0.0).to(tl.float32)
    if ACTIVATION:
        y = y * tl.sigmoid(y)
    return y

@triton.jit
def softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))     # F.softplus's threshold

@triton.jit
def step_kernel(zxbcdt, s_zb, conv_state, s_cb, s_cc, ssm_state, s_hb, s_hh, s_hp, s_hn, position, arrivals,
                conv_w, s_cw, conv_b, dt_bias, A_log, D, gate_b, norm_w, out, s_ob,
                E, CH, P, N, G, R, W, dt_lo, dt_hi, eps,
                BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
                HAS_CONV_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, DISCRETE: tl.constexpr,
                CLAMP: tl.constexpr, HAS_GATE_BIAS: tl.constexpr, NORM_HERE: tl.constexpr, PDL: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    g = h // R
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    mp = p < P
    mn = n < N
    zxbcdt_row = zxbcdt + b * s_zb
    xbc_row = zxbcdt_row + E                                    # the conv's channels start after z
    conv_row = conv_state + b * s_cb
    # first the loads that wait for nothing: this head's state block, the per-head weights (all before the wait for
    # the in_proj's output: with PDL, while the kernel before runs), then the position (after the wait: the step
    # kernel before, if that is the kernel before, moves it), z and Δ's raw value
    state = ssm_state + b * s_hb + h * s_hh + p[:, None] * s_hp + n[None, :] * s_hn
    m2 = mp[:, None] & mn[None, :]
    hs = tl.load(state, mask=m2, other=0.0).to(tl.float32)
    dt_b = tl.load(dt_bias + h).to(tl.float32)
    d_skip = tl.load(D + h).to(tl.float32)
    if not DISCRETE:
        a_rate = tl.exp(tl.load(A_log + h).to(tl.float32))
    if NORM_HERE:
        nw = tl.load(norm_w + h * P + p, mask=mp, other=0.0).to(tl.float32)
    wait_for_inputs(PDL)
    pos = tl.load(position)
    zv = tl.load(zxbcdt_row + h * P + p, mask=mp, other=0.0).to(tl.float32)
    if HAS_GATE_BIAS:
        zv += tl.load(gate_b + h * P + p, mask=mp, other=0.0).to(tl.float32)
    raw = tl.load(zxbcdt_row + E + CH + h).to(tl.float32) + dt_b
    taps = tl.arange(0, BLOCK_W)
    slots = (pos + 1 + taps) % W                                # slots of positions pos-W+1 .. pos, oldest first
    # 2. the conv of this head's x channels and of its group's B and C; the R heads of a group share the writes of
    #    B and C (head r of the group writes their channels n with n mod R = r), so each is written once
    mine = mn & (n % R == h % R)
    u = conv_channels(xbc_row, conv_row, s_cc, conv_w, s_cw, conv_b, h * P + p, mp, mp, slots, taps, pos, W,
                      HAS_CONV_BIAS, ACTIVATION)
    Bv = conv_channels(xbc_row, conv_row, s_cc, conv_w, s_cw, conv_b, E + g * N + n, mn, mine, slots, taps,
                       pos, W, HAS_CONV_BIAS, ACTIVATION)
    Cv = conv_channels(xbc_row, conv_row, s_cc, conv_w, s_cw, conv_b, E + G * N + g * N + n, mn, mine, slots,
                       taps, pos, W, HAS_CONV_BIAS, ACTIVATION)
    # 4. decay and input scale
    if DISCRETE:
        log_a = -softplus(raw)
        u_in = u
    else:
        delta = softplus(raw)
        if CLAMP:
            delta = tl.minimum(tl.maximum(delta, dt_lo), dt_hi)
        log_a = -delta * a_rate
        u_in = u * delta
    # 5. the state update and its readout
    hs = hs * tl.exp(log_a) + u_in[:, None] * Bv[None, :]
    tl.store(state, hs.to(ssm_state.dtype.element_ty), mask=m2)
    y = tl.sum(hs * Cv[None, :], axis=1) + d_skip * u
    # 6. the gate, and the norm where the group is this one head
    gv = y * zv * tl.sigmoid(zv)
    if NORM_HERE:
        ms = tl.sum(tl.where(mp, gv * gv, 0.0), axis=0) / P
        gv = gv / tl.sqrt(ms + eps) * nw
    tl.store(out + b * s_ob + h * P + p, gv.to(out.dtype.element_ty), mask=mp)
    # 7. the position moves on: each program counts itself in (acquire-release: its read of the position comes
    #    before), and the last of the grid's programs, after which none reads the position, moves it and sets the
    #    count back to 0 for the next step
    ticket = tl.atomic_add(arrivals, 1, sem="acq_rel")
    last = ticket == tl.num_programs(0) * tl.num_programs(1) - 1
    tl.store(position, pos + 1, mask=last)
    tl.store(arrivals, 0, mask=last)

def launch(zxbcdt: Tensor, conv_state: Tensor, ssm_state: Tensor, position: Tensor, arrivals: Tensor,
           conv_weight: Tensor, conv_bias: Tensor | None, dt_bias: Tensor, A_log: Tensor | None, D: Tensor,
           gate_bias: Tensor | None, norm_weight: Tensor | None, out: Tensor, n_heads: int, head_dim: int,
           n_groups: int, d_state: int, conv_activation: bool, dt_lo: float, dt_hi: float, norm_here: bool,
           eps: float) -> None:
    """One step for every row: the states updated in place and the position moved on (``arrivals``: 0 before and
    after), the gated outputs (B, E) written into ``out`` (normalised where ``norm_here``). Optional tensors absent
    are passed as another tensor the kernel then does not read."""
    Bsz, CH, W = conv_state.shape
    P, N = head_dim, d_state
    dummy = dt_bias                                        # stands for the absent optional tensors
    pdl = launch_pdl(zxbcdt.device)
    step_kernel[(Bsz, n_heads)](
        zxbcdt, zxbcdt.stride(0), conv_state, conv_state.stride(0), conv_state.stride(1),
        ssm_state, *ssm_state.stride(), position, arrivals,
        conv_weight, conv_weight.stride(0), dummy if conv_bias is None else conv_bias, dt_bias,
        dummy if A_log is None else A_log, D, dummy if gate_bias is None else gate_bias,
        dummy if norm_weight is None else norm_weight, out, out.stride(0),
        n_heads * P, CH, P, N, n_groups, n_heads // n_groups, W, dt_lo, dt_hi, eps,
        BLOCK_P=triton.next_power_of_2(P), BLOCK_N=triton.next_power_of_2(N), BLOCK_W=triton.next_power_of_2(W),
        HAS_CONV_BIAS=conv_bias is not None, ACTIVATION=conv_activation, DISCRETE=A_log is None,
        CLAMP=(dt_lo, dt_hi) != (0.0, math.inf), HAS_GATE_BIAS=gate_bias is not None, NORM_HERE=norm_here,
        PDL=pdl, launch_pdl=pdl)

