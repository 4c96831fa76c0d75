"""One decode step of the Mamba-2 mixer between its two projections (Dao & Gu, arXiv 2405.21060; MOHAWK's discrete
variant, arXiv 2408.10189), fused into one kernel for decoding.

Shapes: B batch, E = H·P inner width, H heads, P head width, G groups of B/C (R = H/G heads per group), N state size,
W conv width, CH = E + 2·G·N conv channels. The in_proj's output of one token, zxbcdt (B, 2E + 2GN + H), holds
[z (E) | x (E), B (GN), C (GN) | dt (H)] (mamba_ssm's order); the step, the numbers of ``workbench.students.mamba2``:

  2. the conv's ring buffer (B, CH, W) takes the token's x, B, C in slot position mod W; each channel's output is
     the bias plus the W taps over its last W inputs, then SiLU (Mamba-2; MOHAWK: none)
  4. Δ = clamp(softplus(dt + dt_bias), dt_limit), log a = Δ·(-exp(A_log)), input scale Δ (Mamba-2); discrete:
     log a = -softplus(dt + dt_bias), scale 1
  5. h ← a·h + scale·u ⊗ B_g (the state (B, H, P, N), in place), y = h·C_g + D·u
  6. the gate: y ⊙ silu(z + b), RMS-normalised over each group's E/G channels and scaled (Mamba-2; MOHAWK: gate only)
  7. the position counter moves on by one

and returns the gated output (B, E) that out_proj reads. ``arrivals`` (a 0-dim int32 tensor, 0 between steps) is the
kernel's count of its programs that are done with the position: every program reads the position in step 2, so the
counter may move on only after the last of them has, and the last to arrive is the one that moves it (and sets the
count back to 0). A decode step then needs no kernel of its own to move the counter (on a CUDA graph of small
kernels, one per layer). The reference moves it after its ops and leaves ``arrivals`` alone.

``mamba2_step_ref`` is that step in PyTorch ops (a kernel or more each); ``mamba2_step_triton`` is one
Triton kernel, one program per (row, head), which reads the position from the device, so a CUDA graph captures it;
to ``torch.compile`` the kernel is one operator (``workbench::mamba2_step_kernel``), so a compiled decode step
holds it. Where a group holds several heads (R > 1), the norm over the group's channels runs after the kernel in
PyTorch. ``mamba2_step`` runs the backend ``workbench.ops.backend`` selects
for the device ("triton" on CUDA with Triton importable, else "ref").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.ops.backend import Backend, register, select, triton_installed
from workbench.ops.causal_conv import causal_conv1d_step
from workbench.ops.gated_norm import gated_rms_norm, group_rms_norm


@dataclass(frozen=True)
class Mamba2StepLayout:
    n_heads: int                                          # H
    head_dim: int                                         # P
    n_groups: int                                         # G
    d_state: int                                          # N
    conv_activation: bool = True                          # SiLU after the conv (Mamba-2); MOHAWK: none
    dt_limit: tuple[float, float] = (0.0, math.inf)       # Δ clamped to this range (no clamp by default)
    norm_eps: float = 1e-5                                # the gated RMSNorm's epsilon


class Mamba2StepWeights(NamedTuple):
    conv_weight: Tensor          # (CH, W)
    conv_bias: Tensor | None     # (CH,)
    dt_bias: Tensor              # (H,)
    A_log: Tensor | None         # (H,) Mamba-2; None: the discrete variant
    D: Tensor                    # (H,) skip
    gate_bias: Tensor | None     # (E,) the gate's bias b
    norm_weight: Tensor | None   # (E,) the norm's scale; None: no norm


def mamba2_decay(dt: Tensor, dt_bias: Tensor, A_log: Tensor | None,
                 dt_limit: tuple[float, float] = (0.0, math.inf)) -> tuple[Tensor | None, Tensor]:
    """Step 4: raw dt (..., H) -> (Δ (..., H) in at least float32, A (H,)) as ``ssd_scan`` takes them (Mamba-2), or
    (None, log a_t (..., H)) for the discrete variant (``A_log`` None)."""
    dt = dt.to(torch.promote_types(dt.dtype, torch.float32))
    raw = dt + dt_bias.to(dt.dtype)
    if A_log is None:
        return None, -F.softplus(raw)                                           # log a_t, per token
    delta = F.softplus(raw)
    if dt_limit != (0.0, math.inf):                                             # softplus already meets (0, ∞)
        delta = delta.clamp(*dt_limit)
    return delta, -torch.exp(A_log.to(raw.dtype))


def mamba2_step_ref(zxbcdt: Tensor, conv_state: Tensor, ssm_state: Tensor, position: Tensor, arrivals: Tensor,
                    weights: Mamba2StepWeights, layout: Mamba2StepLayout) -> Tensor:
    """zxbcdt (B, 2E + 2GN + H), conv_state (B, CH, W) and ssm_state (B, H, P, N) updated in place, position (0-dim
    integer tensor) moved on by one, arrivals (0-dim int32, the kernel's; not read here) -> the gated output (B, E)
    in zxbcdt's dtype. PyTorch ops (the reference); grouped heads are viewed as (B, G, R·P, N), so B and C are
    broadcast, not repeated."""
    H, P, G, N = layout.n_heads, layout.head_dim, layout.n_groups, layout.d_state
    E = H * P
    z, xBC, dt = zxbcdt.split([E, E + 2 * G * N, H], dim=-1)
    xBC = causal_conv1d_step(xBC, conv_state, position, weights.conv_weight, weights.conv_bias)     # 2.
    if layout.conv_activation:
        xBC = F.silu(xBC)
    u, B, C = xBC.split([E, G * N, G * N], dim=-1)
    h = ssm_state                                                                        # (B, H, P, N)
    Bsz = h.shape[0]
    delta, A = mamba2_decay(dt, weights.dt_bias, weights.A_log, layout.dt_limit)        # 4. (B, H)
    u = u.unflatten(-1, (H, P)).to(h.dtype)                                              # (B, H, P)
    log_a = A if delta is None else delta * A
    u_in = u if delta is None else u * delta[..., None].to(h.dtype)
    grouped = h.view(Bsz, G, -1, N)                                                      # (B, G, R·P, N)
    h.mul_(log_a.exp()[..., None, None].to(h.dtype))                                     # 5.
    grouped.addcmul_(u_in.reshape(Bsz, G, -1, 1), B.view(Bsz, G, 1, N).to(h.dtype))
    y = (grouped @ C.view(Bsz, G, N, 1).to(h.dtype)).view(u.shape)                       # (B, H, P)
    y = y.addcmul_(u, weights.D.to(h.dtype)[:, None])
    out = gated_rms_norm(y.flatten(-2).to(z.dtype), z, weights.gate_bias, weights.norm_weight, G,    # 6.
                         layout.norm_eps)
    position.add_(1)                                                                     # 7.
    return out


@torch.library.custom_op("workbench::mamba2_step_kernel",
                         mutates_args=("conv_state", "ssm_state", "position", "arrivals"))
def _step_kernel_op(zxbcdt: Tensor, conv_state: Tensor, ssm_state: Tensor, position: Tensor, arrivals: Tensor,
                    conv_weight: Tensor, conv_bias: Tensor | None, dt_bias: Tensor, A_log: Tensor | None, D: Tensor,
                    gate_bias: Tensor | None, norm_weight: Tensor | None, n_heads: int, head_dim: int, n_groups: int,
                    d_state: int, conv_activation: bool, dt_lo: float, dt_hi: float, norm_here: bool, eps: float,
                    out_dtype: torch.dtype) -> Tensor:
    """The kernel's launch as an operator torch.compile keeps whole (an opaque call in its graph, which the CUDA
    graph then captures): the states and the position updated in place, the gated output (B, E) returned in
    ``out_dtype``."""
    from workbench.ops.mamba2_step_kernel import launch  # imports Triton

    out = torch.empty(zxbcdt.shape[0], n_heads * head_dim, device=zxbcdt.device, dtype=out_dtype)
    launch(zxbcdt, conv_state, ssm_state, position, arrivals, conv_weight, conv_bias, dt_bias, A_log, D, gate_bias,
           norm_weight, out, n_heads, head_dim, n_groups, d_state, conv_activation, dt_lo, dt_hi, norm_here, eps)
    return out


@_step_kernel_op.register_fake
def _(zxbcdt, conv_state, ssm_state, position, arrivals, conv_weight, conv_bias, dt_bias, A_log, D, gate_bias,
      norm_weight, n_heads, head_dim, n_groups, d_state, conv_activation, dt_lo, dt_hi, norm_here, eps, out_dtype):
    return zxbcdt.new_empty(zxbcdt.shape[0], n_heads * head_dim, dtype=out_dtype)


def mamba2_step_triton(zxbcdt: Tensor, conv_state: Tensor, ssm_state: Tensor, position: Tensor, arrivals: Tensor,
                       weights: Mamba2StepWeights, layout: Mamba2StepLayout) -> Tensor:
    """``mamba2_step_ref`` as one Triton kernel (module docstring), plus the group norm in PyTorch where a group holds
    several heads. The states' last dimension and zxbcdt's rows must be contiguous."""
    if not triton_installed():
        raise RuntimeError("mamba2_step_triton needs Triton (pip install triton); use mamba2_step_ref")
    H, P, G = layout.n_heads, layout.head_dim, layout.n_groups
    if zxbcdt.stride(-1) != 1 or conv_state.stride(-1) != 1 or weights.conv_weight.stride(-1) != 1:
        raise ValueError("mamba2_step_triton reads zxbcdt, the conv buffer and the conv weight along contiguous rows")
    if arrivals.dtype != torch.int32 or arrivals.numel() != 1:
        raise ValueError(f"mamba2_step_triton counts its programs in a 0-dim int32 tensor (the state's 'arrivals', "
                         f"from Mamba2.init_state), not {arrivals.dtype} of shape {tuple(arrivals.shape)}")
    norm = weights.norm_weight is not None
    norm_here = norm and G == H                             # each group one head: its norm inside the kernel
    out = _step_kernel_op(zxbcdt, conv_state, ssm_state, position, arrivals, weights.conv_weight, weights.conv_bias,
                          weights.dt_bias, weights.A_log, weights.D, weights.gate_bias, weights.norm_weight, H, P, G,
                          layout.d_state, layout.conv_activation, float(layout.dt_limit[0]),
                          float(layout.dt_limit[1]), norm_here, float(layout.norm_eps),
                          torch.float32 if norm and not norm_here else zxbcdt.dtype)
    if norm and not norm_here:                              # the gated output (float32), normalised over each group
        out = group_rms_norm(out, weights.norm_weight, G, layout.norm_eps)
    return out.to(zxbcdt.dtype)


def mamba2_step(zxbcdt: Tensor, conv_state: Tensor, ssm_state: Tensor, position: Tensor, arrivals: Tensor,
                weights: Mamba2StepWeights, layout: Mamba2StepLayout) -> Tensor:
    """The step of the module docstring on the backend selected for zxbcdt's device."""
    return select("mamba2_step", zxbcdt.device).fn(zxbcdt, conv_state, ssm_state, position, arrivals, weights, layout)


register("mamba2_step", Backend("triton", mamba2_step_triton,
                                available=lambda device: device.type == "cuda" and triton_installed(),
                                note="one Triton kernel per step: conv update, SSM update, gate and norm"))
register("mamba2_step", Backend("ref", mamba2_step_ref, available=lambda device: True,
                                note="PyTorch ops, a kernel or more each"))
