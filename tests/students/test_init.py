"""workbench.students.init: the attention -> mixer transfer on random tensors of odd sizes.

The weights land in the rows the table names (K and V repeated from G key/value heads to H query heads), biases are
copied or zero where the attention has none, rows not named keep their values, and layouts that cannot take the
attention's weights raise errors that name the fix. Last, each mixer's ``from_attention`` puts Q, K, V where the
module's table says.
"""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from workbench.students.hyena import Hyena, HyenaConfig
from workbench.students.init import check_fits, check_heads, has_bias, load_attention, stacked_rows
from workbench.students.mamba import Mamba
from workbench.students.mamba2 import Mamba2
from workbench.students.multihyena import MultiHyena
from workbench.teachers.anatomy import AttentionWeights

D, H, G, P = 11, 6, 2, 5   # odd model width, GQA with three query heads per key/value head, odd head width
C = H * P


def attention(biases: tuple[str, ...] = (), H: int = H, G: int = G, P: int = P, dtype=torch.float32, seed: int = 0):
    """Random projections; ``biases`` names the projections ("q", "k", "v", "o") that have one."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    shapes = {"q": (H * P,), "k": (G * P,), "v": (G * P,), "o": (D,)}
    bias = {f"{name}_bias": rand(*shape) if name in biases else None for name, shape in shapes.items()}
    return AttentionWeights(rand(H * P, D), rand(G * P, D), rand(G * P, D), rand(D, H * P), H, G, P, **bias)


def kv_head_rows(t: torch.Tensor, head: int) -> torch.Tensor:
    """The rows of a (G*P, ...) key/value tensor that query head ``head`` reads."""
    kv = head // (H // G)
    return t[kv * P:(kv + 1) * P]


def test_weights_land_in_their_rows_with_kv_heads_repeated():
    attn = attention(biases=("q", "v"))
    in_proj, out_proj = nn.Linear(D, 5 * C + 3, bias=True).double(), nn.Linear(C, D, bias=True).double()
    rows = {"v": slice(3, 3 + C), "q": slice(3 + C, 3 + 2 * C), "k": slice(3 + 3 * C, 3 + 4 * C)}
    w_before, b_before = in_proj.weight.detach().clone(), in_proj.bias.detach().clone()
    load_attention(in_proj, out_proj, attn, rows)
    w, b = in_proj.weight.detach(), in_proj.bias.detach()
    assert w.dtype == torch.float64                                                # cast to the mixer's dtype
    torch.testing.assert_close(w[rows["q"]], attn.q.double(), rtol=0, atol=0)
    torch.testing.assert_close(b[rows["q"]], attn.q_bias.double(), rtol=0, atol=0)
    for head in range(H):
        here = slice(head * P, (head + 1) * P)
        for name, weight in (("k", attn.k), ("v", attn.v)):
            torch.testing.assert_close(w[rows[name]][here], kv_head_rows(weight, head).double(), rtol=0, atol=0)
        torch.testing.assert_close(b[rows["v"]][here], kv_head_rows(attn.v_bias, head).double(), rtol=0, atol=0)
    assert torch.all(b[rows["k"]] == 0)                                            # no K bias in the attention
    named = torch.zeros(5 * C + 3, dtype=torch.bool)
    for r in rows.values():
        named[r] = True
    assert torch.equal(w[~named], w_before[~named]) and torch.equal(b[~named], b_before[~named])  # the rest: kept
    torch.testing.assert_close(out_proj.weight.detach(), attn.o.double(), rtol=0, atol=0)
    assert torch.all(out_proj.bias == 0)                                           # no O bias in the attention


def test_all_biases_copied_and_mixers_without_bias_untouched():
    attn = attention(biases=("q", "k", "v", "o"))
    in_proj, out_proj = nn.Linear(D, 3 * C, bias=True), nn.Linear(C, D, bias=True)
    rows = stacked_rows("kqv", C)
    load_attention(in_proj, out_proj, attn, rows)
    torch.testing.assert_close(in_proj.bias[rows["k"]], attn.repeat_kv(attn.k_bias), rtol=0, atol=0)
    torch.testing.assert_close(out_proj.bias, attn.o_bias, rtol=0, atol=0)
    plain_in, plain_out = nn.Linear(D, 3 * C, bias=False), nn.Linear(C, D, bias=False)
    load_attention(plain_in, plain_out, attn, rows)                                 # biases have nowhere to go
    assert plain_in.bias is None and plain_out.bias is None
    torch.testing.assert_close(plain_in.weight, in_proj.weight, rtol=0, atol=0)


def test_stacked_rows_and_has_bias():
    assert stacked_rows("vkq", 7) == {"v": slice(0, 7), "k": slice(7, 14), "q": slice(14, 21)}
    assert not has_bias(attention())
    for name in ("q", "k", "v", "o"):
        assert has_bias(attention(biases=(name,))), name


def test_projections_that_do_not_fit_raise():
    attn = attention()
    good = stacked_rows("qkv", C)
    with pytest.raises(ValueError, match="do not fit attention with D=11, H=6, P=5"):
        load_attention(nn.Linear(D, 3 * C), nn.Linear(C + 1, D), attn, good)              # out_proj too wide
    with pytest.raises(ValueError, match="do not fit"):
        load_attention(nn.Linear(D + 1, 3 * C), nn.Linear(C, D), attn, good)              # reads the wrong width
    with pytest.raises(ValueError, match="do not fit"):
        load_attention(nn.Linear(D, 3 * C - 1), nn.Linear(C, D), attn, good)              # the last block cut short
    with pytest.raises(ValueError, match="do not fit"):
        load_attention(nn.Linear(D, 3 * C), nn.Linear(C, D), attn, stacked_rows("qv", C))  # no rows for K


def test_head_grouping_that_does_not_divide_raises():
    with pytest.raises(ValueError, match="multiple of G"):
        attention(H=6, G=4)                                              # refused when the weights are read
    attn = attention()
    attn.num_kv_heads = 4                                                # a layout changed after validation
    with pytest.raises(ValueError, match="cannot map attention with 6 query heads onto 4 key/value heads"):
        check_heads(attn)
    with pytest.raises(ValueError, match="cannot map attention with 6 query heads onto 4 key/value heads"):
        load_attention(nn.Linear(D, 3 * C), nn.Linear(C, D), attn, stacked_rows("qkv", C))


@dataclass
class Layout:
    width: int
    heads: int
    bias: bool = False


def test_check_fits_names_the_wrong_fields_and_the_fix():
    attn = attention()
    required = {"width": ("D", D), "heads": ("H", H)}
    check_fits(attn, Layout(D, H), required, mixer="Toy")                # fits: no error
    with pytest.raises(ValueError, match=r"onto a Toy config with \{'heads': 3\}: .*needs width=D, heads=H"):
        check_fits(attn, Layout(D, 3), required, mixer="Toy")
    with pytest.raises(ValueError, match="B and C have no place; from_attention needs"):
        check_fits(attn, Layout(D + 1, H), required, mixer="Toy", hint="B and C have no place; ")
    with pytest.raises(ValueError, match="the attention has biases; .*bias=True"):
        check_fits(attention(biases=("o",)), Layout(D, H), required, mixer="Toy")
    check_fits(attention(biases=("o",)), Layout(D, H, bias=True), required, mixer="Toy")


# ----- each mixer, as the module's table says -----

SMALL_HYENA = HyenaConfig(max_len=16, filter_width=8, filter_layers=1, pos_bands=2)
MIXERS = {  # name -> (from_attention, {projection: rows of in_proj} per the table)
    "mamba2": (lambda a: Mamba2.from_attention(a), {"v": slice(C, 2 * C), "k": slice(2 * C, 3 * C),
                                                    "q": slice(3 * C, 4 * C)}),
    "mamba": (lambda a: Mamba.from_attention(a), {"v": slice(0, C), "k": slice(2 * C, 3 * C),
                                                  "q": slice(3 * C, 4 * C)}),
    "hyena": (lambda a: Hyena.from_attention(a, SMALL_HYENA), stacked_rows("vkq", C)),
    "multihyena": (lambda a: MultiHyena.from_attention(a, SMALL_HYENA), stacked_rows("qkv", C)),
}


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_follows_the_table(name):
    make, rows = MIXERS[name]
    attn = attention(biases=("k",), G=3)
    mixer = make(attn)
    w, b = mixer.in_proj.weight.detach(), mixer.in_proj.bias.detach()
    expected = {"q": attn.q, "k": attn.repeat_kv(attn.k), "v": attn.repeat_kv(attn.v)}
    for projection, r in rows.items():
        torch.testing.assert_close(w[r], expected[projection], rtol=0, atol=0)
    torch.testing.assert_close(b[rows["k"]], attn.repeat_kv(attn.k_bias), rtol=0, atol=0)
    assert torch.all(b[rows["q"]] == 0) and torch.all(b[rows["v"]] == 0)
    torch.testing.assert_close(mixer.out_proj.weight.detach(), attn.o, rtol=0, atol=0)
    assert torch.all(mixer.out_proj.bias == 0)
