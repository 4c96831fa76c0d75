"""What the Hyena-family mixers (``workbench.students.hyena``, ``workbench.students.multihyena``, and the Laughing
Hyena mixers built on them) share: their config, the implicit long filter (Hyena Hierarchy, Poli et al., arXiv
2302.10866, "Hyena filters"), and ``HyenaFamily``, the base that makes a mixer's long filters and takes a teacher
attention's projections.

Shapes: D model width, L length, N filters (Hyena: one per channel; MultiHyena: one per head), W filter MLP width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from workbench.students._conv import CausalConv1d
from workbench.students.base import Mixer
from workbench.students.init import has_bias, load_attention, stacked_rows
from workbench.teachers.anatomy import AttentionWeights


@dataclass
class HyenaConfig:
    max_len: int = 2048          # longest sequence: positions are normalised by it; filter(L) and step refuse beyond it
    short_conv: int = 3          # width of the causal depthwise conv on the projected streams (Hyena's short filters)
    filter_width: int = 64       # hidden width W of the implicit filter MLP (safari calls it the filter "order")
    filter_layers: int = 3       # Linear + sin layers of the MLP before its output layer (safari: 1 + 2 inner MLPs)
    filter_sin_freq: float = 1.0 # initial frequency w of the sin(w * a) activations, learned per unit (safari 1)
    pos_bands: int = 8           # pairs (cos, sin)(2 pi k t / max_len), k = 1..bands, fed to the MLP beside t / max_len
    decay_fast: float = 0.3      # the fastest channel's window falls to decay_target at this fraction of max_len
    decay_slow: float = 1.5      # ... and the slowest channel's at this fraction (rates are spread evenly between)
    decay_target: float = 1e-2   # the window value that defines the two decay rates above
    decay_shift: float = 0.0     # constant added to the window (0: pure exponential decay)
    bias: bool = False           # biases on in_proj / out_proj (from_attention turns them on if the teacher has any)


class Sin(nn.Module):
    """sin(w * a) with a learned frequency w per unit (the implicit filter's activation in Hyena Hierarchy)."""

    def __init__(self, width: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), freq))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * a)


class ImplicitFilter(nn.Module):
    """A bank of N long filters h (N, L), h[n, t] = window[n, t] * MLP(z(t))[n] (Hyena Hierarchy, "Hyena filters").

    z(t) = (t', cos(2 pi k t'), sin(2 pi k t') for k = 1..bands) with t' = t / max_len, so filter(L) is always the first
    L taps of filter(max_len). window[n, t] = exp(-rate_n t') + shift with fixed rates spread evenly from the slowest
    (channel 0) to the fastest (channel N-1) decay of the config.
    """

    def __init__(self, num_filters: int, config: HyenaConfig):
        super().__init__()
        self.max_len = config.max_len
        self.register_buffer("freqs", torch.arange(1, config.pos_bands + 1, dtype=torch.float32))  # (bands,)
        slow = -math.log(config.decay_target) / config.decay_slow
        fast = -math.log(config.decay_target) / config.decay_fast
        self.register_buffer("rates", torch.linspace(slow, fast, num_filters))  # (N,) decay per unit of t'
        self.shift = config.decay_shift
        W = config.filter_width
        layers: list[nn.Module] = [nn.Linear(1 + 2 * config.pos_bands, W), Sin(W, config.filter_sin_freq)]
        for _ in range(config.filter_layers - 1):
            layers += [nn.Linear(W, W), Sin(W, config.filter_sin_freq)]
        layers.append(nn.Linear(W, num_filters, bias=False))
        self.mlp = nn.Sequential(*layers)

    def positions(self, L: int) -> torch.Tensor:
        """t / max_len for t = 0..L-1: (L,), float32 at least."""
        if L > self.max_len:
            raise ValueError(f"Hyena filters are defined up to max_len={self.max_len} positions, asked for {L}; "
                             f"build the mixer with a larger HyenaConfig.max_len")
        dtype = torch.promote_types(self.rates.dtype, torch.float32)
        return torch.arange(L, device=self.rates.device, dtype=dtype) / self.max_len

    def window(self, L: int) -> torch.Tensor:  # (N, L)
        return torch.exp(-self.rates[:, None] * self.positions(L)[None, :]) + self.shift

    def forward(self, L: int) -> torch.Tensor:  # (N, L)
        t = self.positions(L)[:, None]                                               # (L, 1)
        angle = 2 * math.pi * self.freqs.to(t.dtype) * t                             # (L, bands)
        z = torch.cat([t, torch.cos(angle), torch.sin(angle)], dim=-1)               # (L, 1 + 2 bands)
        raw = self.mlp(z.to(self.mlp[0].weight.dtype))                               # (L, N)
        return raw.t() * self.window(L).to(raw.dtype)                                # (N, L)


class HyenaFamily(Mixer):
    """A mixer with three projected streams, a short conv, N long filters and an output projection (Hyena,
    MultiHyena). Its long filters are the module ``add_filters`` makes and ``filter(L)`` reads: an ImplicitFilter
    here; the Laughing Hyena mixers override the two with modal SSMs."""

    config_class = HyenaConfig  # the config a mixer built without one, or from_attention(attn), starts from
    in_proj: nn.Linear          # (D) -> three streams of d_inner
    short_conv: CausalConv1d
    out_proj: nn.Linear         # (d_inner) -> (D)
    d_inner: int

    def add_filters(self, num_filters: int, config: HyenaConfig) -> None:
        """Step (3)'s module, which ``filter`` reads: ``implicit_filter``, an ImplicitFilter of ``num_filters``."""
        self.implicit_filter = ImplicitFilter(num_filters, config)

    def filter(self, L: int) -> torch.Tensor:
        """The long filters' first L taps: (N, L)."""
        return self.implicit_filter(L)

    @classmethod
    def attention_config(cls, attn: AttentionWeights, config: HyenaConfig | None = None) -> HyenaConfig:
        """``config`` (default: ``config_class()``) with biases on if the attention has any, so they are kept."""
        config = config or cls.config_class()
        return replace(config, bias=config.bias or has_bias(attn))

    def take_attention(self, attn: AttentionWeights, order: str) -> HyenaFamily:
        """This mixer on the attention's device and dtype with in_proj's three streams <- the teacher projections
        named by ``order`` (e.g. "vkq"; ``workbench.students.init``) and out_proj <- O, and the short conv set to
        the identity so the projections reach the mixing unchanged. Returns the mixer."""
        self.to(device=attn.q.device, dtype=attn.q.dtype)
        load_attention(self.in_proj, self.out_proj, attn, stacked_rows(order, self.d_inner))
        self.short_conv.init_identity_()
        return self
