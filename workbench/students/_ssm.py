"""What the two SSM mixers (``workbench.students.mamba``, ``workbench.students.mamba2``) share around their scans.

Shapes: B batch, L length, D model width, E inner width, H heads, P head width (E = H·P; Mamba-1's channels are H = E
heads of width P = 1), W conv width.

Both are the same frame with a different scan in the middle:

    in_proj -> causal depthwise conv -> scan, plus the skip D·u -> gate (and norm) -> out_proj

``ScanMixer`` is that frame: a mixer gives its layers and its ``_scan``, and gets ``forward``, ``mix_io``, ``readout``
and ``init_state``. ``GatedOutput`` is the gate; ``at_least_fp32`` and ``inverse_softplus_dt`` are the precision
rule and the Δ initialisation both use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from workbench.ops.gated_norm import gated_rms_norm
from workbench.students._conv import CausalConv1d
from workbench.students.base import Mixer

SILU_INVERSE_OF_ONE = 1.2784645427610738  # the z with z·sigmoid(z) = 1, so a gate silu(z + b) starts at exactly 1


def at_least_fp32(t: Tensor) -> Tensor:
    """float32 for half-precision input, unchanged for float32/float64 (decays and states need the range)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Biases b (n,) with softplus(b) log-uniform in [dt_min, dt_max] and at least ``floor`` (Mamba-1/2's Δ init)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus⁻¹(dt)


class GatedOutput(nn.Module):
    """y ⊙ silu(z + b), optionally RMS-normalised over G groups of channels and scaled (shared by Mamba and Mamba-2).

    ``norm=True`` is mamba_ssm's RMSNormGated with norm_before_gate=False (Mamba-2); ``norm=False`` is Mamba-1's
    output gate and MOHAWK's. The bias b exists only with ``bias=True`` (phi-mamba's z_bias).
    """

    def __init__(self, width: int, norm: bool, groups: int = 1, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(width)) if norm else None
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    @torch.no_grad()
    def init_gate_one_(self) -> None:
        """With z = 0 (zeroed z projection) the gate silu(0 + b) is exactly 1."""
        if self.bias is None:
            raise ValueError("a gate initialised to 1 needs a gate bias (gate_bias=True)")
        self.bias.fill_(SILU_INVERSE_OF_ONE)

    def forward(self, y: Tensor, z: Tensor) -> Tensor:  # (..., E), (..., E) -> (..., E)
        return gated_rms_norm(y, z, self.bias, self.weight, self.groups, self.eps)


class ScanMixer(Mixer):
    """The frame of an SSM mixer: in_proj -> conv -> scan + D·u -> gate -> out_proj (module docstring).

    A subclass builds ``in_proj``, ``conv``, ``gate`` and ``out_proj``, sets ``state_shape`` (its SSM state per
    sequence) and defines ``_scan``; the parallel ``forward``, ``mix_io``, ``readout`` and the empty decode state
    follow here. Its ``step`` (and ``prefill`` / ``extend`` where it has a faster one) stay its own.
    """

    in_proj: nn.Linear
    conv: CausalConv1d
    gate: GatedOutput
    out_proj: nn.Linear
    state_shape: tuple[int, ...]   # the SSM state of one sequence, e.g. (H, P, N)

    def _scan(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u (B, L, H, P) the inner input, y = scan + D·u (B, L, H, P) before the gate, z (B, L, E) the gate."""
        raise NotImplementedError

    def readout(self, y: Tensor, z: Tensor) -> Tensor:
        """Gate and out_proj: y (..., H, P) with the gate z (..., E) -> (..., D)."""
        return self.out_proj(self.gate(y.flatten(-2).to(z.dtype), z))

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        _, y, z = self._scan(x)
        return self.readout(y, z)

    def mix_io(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(u, y), both (B, L, H, P): the inner input and the scan output with the D skip, before the gate."""
        u, y, _ = self._scan(x)
        return u, y

    def init_state(self, batch_size: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """conv ring buffer (B, conv channels, W), SSM state (B, *state_shape) in at least float32, position (0-dim
        long)."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return {
            "conv": self.conv.init_state(batch_size, device, dtype),
            "ssm": torch.zeros(batch_size, *self.state_shape, device=device,
                               dtype=torch.promote_types(dtype, torch.float32)),
            "position": torch.zeros((), dtype=torch.long, device=device),
        }
