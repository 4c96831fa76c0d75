"""Decode attention with grouped-query heads read in place (``workbench.ops.decode_attention``) against its reference
(keys and values repeated per query head, float32), on random inputs of odd sizes, with and without masks."""

import pytest
import torch

from workbench.ops.backend import force_backend
from workbench.ops.decode_attention import decode_attention, decode_attention_grouped, decode_attention_ref

LAYOUTS = [(4, 4), (4, 2), (9, 3), (4, 1)]        # (H, Hkv): multi-head, GQA, the default teacher's, multi-query


def inputs(B, H, Hkv, Lq, S, E=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, n, E, generator=g).to(dtype) for h, n in ((H, Lq), (Hkv, S), (Hkv, S)))
    return q, k, v


def causal_mask(B, Lq, S, written, batch_rows=True):
    """(B or 1, 1, Lq, S): query i (at position written - Lq + i) sees the written positions up to its own."""
    position = torch.arange(written - Lq, written)[:, None]
    mask = torch.arange(S)[None, :] <= position                                    # (Lq, S)
    return mask.expand(B if batch_rows else 1, 1, Lq, S).clone()


@pytest.mark.parametrize("H,Hkv", LAYOUTS)
@pytest.mark.parametrize("Lq,S,written", [(1, 1, 1), (1, 37, 20), (3, 7, 7), (5, 37, 30)])
@pytest.mark.parametrize("batch_rows", [True, False])
def test_grouped_matches_ref_float32(H, Hkv, Lq, S, written, batch_rows):
    q, k, v = inputs(3, H, Hkv, Lq, S)
    mask = causal_mask(3, Lq, S, written, batch_rows)
    ref = decode_attention_ref(q, k, v, mask)
    torch.testing.assert_close(decode_attention_grouped(q, k, v, mask), ref, rtol=1e-5, atol=1e-6)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(decode_attention_grouped(q, k, v, additive), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("H,Hkv", LAYOUTS)
def test_every_position_visible_without_a_mask(H, Hkv):
    q, k, v = inputs(2, H, Hkv, 1, 13)
    out = decode_attention_grouped(q, k, v, None, scale=0.3)
    torch.testing.assert_close(out, decode_attention_ref(q, k, v, None, scale=0.3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, decode_attention_ref(q, k, v, torch.ones(2, 1, 1, 13, dtype=torch.bool),
                                                         scale=0.3), rtol=1e-5, atol=1e-6)


def test_heads_of_a_group_read_their_own_group():
    """Query head h reads key/value head h // G (transformers' order): changing group 1's values changes exactly the
    outputs of heads 3-5 of a 9-head, 3-group layout."""
    q, k, v = inputs(1, 9, 3, 1, 11)
    before = decode_attention_grouped(q, k, v, None)
    v[:, 1] += 1.0
    changed = (decode_attention_grouped(q, k, v, None) - before).abs().amax(dim=(0, 1, 3)) > 0.5     # (H,)
    assert changed.tolist() == [False] * 3 + [True] * 3 + [False] * 3


@pytest.mark.parametrize("H,Hkv", [(9, 3), (4, 1)])
def test_bfloat16_within_rounding_of_the_float32_result(H, Hkv):
    """bf16 inputs: the reference computes in float32 from the same bf16 numbers; the grouped path's kernel
    accumulates in float32 too and rounds its output to bf16 once, so the gap is a few bf16 units (2^-8 relative)
    of the output's scale (a convex combination of values of size ~1), not more."""
    q, k, v = inputs(4, H, Hkv, 1, 57, E=16, dtype=torch.bfloat16)
    mask = causal_mask(4, 1, 57, 40)
    out = decode_attention_grouped(q, k, v, mask).float()
    ref = decode_attention_ref(q, k, v, mask).float()
    assert (out - ref).abs().max() <= 4 * 2 ** -8 * ref.abs().max().clamp_min(1.0)


def test_gradients_match_ref():
    q, k, v = inputs(2, 9, 3, 3, 19)
    mask = causal_mask(2, 3, 19, 15)
    grads = []
    for fn in (decode_attention_grouped, decode_attention_ref):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (fn(*leaves, mask) * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_backend_choice_and_bad_shapes():
    q, k, v = inputs(2, 4, 2, 1, 5)
    with force_backend("decode_attention", "ref"):
        torch.testing.assert_close(decode_attention(q, k, v, None), decode_attention_ref(q, k, v, None))
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        decode_attention_grouped(torch.randn(2, 5, 1, 8), k, v, None)
    with pytest.raises(ValueError, match="do not fit queries"):
        decode_attention_grouped(q, k[..., :4], v, None)
    with pytest.raises(ValueError, match=r"mask \(2, 1, 1, 4\) does not fit"):
        decode_attention_grouped(q, k, v, torch.ones(2, 1, 1, 4, dtype=torch.bool))


@pytest.mark.gpu
def test_grouped_matches_ref_on_cuda_bfloat16():
    """The default teacher's heads (9 over 3 groups, width 64) at batch 64 over a 333-position cache, 300 written."""
    q, k, v = (t.cuda() for t in inputs(64, 9, 3, 1, 333, E=64, dtype=torch.bfloat16))
    mask = causal_mask(64, 1, 333, 300).cuda()
    out = decode_attention_grouped(q, k, v, mask).float()
    ref = decode_attention_ref(q, k, v, mask).float()
    assert (out - ref).abs().max() <= 4 * 2 ** -8 * ref.abs().max().clamp_min(1.0)
