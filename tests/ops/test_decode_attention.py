"""Decode attention with grouped-query heads read in place (``workbench.ops.decode_attention``) against its reference
(keys and values repeated per query head, float32), on random inputs of odd sizes, with and without masks. The
"split" backend's Triton kernels run in Triton's interpreter on the CPU (in a subprocess: the switch is read when the
kernels are made) and compiled on CUDA (``pytest -m gpu``)."""

import pytest
import torch

from tests.helpers.triton_interpreter import HAS_TRITON, dependent_launch, in_interpreter
from workbench.ops.backend import force_backend
from workbench.ops.decode_attention import (
    decode_attention,
    decode_attention_grouped,
    decode_attention_ref,
    decode_attention_split,
    split_size,
)

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


def split_errors(device: str, dtype: torch.dtype) -> dict[str, float]:
    """The "split" kernels against the reference over layouts, masks and splits: per case, the largest error
    relative to the reference's largest value. Sizes are odd where they can be: a head width of 5 (the kernels pad
    to 16), caches of 100 and 200 positions (blocks of 64), unwritten positions hidden by the mask."""
    errors = {}
    cases = [  # name: (B, H, Hkv, Lq, S, written, E, mask kind, split)
        ("teacher heads, one token, bool mask, two splits", (2, 9, 3, 1, 100, 90, 16, "bool", 64)),
        ("teacher heads, one token, bool mask, default split", (2, 9, 3, 1, 200, 150, 16, "bool", None)),
        ("three tokens, additive mask, one batch row of mask", (3, 4, 2, 3, 100, 77, 5, "add-broadcast", 64)),
        ("multi-query, no mask, four splits", (1, 4, 1, 1, 200, 200, 8, None, 64)),
        ("multi-head, a split holding nothing visible", (2, 4, 4, 2, 200, 60, 8, "bool", 64)),
    ]
    for name, (B, H, Hkv, Lq, S, written, E, kind, split) in cases:
        q, k, v = (t.to(device) for t in inputs(B, H, Hkv, Lq, S, E=E, dtype=dtype))
        mask = None if kind is None else causal_mask(B, Lq, S, written, batch_rows=kind != "add-broadcast")
        if kind == "add-broadcast":
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf")).to(dtype)
        mask = None if mask is None else mask.to(device)
        ref = decode_attention_ref(q, k, v, mask).float()
        out = decode_attention_split(q, k, v, mask, split=split)
        assert out.shape == ref.shape and out.dtype == dtype, name
        errors[name] = float((out.float() - ref).abs().max() / ref.abs().max())
    return errors


def test_split_sizes_fill_the_programs_and_leave_no_split_empty():
    assert split_size(rows=3, S=4096, programs=264, block=64) == 64          # batch 1: 64 splits of one block each
    assert split_size(rows=48, S=4096, programs=264, block=64) == 832       # batch 16: 5 splits
    assert split_size(rows=3072, S=320, programs=264, block=64) == 320      # batch 1024: the whole cache, one split
    assert split_size(rows=3, S=100, programs=264, block=64) == 64          # no more splits than blocks


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (its interpreter runs the kernels on the CPU)")
def test_split_kernels_match_reference_in_the_interpreter():
    """float32 on the CPU through Triton's interpreter: the same sums in another order (partial softmaxes combined),
    so within float32 rounding (1e-5 of the largest value)."""
    in_interpreter("import torch\nfrom tests.ops.test_decode_attention import split_errors\n"
                   "errors = split_errors('cpu', torch.float32)\nprint(max(errors.values()))\n"
                   "assert all(e < 1e-5 for e in errors.values()), errors")


def test_split_is_refused_without_its_conditions():
    q, k, v = inputs(1, 4, 2, 1, 100)
    with pytest.raises(ValueError, match="split=50: must be a multiple of 64"):
        decode_attention_split(q, k, v, None, split=50)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        decode_attention_split(torch.randn(1, 5, 1, 8), k, v, None)
    with pytest.raises(RuntimeError, match="has no backward"):
        decode_attention_split(q.requires_grad_(), k, v, None)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cannot run on cpu"), force_backend("decode_attention", "split"):
            decode_attention(q, k, v, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "dependent-launch"])
def test_split_kernels_match_reference_on_cuda(dtype, pdl):
    """Compiled on the GPU. float32: float32 rounding (the products in IEEE float32, no TF32). bf16: the softmax
    weights are rounded to bf16 before they multiply the values (as in flash attention; relative error 2^-8 each) and
    the output is rounded once, so within a few bf16 units of the output's scale, as the grouped path's test."""
    limit = 1e-5 if dtype == torch.float32 else 4 * 2 ** -8
    with dependent_launch(pdl):
        errors = split_errors("cuda", dtype)
    assert all(e <= limit for e in errors.values()), errors


@pytest.mark.gpu
def test_grouped_matches_ref_on_cuda_bfloat16():
    """The default teacher's heads (9 over 3 groups, width 64) at batch 64 over a 333-position cache, 300 written."""
    q, k, v = (t.cuda() for t in inputs(64, 9, 3, 1, 333, E=64, dtype=torch.bfloat16))
    mask = causal_mask(64, 1, 333, 300).cuda()
    out = decode_attention_grouped(q, k, v, mask).float()
    ref = decode_attention_ref(q, k, v, mask).float()
    assert (out - ref).abs().max() <= 4 * 2 ** -8 * ref.abs().max().clamp_min(1.0)
