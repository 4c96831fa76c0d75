"""MultiHyena: Hyena with M heads of width P, one long filter per head (Laughing Hyena Distillery, Massaroli et al.,
arXiv 2310.18780, its multi-head Hyena). M filters instead of C = M*P makes the later distillation into
modal SSMs M times cheaper, and each head mixes like linear attention with a Toeplitz kernel.

Shapes: B batch, L length, D model width, M heads, P head width, C = M*P mixer width.

    (1) in_proj        x (B, L, D) -> (q, k, v), each (B, L, M, P)
    (2) short conv     causal depthwise conv of width 3 on all three (as in Hyena)
    (3) long filters   h (M, L): one implicit filter per head (``workbench.students._hyena.ImplicitFilter``)
    (4) mixing         per head m, a P x P state convolved over time and read by the query:
                           z_t = sum_{s <= t} (h_m[t - s] + skip_m [s == t]) k_s v_s^T        (P, P)
                           y_t = q_t^T z_t                                                     (P,)
                       computed by FFT over the P*P entries of k_s v_s^T (memory B*L*M*P^2: P times Hyena's)
    (5) out_proj       y (B, L, C) -> (B, L, D)

Mixing matrix. Expanding (4): y_t = sum_s (q_t . k_s) (h_m[t - s] + skip_m [s == t]) v_s, so with u = v

    M[b, m, l, s] = (q_l . k_s) * (h_m[l - s] + skip_m [l == s])   for s <= l,   y[b, :, m, :] = M[b, m] @ v[b, :, m, :]

i.e. the query-key score matrix masked element-wise by the head's causal Toeplitz filter (no softmax, no scaling).
With P = 1 this is exactly Hyena with x2 = q, x1 = k.

Recurrent inference keeps every past k and v (O(t) per token, like Hyena; the Laughing Hyena stage replaces each
head's filter by a modal SSM whose P x P state makes it O(1)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.ops.fftconv import causal_toeplitz, fftconv
from workbench.students._conv import CausalConv1d
from workbench.students._hyena import HyenaConfig, HyenaFamily
from workbench.teachers.anatomy import AttentionWeights


class MultiHyena(HyenaFamily):
    """Multi-head Hyena of M = ``num_heads`` heads of width P = ``head_dim`` (default d_model // num_heads), one long
    filter per head (``filter(L)``: (M, L))."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None, config: HyenaConfig | None = None):
        super().__init__()
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}; pass head_dim")
            head_dim = d_model // num_heads
        self.config = config = config or self.config_class()
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        C = self.d_inner = num_heads * head_dim
        self.in_proj = nn.Linear(d_model, 3 * C, bias=config.bias)         # (1) x -> (q, k, v)
        self.short_conv = CausalConv1d(3 * C, config.short_conv)            # (2)
        self.add_filters(num_heads, config)                                 # (3) one filter per head
        self.skip = nn.Parameter(torch.randn(num_heads))                    # (4) the D term, per head
        self.out_proj = nn.Linear(C, d_model, bias=config.bias)            # (5)

    def _streams(self, x: torch.Tensor, projected: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps (1)-(2): x (B, L, D) -> q, k, v, each (B, L, M, P). ``projected``: in_proj(x), if already made."""
        B, L, _ = x.shape
        projected = self.in_proj(x) if projected is None else projected
        q, k, v = self.short_conv(projected).split(self.d_inner, dim=-1)
        return tuple(t.view(B, L, self.num_heads, self.head_dim) for t in (q, k, v))

    def _inner(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps (1)-(4): x (B, L, D) -> (v, y), both (B, L, M, P)."""
        q, k, v = self._streams(x)
        return v, self._mix(q, k, v)

    def _mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Steps (3)-(4) on the streams q, k, v (B, L, M, P): y (B, L, M, P)."""
        B, L = q.shape[:2]
        M, P = self.num_heads, self.head_dim
        h = self.filter(L)                                                   # (3) (M, L)
        kv = k[..., :, None] * v[..., None, :]                               # (B, L, M, P, P)  k_s v_s^T
        # (4) every entry of a head's P x P outer product is convolved with that head's filter
        z = fftconv(kv.reshape(B, L, M * P * P), h.repeat_interleave(P * P, dim=0),
                    self.skip.repeat_interleave(P * P)).view(B, L, M, P, P)  # (B, L, M, P, P)
        return torch.einsum("blmi,blmij->blmj", q, z)                        # (B, L, M, P)  q_t^T z_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        return self.out_proj(self._inner(x)[1].flatten(2))                   # (5)

    def mix_io(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, y) with u = v after the short conv and y before out_proj, both (B, L, M, P)."""
        return self._inner(x)

    def mixing_matrix(self, x: torch.Tensor, heads: Sequence[int] | slice | None = None) -> torch.Tensor:
        """M (B, M, L, L), M[b, m, l, s] = (q_l . k_s) * (h_m[l - s] + skip_m [l == s]) for s <= l (module docstring).
        ``heads`` (indices or a slice) builds only those heads."""
        q, k, _ = self._streams(x)
        L = x.shape[1]
        h, skip = self.filter(L), self.skip                                  # (M, L), (M,)
        if heads is not None:
            q, k, h, skip = q[:, :, heads], k[:, :, heads], h[heads], skip[heads]
        scores = torch.einsum("blmp,bsmp->bmls", q, k)                       # (B, M, L, L)
        T = causal_toeplitz(h, L) + torch.diag_embed(skip[:, None].expand(-1, L))   # (M, L, L)
        return scores * T

    # ---- recurrent inference --------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """{"conv": (B, 3C, K) short-conv ring buffer, "position": 0-dim long, "keys"/"values": (B, 0, M, P) past k
        and v (grow by one per step), "filter": (M, max_len) the heads' filters, read once here: re-initialise the
        state after changing weights}."""
        device = device or self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        B, M, P = batch_size, self.num_heads, self.head_dim
        return {"conv": self.short_conv.init_state(B, device, dtype),
                "position": torch.zeros((), dtype=torch.long, device=device),
                "keys": torch.zeros(B, 0, M, P, device=device, dtype=dtype),
                "values": torch.zeros(B, 0, M, P, device=device, dtype=dtype),
                "filter": self.filter(self.config.max_len).to(device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token x_t (B, D) -> (B, D): exact, O(t * P) per head in the position t. The state is updated in place
        and returned."""
        B, M, P = x_t.shape[0], self.num_heads, self.head_dim
        n = state["keys"].shape[1] + 1                                               # tokens so far, t + 1
        if n > self.config.max_len:
            raise ValueError(f"MultiHyena.step past max_len={self.config.max_len}")
        z_t = self.short_conv.step(self.in_proj(x_t), state["conv"], state["position"])  # (1)-(2) (B, 3C)
        q, k, v = (t.view(B, M, P) for t in z_t.split(self.d_inner, dim=-1))         # (B, M, P) each
        keys = torch.cat([state["keys"], k[:, None]], dim=1)                         # (B, t+1, M, P)
        values = torch.cat([state["values"], v[:, None]], dim=1)                     # (B, t+1, M, P)
        h = state["filter"][:, :n].flip(-1)                                          # (M, t+1): h[m, t - s] at s
        scores = torch.einsum("bmp,bsmp->bms", q, keys)                              # (B, M, t+1)  q_t . k_s
        y = torch.einsum("bms,bsmp->bmp", scores * h, values)                       # (4) long-conv part
        y = y + self.skip[:, None] * scores[..., -1:] * v                            # (4) skip: s = t
        state["keys"], state["values"] = keys, values
        state["position"].add_(1)
        return self.out_proj(y.reshape(B, self.d_inner)), state

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x (B, L, D) -> (forward's y, the state ``step`` reaches after x) from one parallel pass: the keys and
        values of every token, the short-conv ring buffer of the last K projections (position p in slot p mod K)."""
        Bsz, L, _ = x.shape
        projected = self.in_proj(x)                                                  # (1) (B, L, 3C)
        q, k, v = self._streams(x, projected)                                        # (2)
        y = self._mix(q, k, v)                                                       # (3)-(4)
        state = self.init_state(Bsz, device=x.device, dtype=x.dtype)
        state["conv"].copy_(self.short_conv.state_after(projected))
        state["keys"] = k.to(state["keys"].dtype).contiguous()                      # own memory, no view
        state["values"] = v.to(state["values"].dtype).contiguous()
        state["position"].fill_(L)
        return self.out_proj(y.flatten(2)), state                                    # (5)

    # ---- initialisation from a teacher ----------------------------------------------------------------------------

    @classmethod
    def from_attention(cls, attn: AttentionWeights, config: HyenaConfig | None = None) -> MultiHyena:
        """A MultiHyena with the teacher's heads (M = H query heads, P = head width) on its projections
        (D model width, G key/value heads): in_proj's (q, k, v) <- (Q, K, V), K and V repeated to the H query heads,
        out_proj <- O (the table of ``workbench.students.init``). So head m's mixing matrix is its attention score
        matrix q_l . k_s (unnormalised) masked by the Toeplitz filter h_m. Biases are copied (zeros where the teacher
        has none); the short conv starts as the identity; the filters and skip are fresh. Parameters take the teacher
        weights' device and dtype.
        """
        config = cls.attention_config(attn, config)
        return cls(attn.d_model, attn.num_heads, attn.head_dim, config).take_attention(attn, "qkv")
