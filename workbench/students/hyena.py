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

The config, the long filters (``add_filters`` / ``filter``, an ImplicitFilter; the Laughing Hyena mixer of
``workbench.laughing.student`` makes them modal SSMs) and the attention transfer's common part are shared with
``workbench.students.multihyena`` (``workbench.students._hyena.HyenaFamily``); the short conv is the causal depthwise
conv every mixer uses (``workbench.students._conv``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.ops.fftconv import causal_toeplitz, fftconv
from workbench.students._conv import CausalConv1d
from workbench.students._hyena import HyenaConfig, HyenaFamily
from workbench.teachers.anatomy import AttentionWeights


class Hyena(HyenaFamily):
    """Order-2 Hyena mixer with one long filter per channel (``filter(L)``: (C, L)). ``d_inner`` (C) defaults to
    ``d_model`` (D)."""

    def __init__(self, d_model: int, d_inner: int | None = None, config: HyenaConfig | None = None):
        super().__init__()
        self.config = config = config or self.config_class()
        self.d_model, self.d_inner = d_model, d_inner or d_model
        C = self.d_inner
        self.in_proj = nn.Linear(d_model, 3 * C, bias=config.bias)         # (1) x -> (v, x1, x2)
        self.short_conv = CausalConv1d(3 * C, config.short_conv)            # (2)
        self.add_filters(C, config)                                         # (3) one filter per channel
        self.skip = nn.Parameter(torch.randn(C))                            # (4) the D term of the long conv
        self.out_proj = nn.Linear(C, d_model, bias=config.bias)            # (5)

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
    def from_attention(cls, attn: AttentionWeights, config: HyenaConfig | None = None) -> Hyena:
        """A Hyena mixer of width C = H*P built on a teacher attention's projections (D model width, H query heads,
        G key/value heads, P head width), read like linear attention with a Toeplitz kernel: in_proj's (v, x1, x2)
        <- (V, K, Q), K and V repeated to the H query heads, out_proj <- O (the table of ``workbench.students.init``).

        So M[c, l, s] = q_l[c] * h[c, l-s] * k_s[c] for channel c of head c // P. Biases are copied (zeros where the
        teacher has none); the short conv starts as the identity so q, k, v arrive unchanged; the filter and skip are
        fresh. Parameters take the teacher weights' device and dtype.
        """
        config = cls.attention_config(attn, config)
        return cls(attn.d_model, attn.num_heads * attn.head_dim, config).take_attention(attn, "vkq")
