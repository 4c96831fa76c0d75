"""Hyena operator of order 2 (Hyena Hierarchy, Poli et al., arXiv 2302.10866), the student mixer of Scavenging Hyena
(Ralambomihanta et al., arXiv 2401.17574).

Shapes: B batch, L length, D model width, C mixer width (one head per channel, so H = C and P = 1), W filter MLP width.

    (1) in_proj        x (B, L, D) -> (v, x1, x2), each (B, L, C)
    (2) short conv     causal depthwise conv of width 3 on all three streams
    (3) long filter    h (C, L) = window(t) * MLP(positional features of t), sin activations, exponential decay window
    (4) mixing         y = x2 * (h * (x1 * v) + skip * x1 * v)        (* is the causal long convolution, by FFT)
    (5) out_proj       y (B, L, C) -> (B, L, D)

Order 2 as in the reference implementation (HazyResearch/safari) and the authors' order-2 form H(q, k) = D_q T_h D_k:
three projections and ONE long filter, the gate x1 applied before the convolution and x2 after. This is also the form
the Laughing Hyena distillery (arXiv 2310.18780) distils.

Mixing matrix per channel c: M[c] = diag(x2[:, c]) @ (Toeplitz(h[c]) + skip[c] I) @ diag(x1[:, c]), acting on v.

Recurrent inference. Hyena's long filter is as long as the sequence, so an exact ``step`` keeps the whole history of
the long-conv input and costs O(t) per token (and O(t) memory): unlike the Mixer contract's O(1), and expected. The
Laughing Hyena stage distils each filter into a small modal SSM, which makes the step O(1).

``ImplicitFilter`` and the attention-weight loader are shared with ``workbench.students.multihyena``; the short conv
is the causal depthwise conv every mixer uses (``workbench.students._conv``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from workbench.ops.fftconv import causal_toeplitz, fftconv
from workbench.students._conv import CausalConv1d
from workbench.students.base import Mixer
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


# ---- shared with MultiHyena ---------------------------------------------------------------------------------------

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


def load_attention_projections(in_proj: nn.Linear, out_proj: nn.Linear, attn: AttentionWeights, order: str) -> None:
    """Copy a teacher attention's projections into a mixer: ``order`` names the teacher projection for each third of
    in_proj's output (e.g. "vkq": v <- V, x1 <- K, x2 <- Q); K and V are repeated to every query head (GQA), and
    out_proj <- O. Missing teacher biases become zeros where the mixer has a bias."""
    H, G, P = attn.num_heads, attn.num_kv_heads, attn.head_dim
    if G < 1 or H % G:
        raise ValueError(f"cannot map attention with {H} query heads onto {G} key/value heads: "
                         f"H must be a positive multiple of G")
    C = H * P
    if in_proj.weight.shape != (3 * C, attn.d_model) or out_proj.weight.shape != (attn.d_model, C):
        raise ValueError(f"mixer projections in {tuple(in_proj.weight.shape)}, out {tuple(out_proj.weight.shape)} do "
                         f"not fit attention with D={attn.d_model}, H={H}, P={P} (need in (3*H*P, D), out (D, H*P))")

    def full(w):  # K/V weights and biases at query-head width
        return None if w is None else attn.repeat_kv(w)

    weights = {"q": attn.q, "k": full(attn.k), "v": full(attn.v)}
    biases = {"q": attn.q_bias, "k": full(attn.k_bias), "v": full(attn.v_bias)}
    with torch.no_grad():
        in_proj.weight.copy_(torch.cat([weights[name] for name in order]))                 # (3C, D)
        if in_proj.bias is not None:
            in_proj.bias.copy_(torch.cat([biases[name] if biases[name] is not None
                                          else in_proj.bias.new_zeros(C) for name in order]))  # (3C,)
        out_proj.weight.copy_(attn.o)                                                       # (D, C)
        if out_proj.bias is not None:
            out_proj.bias.copy_(attn.o_bias if attn.o_bias is not None else out_proj.bias.new_zeros(attn.d_model))


def has_bias(attn: AttentionWeights) -> bool:
    return any(b is not None for b in (attn.q_bias, attn.k_bias, attn.v_bias, attn.o_bias))


# ---- Hyena ----------------------------------------------------------------------------------------------------------

class Hyena(Mixer):
    """Order-2 Hyena mixer with one long filter per channel. ``d_inner`` (C) defaults to ``d_model`` (D)."""

    def __init__(self, d_model: int, d_inner: int | None = None, config: HyenaConfig | None = None):
        super().__init__()
        self.config = config = config or HyenaConfig()
        self.d_model, self.d_inner = d_model, d_inner or d_model
        C = self.d_inner
        self.in_proj = nn.Linear(d_model, 3 * C, bias=config.bias)         # (1) x -> (v, x1, x2)
        self.short_conv = CausalConv1d(3 * C, config.short_conv)            # (2)
        self.implicit_filter = ImplicitFilter(C, config)                    # (3) one filter per channel
        self.skip = nn.Parameter(torch.randn(C))                            # (4) the D term of the long conv
        self.out_proj = nn.Linear(C, d_model, bias=config.bias)            # (5)

    def filter(self, L: int) -> torch.Tensor:
        """The long filters' first L taps: (C, L)."""
        return self.implicit_filter(L)

    def _streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps (1)-(2): x (B, L, D) -> v, x1, x2, each (B, L, C)."""
        return self.short_conv(self.in_proj(x)).split(self.d_inner, dim=-1)

    def _mix(self, x1v: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Steps (3)-(4) from the long-conv input x1 * v and the gate x2, both (B, L, C): y (B, L, C)."""
        h = self.filter(x1v.shape[1])                                        # (3) (C, L)
        return x2 * fftconv(x1v, h, self.skip)                               # (4) (B, L, C)

    def _inner(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps (1)-(4): x (B, L, D) -> (v, y), both (B, L, C)."""
        v, x1, x2 = self._streams(x)
        return v, self._mix(x1 * v, x2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        return self.out_proj(self._inner(x)[1])                              # (5)

    def mix_io(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, y) with u = v after the short conv and y before out_proj, both (B, L, H=C, P=1)."""
        v, y = self._inner(x)
        return v.unsqueeze(-1), y.unsqueeze(-1)

    def mixing_matrix(self, x: torch.Tensor, channels: Sequence[int] | slice | None = None) -> torch.Tensor:
        """M (B, H, L, L) with M[b, c, l, s] = x2[b, l, c] * (h[c, l - s] + skip[c] [l == s]) * x1[b, s, c] for s <= l.

        Every channel is a head, so H = C and M is B*C*L*L numbers: pass ``channels`` (indices or a slice) to build
        only those."""
        _, x1, x2 = self._streams(x)
        L = x.shape[1]
        h, skip = self.filter(L), self.skip                                  # (C, L), (C,)
        if channels is not None:
            x1, x2, h, skip = x1[..., channels], x2[..., channels], h[channels], skip[channels]
        T = causal_toeplitz(h, L) + torch.diag_embed(skip[:, None].expand(-1, L))   # (H, L, L)
        return x2.transpose(1, 2)[..., :, None] * T * x1.transpose(1, 2)[..., None, :]  # (B, H, L, L)

    # ---- recurrent inference --------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """{"conv": (B, 3C, K) short-conv ring buffer, "position": 0-dim long, "history": (B, 0, C) long-conv inputs
        so far (grows by one per step), "filter": (C, max_len) the long filters, read once here: re-initialise the
        state after changing weights}."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return {"conv": self.short_conv.init_state(batch_size, device, dtype),
                "position": torch.zeros((), dtype=torch.long, device=device),
                "history": torch.zeros(batch_size, 0, self.d_inner, device=device, dtype=dtype),
                "filter": self.filter(self.config.max_len).to(device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token x_t (B, D) -> (B, D): exact, O(t) in the position t (see the module docstring). The state is
        updated in place and returned."""
        n = state["history"].shape[1] + 1                                            # tokens so far, t + 1
        if n > self.config.max_len:
            raise ValueError(f"Hyena.step past max_len={self.config.max_len}")
        z_t = self.short_conv.step(self.in_proj(x_t), state["conv"], state["position"])  # (1)-(2) (B, 3C)
        v, x1, x2 = z_t.split(self.d_inner, dim=-1)                                  # (B, C) each
        history = torch.cat([state["history"], (x1 * v)[:, None]], dim=1)          # (B, t+1, C)
        h = state["filter"][:, :n].flip(-1)                                          # (C, t+1): h[c, t - s] at s
        y = x2 * (torch.einsum("bsc,cs->bc", history, h) + self.skip * x1 * v)     # (4) (B, C)
        state["history"] = history
        state["position"].add_(1)
        return self.out_proj(y), state

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x (B, L, D) -> (forward's y, the state ``step`` reaches after x) from one parallel pass: the history is
        the long-conv input x1 * v of every token, the short-conv ring buffer holds the last K projections (position
        p in slot p mod K)."""
        Bsz, L, _ = x.shape
        projected = self.in_proj(x)                                                  # (1) (B, L, 3C)
        v, x1, x2 = self.short_conv(projected).split(self.d_inner, dim=-1)           # (2)
        x1v = x1 * v
        y = self._mix(x1v, x2)                                                       # (3)-(4)
        state = self.init_state(Bsz, device=x.device, dtype=x.dtype)
        state["conv"].copy_(self.short_conv.state_after(projected))
        state["history"] = x1v.to(state["history"].dtype)
        state["position"].fill_(L)
        return self.out_proj(y), state                                               # (5)

    # ---- initialisation from a teacher ----------------------------------------------------------------------------

    @classmethod
    def from_attention(cls, attn: AttentionWeights, config: HyenaConfig | None = None) -> "Hyena":
        """A Hyena mixer of width C = H*P built on a teacher attention's projections (D model width, H query heads,
        G key/value heads, P head width), read like linear attention with a Toeplitz kernel: x2 = query, x1 = key.

            in_proj (3C, D) = [ V repeated to H heads (C, D)  -> v
                                K repeated to H heads (C, D)  -> x1
                                Q (C, D)                      -> x2 ]
            out_proj (D, C) = O

        So M[c, l, s] = q_l[c] * h[c, l-s] * k_s[c] for channel c of head c // P. Biases are copied (zeros where the
        teacher has none); the short conv starts as the identity so q, k, v arrive unchanged; the filter and skip are
        fresh. Parameters take the teacher weights' device and dtype.
        """
        config = config or HyenaConfig()
        config = replace(config, bias=config.bias or has_bias(attn))
        mixer = cls(attn.d_model, attn.num_heads * attn.head_dim, config).to(device=attn.q.device, dtype=attn.q.dtype)
        load_attention_projections(mixer.in_proj, mixer.out_proj, attn, order="vkq")
        mixer.short_conv.init_identity_()
        return mixer
