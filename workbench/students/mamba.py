"""Mamba-1 mixer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752).

Shapes: B batch, L length, D model width, E inner width (channels), N state size per channel, R rank of the Δ
projection, G groups of B/C (head layout only), W conv width.

Forward, step by step (the numbers appear again in the code):
  1. in_proj: x (B, L, D) -> x (E) | z (E) [| B (G·N) | C (G·N) in the head layout]   (mamba_ssm's and transformers'
     order, so their Mamba weights copy over as they are)
  2. causal depthwise conv (width W) over x, then SiLU: u (B, L, E)
  3. x_proj: u -> dt (R) [| B (N) | C (N) in Mamba-1's layout]; dt_proj: (R) -> (E), Δ = softplus(dt_proj(dt))
  4. selective scan (``workbench.ops.selective_scan``) per channel e with A = -exp(A_log) (E, N):
       h_t = exp(Δ_t,e·A_e) ⊙ h_{t-1} + Δ_t,e·u_t,e·B_t,   y_t,e = h_t·C_t + D_e·u_t,e
  5. gate: y ⊙ silu(z)   (shared with Mamba-2: ``_ssm.GatedOutput`` without norm)
  6. out_proj: (E) -> (D)
Mixing matrix, per channel (the "heads" of the Mixer interface are the E channels, P = 1):
  M_e[l, s] = Σ_n C_l,n · exp(Σ_{k=s+1..l} Δ_k,e A_e,n) · Δ_s,e B_s,n, plus D_e on the diagonal.

Two layouts of B and C (``MambaConfig.bc_heads``):
  0 (Mamba-1): one B and one C of N each, projected by x_proj from the convolved u; all channels share them.
  G > 0 (Mamba in the Llama's Mamba-1 student, arXiv 2408.15237): B and C projected from the mixer's input x in G
     groups of N; channel e reads group e // (E / G). Only this layout can take attention weights.

Initialising from attention (``Mamba.from_attention``; head layout with G = H query heads, N = P, E = H·P): V -> x,
K -> B, Q -> C, O -> out_proj, rows and GQA rule as in the table of ``workbench.students.init``.
Fresh: z rows, conv, x_proj (now only the Δ input), dt_proj (Δ log-uniform in [dt_min, dt_max]), A = -(1..N) per
channel (S4D-real, Mamba-1's init), D = 1. Unlike Mamba-2 the decay is per (channel, state), so C_l·B_s = q_l·k_s
holds for each head's channels but every channel weighs the N state products with its own decays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workbench.ops.selective_scan import selective_scan
from workbench.ops.ssd import segment_sum
from workbench.students._conv import CausalConv1d
from workbench.students._ssm import GatedOutput, ScanMixer, at_least_fp32, inverse_softplus_dt
from workbench.students.init import check_fits, has_bias, load_attention
from workbench.teachers.anatomy import AttentionWeights


@dataclass
class MambaConfig:
    d_model: int                  # D: width of the residual stream read and written
    d_state: int = 16             # N: state size per channel (Mamba-1 default; from attention: the head dim)
    expand: int = 2               # inner width E = expand * D, used when d_inner is None
    d_inner: int | None = None    # E explicitly (from attention: heads * head dim)
    d_conv: int = 4               # W: taps of the causal depthwise conv over x
    conv_bias: bool = True        # the conv has a bias (mamba_ssm default)
    bias: bool = False            # biases on in_proj and out_proj (mamba_ssm default: none)
    dt_rank: int | None = None    # R: rank of the Δ projection; None: ceil(D / 16) (Mamba-1's "auto")
    dt_min: float = 0.001         # Δ at init is log-uniform in [dt_min, dt_max] (mamba_ssm)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4   # ... and at least this
    dt_scale: float = 1.0         # dt_proj weights uniform in ±dt_scale/√R (mamba_ssm's "random" init)
    bc_heads: int = 0             # 0: Mamba-1's shared B, C from x_proj; G > 0: B, C from the input in G groups (MiL)
    D_init: float = 1.0           # skip D per channel (mamba_ssm: 1)
    chunk_size: int = 64          # Q: selective-scan chunk length (speed and memory, not results)

    def __post_init__(self):
        if self.d_inner is None:
            self.d_inner = self.expand * self.d_model
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        if self.bc_heads and self.d_inner % self.bc_heads:
            raise ValueError(f"d_inner {self.d_inner} must be a multiple of bc_heads {self.bc_heads}")


class SSMInputs(NamedTuple):
    """What steps 1-3 make of the input: the gate, and the selective scan's arguments."""
    z: Tensor       # (B, L, E) gate
    u: Tensor       # (B, L, E) inner input, post conv and SiLU
    dt: Tensor      # (B, L, E) Δ, after softplus (at least float32)
    A: Tensor       # (E, N)
    B: Tensor       # (B, L, N), or (B, L, G, N) in the head layout
    C: Tensor       # like B


class Mamba(ScanMixer):
    """Mamba-1 token mixer: (B, L, D) -> (B, L, D). ``forward``, ``mix_io`` ((u, y), both (B, L, E, 1): each channel
    is a "head" of width 1; y before the gate), ``readout`` (steps 5-6) and ``init_state`` are ``ScanMixer``'s,
    around ``_scan``."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = c = config
        self.d_model = c.d_model
        E, N, R, G = c.d_inner, c.d_state, c.dt_rank, c.bc_heads
        self.in_proj = nn.Linear(c.d_model, 2 * E + 2 * G * N, bias=c.bias)   # [x, z(, B, C)]
        self.conv = CausalConv1d(E, c.d_conv, bias=c.conv_bias)
        self.x_proj = nn.Linear(E, R + (0 if G else 2 * N), bias=False)       # [dt(, B, C)]
        self.dt_proj = nn.Linear(R, E, bias=True)
        with torch.no_grad():
            bound = c.dt_scale / math.sqrt(R)
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus_dt(E, c.dt_min, c.dt_max, c.dt_init_floor))
        self.A_log = nn.Parameter(torch.arange(1, N + 1, dtype=torch.float32).log().repeat(E, 1))  # S4D-real
        self.D = nn.Parameter(torch.full((E,), float(c.D_init)))
        self.gate = GatedOutput(E, norm=False)
        self.out_proj = nn.Linear(E, c.d_model, bias=c.bias)
        self.state_shape = (E, N)                                             # the SSM state h (E, N)

    # ----- steps 1-3, shared by forward, step and the matrix -----

    def _inputs(self, xzbc: Tensor, u_pre: Tensor) -> SSMInputs:
        """From in_proj's output (..., 2E [+ 2GN]) and the conv output (..., E) to the scan's inputs."""
        c = self.config
        E, N, G = c.d_inner, c.d_state, c.bc_heads
        _, z, B_in, C_in = xzbc.split([E, E, G * N, G * N], dim=-1)
        u = F.silu(u_pre)                                                             # 2.
        if G:
            dt = self.x_proj(u)                                                       # 3.
            B, C = B_in.unflatten(-1, (G, N)), C_in.unflatten(-1, (G, N))
        else:
            dt, B, C = self.x_proj(u).split([c.dt_rank, N, N], dim=-1)                # 3.
        dt = F.softplus(at_least_fp32(self.dt_proj(dt)))
        return SSMInputs(z, u, dt, -torch.exp(self.A_log.to(dt.dtype)), B, C)

    def ssm_inputs(self, x: Tensor) -> SSMInputs:
        """Steps 1-3 for x (B, L, D)."""
        xzbc = self.in_proj(x)                                                        # 1.
        return self._inputs(xzbc, self.conv(xzbc[..., :self.config.d_inner]))         # 2.

    # ----- the Mixer interface -----

    def _scan(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, L, E, 1), y = scan + D·u (B, L, E, 1), z (B, L, E) for x (B, L, D): channels as heads of width 1."""
        inp = self.ssm_inputs(x)
        y = selective_scan(inp.u, inp.dt, inp.A, inp.B, inp.C, D=self.D, chunk_size=self.config.chunk_size)  # 4.
        return inp.u[..., None], y[..., None], inp.z

    def mixing_matrix(self, x: Tensor, channels: Sequence[int] | Tensor | None = None) -> Tensor:
        """M (B, E, L, L), or (B, len(channels), L, L) for a subset: mix_io's y[..., e, 0] = M[:, e] @ u[..., e, 0].

        Memory B·|channels|·L² (the N state products are summed one at a time); pick channels for long inputs.
        """
        c = self.config
        inp = self.ssm_inputs(x)
        idx = torch.arange(c.d_inner) if channels is None else torch.as_tensor(channels)
        idx = idx.to(x.device)
        dt = inp.dt[:, :, idx].transpose(1, 2)                                     # (B, c, L)
        dtype = dt.dtype
        A = inp.A[idx]                                                             # (c, N)
        if c.bc_heads:  # channel e reads group e // (E / G)
            group = idx // (c.d_inner // c.bc_heads)
            B, C = inp.B[:, :, group].to(dtype), inp.C[:, :, group].to(dtype)      # (B, L, c, N)
        else:
            B, C = inp.B[:, :, None].to(dtype), inp.C[:, :, None].to(dtype)        # (B, L, 1, N)
        # Σ_{k=s+1..l} Δ_k per channel, with -inf above the diagonal; A ≤ 0 makes each decay exp(A_n · S) ≤ 1.
        S = segment_sum(dt)                                                        # (B, c, L, L)
        causal = torch.isfinite(S)
        S = S.masked_fill(~causal, 0)
        M = torch.zeros_like(S)
        for n in range(c.d_state):
            outer = C[..., n].transpose(1, 2)[..., :, None] * B[..., n].transpose(1, 2)[..., None, :]  # (B, c|1, L, L)
            M = M + outer * torch.exp(A[:, n, None, None] * S)
        M = M * causal * dt[:, :, None, :]                                         # B̄_s = Δ_s B_s
        eye = torch.eye(x.shape[1], device=x.device, dtype=dtype)
        return M + self.D.to(dtype)[idx, None, None] * eye

    def step(self, x_t: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """x_t (B, D) -> y_t (B, D). O(1) per token; the state's tensors are updated in place and returned."""
        c = self.config
        xzbc = self.in_proj(x_t)                                                             # 1.
        u_pre = self.conv.step(xzbc[..., :c.d_inner], state["conv"], state["position"])      # 2.
        inp = self._inputs(xzbc, u_pre)                                                      # 3.
        h = state["ssm"]                                                                     # (B, E, N)
        B, C = inp.B.to(h.dtype), inp.C.to(h.dtype)
        if c.bc_heads:  # (B, G, N) -> (B, E, N)
            B, C = (t.repeat_interleave(c.d_inner // c.bc_heads, dim=1) for t in (B, C))
        else:           # (B, N) -> (B, 1, N)
            B, C = B[:, None], C[:, None]
        dt, u = inp.dt.to(h.dtype), inp.u.to(h.dtype)
        h.mul_(torch.exp(dt[..., None] * inp.A.to(h.dtype))).add_((dt * u)[..., None] * B)  # 4.
        y = (h * C).sum(-1) + self.D.to(h.dtype) * u                                         # (B, E)
        state["position"].add_(1)
        return self.readout(y[..., None], inp.z), state                                      # 5., 6.

    def prefill(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, L, D) -> (forward's y, the state ``step`` reaches after x) from one parallel pass: the selective
        scan's last state, the conv's last W inputs in the ring buffer's slots (position p in slot p mod W), and L."""
        c = self.config
        Bsz, L, _ = x.shape
        xzbc = self.in_proj(x)                                                               # 1.
        conv_in = xzbc[..., :c.d_inner]
        inp = self._inputs(xzbc, self.conv(conv_in))                                         # 2., 3.
        y, h = selective_scan(inp.u, inp.dt, inp.A, inp.B, inp.C, D=self.D, return_last_state=True,
                              chunk_size=c.chunk_size)                                       # 4.
        state = self.init_state(Bsz, device=x.device, dtype=x.dtype)
        state["conv"].copy_(self.conv.state_after(conv_in))
        state["ssm"].copy_(h)
        state["position"].fill_(L)
        return self.readout(y[..., None], inp.z), state                                      # 5., 6.

    # ----- initialisation from a teacher's attention (Mamba in the Llama, head layout) -----

    @classmethod
    def from_attention(cls, attn: AttentionWeights, config: MambaConfig | None = None) -> Mamba:
        """A Mamba-1 mixer (head layout) initialised from one attention block (rows: ``workbench.students.init``).

        ``config`` may set everything the attention does not fix (conv, dt, ...); it must agree with the attention's
        layout: d_model = D, d_inner = H·P, d_state = P, bc_heads = H.
        """
        H, P, D = attn.num_heads, attn.head_dim, attn.d_model
        if config is None:
            config = MambaConfig(d_model=D, d_inner=H * P, d_state=P, bc_heads=H, bias=has_bias(attn))
        own_layout = ("Mamba-1's own layout (bc_heads=0) projects B and C from the convolved inner stream, where K "
                      "and Q have no place; " if config.bc_heads == 0 else "")
        layout = {"d_model": ("D", D), "d_inner": ("H*P", H * P), "d_state": ("P", P), "bc_heads": ("H", H)}
        check_fits(attn, config, layout, mixer="Mamba", hint=own_layout)

        mixer = cls(config)
        E = H * P  # in_proj rows: [x, z, B, C]
        load_attention(mixer.in_proj, mixer.out_proj, attn, {"v": slice(0, E), "k": slice(2 * E, 3 * E),
                                                              "q": slice(3 * E, 4 * E)})
        return mixer
