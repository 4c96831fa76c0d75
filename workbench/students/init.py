"""Initialising a mixer from a teacher's attention block: the one place where attention weights become mixer weights
(Mamba in the Llama, Wang et al., arXiv 2408.15237, Algorithm 1; Scavenging Hyena, Ralambomihanta et al., arXiv
2401.17574).

Shapes: D model width, H query heads, G key/value heads (H a multiple of G), P head width. The teacher's projections
(``workbench.teachers.anatomy.AttentionWeights``, nn.Linear layout): Q (H·P, D), K and V (G·P, D), O (D, H·P).

Every mixer reads attention as linear attention without the softmax: the stream it mixes gets V, its key-like stream
K, its query-like stream Q, and its output projection O. The mapping, for every mixer:

    mixer        in_proj rows (in order)      V ->   K ->   Q ->   O ->       the layout its config must have
    Mamba-2      [z, x, B, C, dt]             x      B      C      out_proj   d_model=D, n_heads=H, head_dim=P,
                                                                              d_state=P, n_groups=H
    Mamba        [x, z, B, C]                 x      B      C      out_proj   d_model=D, d_inner=H·P, d_state=P,
                                                                              bc_heads=H (Mamba-1's own layout has
                                                                              no B/C rows to take K and Q)
    Hyena        [v, x1, x2]   (order "vkq")  v      x1     x2     out_proj   width C = H·P (a channel per head dim)
    MultiHyena   [q, k, v]     (order "qkv")  v      k      q      out_proj   M = H heads of width P
    (the Laughing Hyena mixers are Hyena and MultiHyena with modal filters: the same rows)

- Each of the V, K and Q blocks is H·P rows, head-major as in the teacher: head h owns rows h·P .. (h+1)·P - 1.
- GQA: K and V have G heads; each is repeated to the H/G query heads that read it (query head h reads KV head
  h // (H/G)), so every mixer head starts as a copy of its KV group's K and V and may drift from it in training.
  (Mamba-2 could keep B at KV width with n_groups = G, but Q has H heads and one group count serves both B and C.)
- Biases go to the same rows of in_proj's bias, O's to out_proj's; a mixer bias whose teacher projection has none
  starts at zero. The Mamba mixers refuse an attention with biases unless their config has bias=True
  (``check_fits``); the Hyena mixers turn their biases on.
- The rows not named (z, dt) keep their fresh initialisation, and so do the convs, filters, decays and skips: each
  mixer's ``from_attention`` says how it sets them (e.g. an identity conv, so q, k, v reach the mixing unchanged).

So at initialisation C_l·B_s (Mamba-2, per head), x2_l·x1_s (Hyena, per channel) and q_l·k_s (MultiHyena, per head)
are the teacher's query-key products before RoPE.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from workbench.teachers.anatomy import AttentionWeights


def has_bias(attn: AttentionWeights) -> bool:
    """Whether any of the attention's four projections has a bias."""
    return any(b is not None for b in (attn.q_bias, attn.k_bias, attn.v_bias, attn.o_bias))


def check_heads(attn: AttentionWeights) -> None:
    """Raise ValueError unless the H query heads group evenly over the G key/value heads."""
    H, G = attn.num_heads, attn.num_kv_heads
    if G < 1 or H % G:
        raise ValueError(f"cannot map attention with {H} query heads onto {G} key/value heads: "
                         f"H must be a positive multiple of G")


def describe(attn: AttentionWeights) -> str:
    """The attention's layout in the table's letters, for error messages."""
    return (f"attention (D={attn.d_model}, H={attn.num_heads} query heads, {attn.num_kv_heads} KV heads, "
            f"head dim P={attn.head_dim})")


def check_fits(attn: AttentionWeights, config, required: Mapping[str, tuple[str, int]], mixer: str,
               hint: str = "") -> None:
    """Raise a ValueError that names the fix unless ``config`` can take ``attn``'s weights: every field of
    ``required`` (field -> (its letter in the table, the value attn asks for)) has that value, and the config has
    biases (``config.bias``) if the attention does. ``mixer`` names the config in the message; ``hint`` is said
    before what is needed (e.g. why a layout cannot work at all)."""
    check_heads(attn)
    wrong = {k: getattr(config, k) for k, (_, v) in required.items() if getattr(config, k) != v}
    if wrong:
        needs = ", ".join(f"{k}={letter}" for k, (letter, _) in required.items())
        raise ValueError(f"cannot map {describe(attn)} onto a {mixer} config with {wrong}: {hint}from_attention "
                         f"needs {needs} (V->x, K->B repeated to all heads, Q->C, O->out_proj); got {config}")
    if has_bias(attn) and not config.bias:
        raise ValueError("the attention has biases; from_attention needs a config with bias=True to keep them")


def stacked_rows(order: str, width: int) -> dict[str, slice]:
    """Rows of an in_proj made of len(order) stacked blocks of ``width`` rows, the i-th block taking the teacher
    projection order[i]: stacked_rows("vkq", C) == {"v": rows 0..C-1, "k": C..2C-1, "q": 2C..3C-1}."""
    return {name: slice(i * width, (i + 1) * width) for i, name in enumerate(order)}


@torch.no_grad()
def load_attention(in_proj: nn.Linear, out_proj: nn.Linear, attn: AttentionWeights,
                   rows: Mapping[str, slice]) -> None:
    """Copy the attention's projections into a mixer (module docstring): ``rows`` maps "q", "k" and "v" to the
    rows of ``in_proj`` (H·P each) they fill, K and V repeated to all H query heads; O goes to ``out_proj``. Biases
    alike, zero where the attention has none. Other rows of in_proj keep their values; values are cast to the
    mixer's dtype."""
    check_heads(attn)
    D, C = attn.d_model, attn.num_heads * attn.head_dim
    spans = {name: range(in_proj.out_features)[r] for name, r in rows.items()}
    if (sorted(rows) != ["k", "q", "v"] or in_proj.in_features != D or any(len(s) != C for s in spans.values())
            or tuple(out_proj.weight.shape) != (D, C)):
        raise ValueError(f"mixer projections in {tuple(in_proj.weight.shape)}, out {tuple(out_proj.weight.shape)} "
                         f"with rows {dict(rows)} do not fit attention with D={D}, H={attn.num_heads}, "
                         f"P={attn.head_dim} (need in_proj rows for q, k and v of H*P={C} each, reading D, and "
                         f"out (D, H*P))")

    def full(t: torch.Tensor | None) -> torch.Tensor | None:  # a K/V weight or bias at query-head width
        return None if t is None else attn.repeat_kv(t)

    weights = {"q": attn.q, "k": full(attn.k), "v": full(attn.v)}
    biases = {"q": attn.q_bias, "k": full(attn.k_bias), "v": full(attn.v_bias)}
    for name, r in rows.items():
        in_proj.weight[r] = weights[name].to(in_proj.weight.dtype)                     # (H·P, D)
        if in_proj.bias is not None:
            in_proj.bias[r] = 0 if biases[name] is None else biases[name].to(in_proj.bias.dtype)
    out_proj.weight.copy_(attn.o)                                                        # (D, H·P)
    if out_proj.bias is not None:
        out_proj.bias.copy_(attn.o_bias if attn.o_bias is not None else torch.zeros_like(out_proj.bias))
