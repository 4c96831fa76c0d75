"""Mamba-2 mixer (Dao & Gu, "Transformers are SSMs", arXiv 2405.21060) and its discrete variant from MOHAWK
(Bick et al., "Transformers to SSMs: Distilling Quadratic Knowledge to Subquadratic Models", arXiv 2408.10189).

Shapes: B batch, L length, D model width, E = H·P inner width, H heads, P head width, G groups of B/C, N state size,
W conv width.

Forward, step by step (the numbers appear again in the code):
  1. in_proj: x (B, L, D) -> z (E) | xBC = [x (E), B (G·N), C (G·N)] | dt (H)    (mamba_ssm's order, so its and
     transformers' Mamba2 weights copy over as they are)
  2. causal depthwise conv (width W) over xBC, then SiLU (Mamba-2) or nothing (MOHAWK)
  3. split into u (B, L, H, P), B (B, L, G, N), C (B, L, G, N); head h reads group h // (H/G)
  4. decay and input scale per token and head:
       Mamba-2:  Δ_t = clamp(softplus(dt_t + dt_bias), dt_limit),  A = -exp(A_log) (H,),  log a_t = Δ_t·A, scale Δ_t
       discrete: log a_t = -softplus(Λ_t) with Λ_t = dt_t + dt_bias,  no input scale (Δ ≡ 1)
  5. SSD scan (``workbench.ops.ssd``): h_t = a_t·h_{t-1} + scale_t·u_t ⊗ B_t, y_t = h_t·C_t, plus the skip D·u_t
  6. gate and norm: RMSNorm over G groups of (y ⊙ silu(z)) times a weight (Mamba-2, norm after the gate as in
     mamba_ssm's Mamba2); MOHAWK: y ⊙ silu(z + b) with no norm
  7. out_proj: (E) -> (D)
Mixing matrix (per head, y = M u): M[l, s] = (C_l·B_s) · exp(Σ_{k=s+1..l} log a_k) · scale_s, plus D on the diagonal.

Initialising from attention (``Mamba2.from_attention``): Mamba in the Llama's transfer, whose rows and GQA rule are
the table of ``workbench.students.init``. Student heads = attention heads H, P = attention head dim, N = P, and G = H
(each head its own B and C), so C_l·B_s = q_l·k_s before RoPE, and with an identity conv the SSM's u is the value
stream. As in the paper: dt bias (Δ log-uniform in [dt_min, dt_max]), A_log = log(uniform(1, 16)), D = 1, norm
weight 1. Unlike the paper, the conv starts as the identity and the gate at exactly 1 (z rows zero, gate bias
silu⁻¹(1)), as MOHAWK does: with a fresh random conv and gate the transferred projections are scrambled before the
scan (on SmolLM2-135M layer 12 the cosine between each head's output and the teacher's attention head output is
-0.1..0.1 with them, 0.2..0.8 without). The output scale is left to ``workbench.students.calibrate`` (a
data-dependent step ``build_student`` runs when given calibration tokens): the RMSNorm makes every head's output RMS
1, several times the attention's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.ops.aligned_linear import AlignedLinear, aligned_linear
from workbench.ops.causal_conv import causal_conv1d
from workbench.ops.mamba2_step import Mamba2StepLayout, Mamba2StepWeights, mamba2_decay, mamba2_step
from workbench.ops.ssd import segment_sum, ssd_scan
from workbench.students._conv import CausalConv1d
from workbench.students._ssm import GatedOutput, ScanMixer, inverse_softplus_dt
from workbench.students.init import check_fits, has_bias, load_attention
from workbench.teachers.anatomy import AttentionWeights


@dataclass
class Mamba2Config:
    d_model: int                                         # D: width of the residual stream read and written
    d_state: int = 64                                    # N: state size per head (from attention: the head dim)
    head_dim: int = 64                                   # P: channels per head
    n_heads: int | None = None                           # H; None: expand * d_model // head_dim (mamba_ssm's rule)
    expand: int = 2                                      # inner width E = expand * D, used when n_heads is None
    n_groups: int = 1                                    # G: heads share B and C in G groups (mamba_ssm default 1)
    d_conv: int = 4                                      # W: taps of the causal depthwise conv over x, B, C
    conv_bias: bool = True                               # the conv has a bias (mamba_ssm default)
    conv_activation: bool = True                         # SiLU after the conv (Mamba-2); MOHAWK: identity
    conv_init_identity: bool = False                     # start the conv as the identity map (MOHAWK)
    bias: bool = False                                   # biases on in_proj and out_proj (mamba_ssm default: none)
    discrete: bool = False                               # MOHAWK's variant: a_t = exp(-softplus(Λ_t)), no Δ scaling
    dt_min: float = 0.001                                # Δ at init is log-uniform in [dt_min, dt_max] (mamba_ssm);
    dt_max: float = 0.1                                  #   discrete: a_t starts near exp(-Δ), the same memory span
    dt_init_floor: float = 1e-4                          # ... and at least this
    dt_limit: tuple[float, float] = (0.0, float("inf"))  # Δ is clamped to this range (mamba_ssm default: no clamp)
    A_init_range: tuple[float, float] = (1.0, 16.0)      # -A per head uniform in this range (Mamba in the Llama)
    D_init: float = 1.0                                  # skip D per head (mamba_ssm and the papers: 1)
    norm: bool = True                                    # grouped RMSNorm of the gated output (Mamba-2); MOHAWK: none
    norm_eps: float = 1e-5                               # its epsilon (mamba_ssm default)
    gate_bias: bool = False                              # a learnable bias b in the gate silu(z + b) (phi-mamba)
    gate_init_one: bool = False                          # gate = 1 at init: z rows of in_proj zero, b = silu⁻¹(1)
    chunk_size: int = 64                                 # Q: SSD chunk length (speed and memory, not results)

    def __post_init__(self):
        if self.n_heads is None:
            if (self.expand * self.d_model) % self.head_dim:
                raise ValueError(f"expand*d_model = {self.expand * self.d_model} is not a multiple of head_dim "
                                 f"{self.head_dim}; set n_heads explicitly")
            self.n_heads = self.expand * self.d_model // self.head_dim
        if self.n_heads % self.n_groups:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_groups {self.n_groups}")
        if self.gate_init_one and not self.gate_bias:
            raise ValueError("gate_init_one needs gate_bias=True (the gate silu(z + b) reaches 1 only through b)")

    @property
    def d_inner(self) -> int:  # E
        return self.n_heads * self.head_dim

    @classmethod
    def mohawk(cls, d_model: int, **overrides) -> Mamba2Config:
        """MOHAWK's Phi-Mamba mixer: ``MOHAWK_FIELDS`` with state 64 and expand 1. Heads default to E / 64; pass
        n_heads = the teacher's heads."""
        return cls(d_model=d_model, **{"d_state": 64, "expand": 1, **MOHAWK_FIELDS, **overrides})


# The fields that make a Mamba2Config MOHAWK's mixer (arXiv 2408.10189): discrete decay, identity conv without an
# activation, gate initialised to 1, no norm. Its state size (64) and expand (1) are left to the caller, since
# from_attention fixes those to the teacher's head width.
MOHAWK_FIELDS = {"discrete": True, "conv_activation": False, "conv_init_identity": True, "norm": False,
                 "gate_bias": True, "gate_init_one": True}


class SSMInputs(NamedTuple):
    """What step 1-4 make of the input: the gate, and the scan's arguments (see ``workbench.ops.ssd.ssd_scan``)."""
    z: Tensor              # (B, L, E) gate
    u: Tensor              # (B, L, H, P) inner input the mixing matrix acts on
    dt: Tensor | None      # (B, L, H) Δ, or None for the discrete variant
    A: Tensor              # (H,) Mamba-2, or (B, L, H) per-token log a_t (discrete)
    B: Tensor              # (B, L, G, N)
    C: Tensor              # (B, L, G, N)


class Mamba2(ScanMixer):
    """Mamba-2 (or, with ``config.discrete``, MOHAWK's discrete Mamba-2) token mixer: (B, L, D) -> (B, L, D).
    ``forward``, ``mix_io`` (u = the post-conv x heads, y = the SSM output with the D skip, before gate and norm)
    and ``readout`` (steps 6-7) are ``ScanMixer``'s, around ``_scan``."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = c = config
        self.d_model = c.d_model
        H, N, G, E = c.n_heads, c.d_state, c.n_groups, c.d_inner
        self.conv_channels = E + 2 * G * N
        self.in_proj = AlignedLinear(c.d_model, E + self.conv_channels + H, bias=c.bias)  # [z, x, B, C, dt]
        self.conv = CausalConv1d(self.conv_channels, c.d_conv, bias=c.conv_bias)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(H, c.dt_min, c.dt_max, c.dt_init_floor))
        if not c.discrete:
            self.A_log = nn.Parameter(torch.empty(H).uniform_(*c.A_init_range).log())
        self.D = nn.Parameter(torch.full((H,), float(c.D_init)))
        self.gate = GatedOutput(E, norm=c.norm, groups=G, eps=c.norm_eps, bias=c.gate_bias)
        self.out_proj = nn.Linear(E, c.d_model, bias=c.bias)
        self.state_shape = (H, c.head_dim, N)                                          # the SSM state h (H, P, N)
        self.step_layout = Mamba2StepLayout(H, c.head_dim, G, N, c.conv_activation, c.dt_limit, c.norm_eps)
        if c.conv_init_identity:
            self.conv.init_identity_()
        if c.gate_init_one:
            with torch.no_grad():
                self.in_proj.weight[:E].zero_()
                if self.in_proj.bias is not None:
                    self.in_proj.bias[:E].zero_()
            self.gate.init_gate_one_()

    # ----- steps 1-4, shared by forward, step and the matrix -----

    def _split_projection(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., 2E + 2GN + H) -> z (..., E), xBC (..., E + 2GN), dt (..., H)."""
        c = self.config
        return zxbcdt.split([c.d_inner, self.conv_channels, c.n_heads], dim=-1)

    def _split_xbc(self, xBC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., E + 2GN) -> u (..., H, P), B (..., G, N), C (..., G, N), after the conv's activation."""
        c = self.config
        if c.conv_activation:
            xBC = F.silu(xBC)
        u, B, C = xBC.split([c.d_inner, c.n_groups * c.d_state, c.n_groups * c.d_state], dim=-1)
        return (u.unflatten(-1, (c.n_heads, c.head_dim)), B.unflatten(-1, (c.n_groups, c.d_state)),
                C.unflatten(-1, (c.n_groups, c.d_state)))

    def _decay(self, dt: Tensor) -> tuple[Tensor | None, Tensor]:
        """Step 4: raw dt (..., H) -> (Δ, A) as ``ssd_scan`` takes them (see the module docstring)."""
        return mamba2_decay(dt, self.dt_bias, None if self.config.discrete else self.A_log, self.config.dt_limit)

    def ssm_inputs(self, x: Tensor) -> SSMInputs:
        """Steps 1-4 for x (B, L, D)."""
        z, xBC, dt = self._split_projection(self.in_proj(x))   # 1.
        u, B, C = self._split_xbc(self.conv(xBC))              # 2., 3.
        dt, A = self._decay(dt)                                # 4.
        return SSMInputs(z, u, dt, A, B, C)

    # ----- the Mixer interface -----

    def _scan(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, L, H, P), y = scan + D·u (B, L, H, P), z (B, L, E) for x (B, L, D)."""
        inp = self.ssm_inputs(x)
        y = ssd_scan(inp.u, inp.dt, inp.A, inp.B, inp.C, chunk_size=self.config.chunk_size)  # 5.
        y = y + inp.u * self.D[:, None].to(y.dtype)
        return inp.u, y, inp.z

    def mixing_matrix(self, x: Tensor) -> Tensor:
        """M (B, H, L, L) with mix_io's y = M u per head: (C_l·B_s)·∏_{s<k≤l} a_k·scale_s + D on the diagonal.

        Only what M reads is computed: in_proj's B, C and dt rows (its last rows; z and x, over half of its output,
        are never made), the conv of the B and C channels alone, and the scores C_l·B_s once per group, which the
        R = H/G heads of the group read through a broadcast instead of a copy per head."""
        c = self.config
        H, G, N, E = c.n_heads, c.n_groups, c.d_state, c.d_inner
        Bsz, L, _ = x.shape
        bias = None if self.in_proj.bias is None else self.in_proj.bias[2 * E:]
        BC, dt = aligned_linear(x, self.in_proj.weight[2 * E:], bias).split([2 * G * N, H], dim=-1)  # 1. rows B, C, dt
        conv_bias = None if self.conv.bias is None else self.conv.bias[E:]
        BC = causal_conv1d(BC, self.conv.weight[E:, 0], conv_bias)                   # 2. channels B, C
        if c.conv_activation:
            BC = F.silu(BC)
        B, C = BC.unflatten(-1, (2 * G, N)).split(G, dim=-2)                         # 3. (B, L, G, N) each
        delta, A = self._decay(dt)                                                   # 4.
        log_a = A if delta is None else delta * A                                    # (B, L, H)
        decay = segment_sum(log_a.transpose(1, 2)).exp()                            # (B, H, L, L)
        if delta is not None:
            decay = decay * delta.transpose(1, 2)[:, :, None, :]                     # scale by Δ_s (source)
        dtype = decay.dtype
        scores = torch.einsum("blgn,bsgn->bgls", C.to(dtype), B.to(dtype))           # (B, G, L, L)
        M = decay.view(Bsz, G, H // G, L, L) * scores[:, :, None]                    # (B, G, R, L, L)
        eye = torch.eye(L, device=x.device, dtype=dtype)
        return M.flatten(1, 2) + self.D.to(dtype)[:, None, None] * eye

    def mixing_matrix_ref(self, x: Tensor) -> Tensor:
        """``mixing_matrix`` from the whole of steps 1-4 (``ssm_inputs``) with the scores repeated to every head: the
        reference."""
        c = self.config
        inp = self.ssm_inputs(x)
        L = x.shape[1]
        log_a = inp.A if inp.dt is None else inp.dt * inp.A                        # (B, L, H)
        decay = segment_sum(log_a.transpose(1, 2)).exp()                          # (B, H, L, L)
        if inp.dt is not None:
            decay = decay * inp.dt.transpose(1, 2)[:, :, None, :]                 # scale by Δ_s (source)
        dtype = decay.dtype
        scores = torch.einsum("blgn,bsgn->bgls", inp.C.to(dtype), inp.B.to(dtype))  # (B, G, L, L)
        scores = scores.repeat_interleave(c.n_heads // c.n_groups, dim=1)         # (B, H, L, L)
        eye = torch.eye(L, device=x.device, dtype=dtype)
        return scores * decay + self.D.to(dtype)[:, None, None] * eye

    def init_state(self, batch_size: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """``ScanMixer``'s state and "arrivals" (0-dim int32, 0 between steps): where ``mamba2_step``'s kernel
        counts its programs, the last of which moves the position on."""
        state = super().init_state(batch_size, device, dtype)
        state["arrivals"] = torch.zeros((), dtype=torch.int32, device=state["position"].device)
        return state

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x_t (B, D) -> y_t (B, D). O(1) per token; the state's tensors are updated in place and returned.

        Between the two projections, steps 2-6 are ``workbench.ops.mamba2_step``: one Triton kernel on CUDA (the
        conv's ring buffer, the decay, the state update, its readout, gate and norm, and the position moved on), its
        PyTorch reference elsewhere. in_proj runs unpadded here: a decode step's product reads the weight once, and
        padding it (``AlignedLinear``, for training's GEMMs) would copy the whole weight every token."""
        zxbcdt = F.linear(x_t, self.in_proj.weight, self.in_proj.bias)                   # 1.
        return self.out_proj(self.step_between_projections(zxbcdt, state)), state         # 2.-7.

    def step_between_projections(self, zxbcdt: Tensor, state: dict[str, Tensor]) -> Tensor:
        """Steps 2-6 of ``step``: zxbcdt (B, 2E + 2GN + H), in_proj's output -> the gated output g (B, E) that out_proj
        reads; the state moves on by one token. For a decode step that computes the projections itself
        (``workbench.generation.compile`` folds the layer's norm into in_proj)."""
        return mamba2_step(zxbcdt, state["conv"], state["ssm"], state["position"], state["arrivals"],
                           self.step_weights(), self.step_layout)                        # 2.-6., the position

    def step_weights(self) -> Mamba2StepWeights:
        """The parameters ``mamba2_step`` reads (views, no copies)."""
        return Mamba2StepWeights(self.conv.weight[:, 0], self.conv.bias, self.dt_bias,
                                 None if self.config.discrete else self.A_log, self.D, self.gate.bias,
                                 self.gate.weight)

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, L, D) -> (forward's y, the state ``step`` reaches after x) from one parallel pass: ``extend`` from
        the empty state (the SSD scan's final state, the conv's last W inputs in the ring buffer's slots, and L)."""
        return self.extend(x, self.init_state(x.shape[0], device=x.device, dtype=x.dtype))

    def extend(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, L, D) continuing from ``state`` -> (y (B, L, D), the state after them) in one parallel pass: the conv
        reads the ring buffer's last inputs, the SSD scan starts from the state's (B, H, P, N); updated in place."""
        c = self.config
        z, xBC, dt = self._split_projection(self.in_proj(x))                                  # 1.
        u, B, C = self._split_xbc(self.conv.extend(xBC, state["conv"], state["position"]))    # 2., 3.
        dt, A = self._decay(dt)                                                               # 4.
        y, h = ssd_scan(u, dt, A, B, C, chunk_size=c.chunk_size, initial_state=state["ssm"],
                        return_final_state=True)                                              # 5.
        y = y + u * self.D[:, None].to(y.dtype)
        state["ssm"].copy_(h)
        state["position"].add_(x.shape[1])
        return self.readout(y, z), state                                                      # 6., 7.

    def verify(self, x: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, T, D), a few drafted tokens after ``state`` -> (y (B, T, D) as ``extend`` gives, pending), the state
        unchanged. ``pending`` holds the conv's window (``CausalConv1d.window``) and the SSM state after each of
        the T positions (B, T, H, P, N), from which ``accept`` moves the state on by any n <= T of them. The states
        are the recurrence unrolled in closed form, h_t = e^{c_t} h_0 + Σ_{s<=t} e^{c_t - c_s} Δ_s u_s ⊗ B_s with c
        the running sum of log a: O(T²) work, for the few tokens of a verification, not a prompt. Device work only,
        so it can be captured in a CUDA graph."""
        c = self.config
        H, G = c.n_heads, c.n_groups
        h0 = state["ssm"]                                                                 # (B, H, P, N)
        T = x.shape[1]
        z, xBC, dt = self._split_projection(self.in_proj(x))                              # 1.
        conv, window = self.conv.window(xBC, state["conv"], state["position"])
        u, B, C = self._split_xbc(conv)                                                   # 2., 3.
        delta, A = self._decay(dt)                                                        # 4. (B, T, H)
        u = u.to(h0.dtype)                                                                # (B, T, H, P)
        log_a = (A if delta is None else delta * A).to(h0.dtype)                         # (B, T, H)
        u_in = u if delta is None else u * delta[..., None].to(h0.dtype)
        Bs, P, N = x.shape[0], u.shape[-1], h0.shape[-1]
        R = H // G                                                                        # heads per B/C group
        B, C = B.to(h0.dtype), C.to(h0.dtype)                                             # (B, T, G, N), read per group
        cum = log_a.cumsum(dim=1)                                                         # (B, T, H)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()               # (t, s): s <= t
        decay = (cum[:, :, None] - cum[:, None, :]).masked_fill(~causal[:, :, None], -math.inf).exp()  # (B, t, s, H)
        inflow = torch.einsum("btsgr,bsgrp,bsgn->btgrpn", decay.view(Bs, T, T, G, R),
                              u_in.view(Bs, T, G, R, P), B)                               # (B, T, G, R, P, N)
        states = cum.exp()[..., None, None] * h0[:, None] + inflow.reshape(Bs, T, H, P, N)  # 5. (B, T, H, P, N)
        y = torch.einsum("btgrpn,btgn->btgrp", states.view(Bs, T, G, R, P, N), C).reshape(Bs, T, H, P)
        y = y + u * self.D.to(h0.dtype)[:, None]
        return self.readout(y, z), {"conv": window, "ssm": states}                      # 6., 7.

    def accept(self, state: dict[str, Tensor], pending: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """``state`` moved on, in place, by the first ``n`` tokens of the ``verify`` call that returned ``pending``:
        the SSM state after its n-th position, the conv's ring buffer by its first n inputs."""
        state["ssm"].copy_(pending["ssm"][:, n - 1])
        self.conv.keep(pending["conv"], state["conv"], state["position"], n)
        state["position"].add_(n)
        return state

    # ----- initialisation from a teacher's attention (Mamba in the Llama) -----

    @classmethod
    def from_attention(cls, attn: AttentionWeights, config: Mamba2Config | None = None) -> Mamba2:
        """A Mamba-2 mixer initialised from one attention block (rows: ``workbench.students.init``; the rest: the
        module docstring).

        ``config`` may set everything the attention does not fix (discrete, conv, dt, norm, ...); it must agree with
        the attention's layout: d_model = D, n_heads = H, head_dim = d_state = P, n_groups = H.
        """
        H, P, D = attn.num_heads, attn.head_dim, attn.d_model
        if config is None:
            config = Mamba2Config(d_model=D, n_heads=H, head_dim=P, d_state=P, n_groups=H, bias=has_bias(attn),
                                  conv_init_identity=True, gate_bias=True, gate_init_one=True)
        layout = {"d_model": ("D", D), "n_heads": ("H", H), "head_dim": ("P", P), "d_state": ("P", P),
                  "n_groups": ("H", H)}
        check_fits(attn, config, layout, mixer="Mamba-2")

        mixer = cls(config)
        E = H * P  # in_proj rows: [z, x, B, C, dt]
        load_attention(mixer.in_proj, mixer.out_proj, attn, {"v": slice(E, 2 * E), "k": slice(2 * E, 3 * E),
                                                              "q": slice(3 * E, 4 * E)})
        return mixer
