"""anatomy: decoder layers, attention modules and unfused q/k/v/o weights, checked numerically against the model's
own computation for every family in tests/helpers/tiny_models.py.

How the check works: the model runs with a registered attention function that records the query/key/value states
it receives (B, heads, L, P) and returns a known tensor a (B, L, H, P). All positions are 0, so rotary embeddings
are the identity, and the attention's extra submodules (q/k norms) are replaced by identities. Then
    query == h @ q.T + q_bias,   key == h @ k.T + k_bias,   value == h @ v.T + v_bias   (per head)
    module output == a @ o.T + o_bias
where h is the attention module's input.
"""

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, AutoModelForCausalLM, MptConfig

from tests.helpers.tiny_models import CONFIGS, tiny
from workbench.teachers import anatomy

pytestmark = pytest.mark.usefixtures("one_thread")


RECORDED: dict = {}
QUERY_SCALED = {"opt"}  # families that multiply the query by P**-0.5 before the attention function (and pass scaling 1)
OWN_ATTENTION = {"gptj"}  # families whose attention does not go through transformers' AttentionInterface


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """Records q/k/v (B, heads, L, P) and returns a fixed random a (B, L, H, P) in place of attention."""
    B, H, L, P = query.shape
    a = torch.randn(B, L, H, P, generator=torch.Generator().manual_seed(1), dtype=query.dtype)
    RECORDED.update(query=query, key=key, value=value, a=a)
    return a, None


AttentionInterface.register("wb_recording", _recording_attention)


def _heads(x: torch.Tensor, P: int) -> torch.Tensor:  # (B, L, n*P) -> (B, n, L, P)
    return x.reshape(*x.shape[:2], -1, P).transpose(1, 2)


def _linear(x, w, b):
    return x @ w.T + (b if b is not None else 0)


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - OWN_ATTENTION))
def test_attention_weights_reproduce_the_models_projections(name):
    model = tiny(name, attn_implementation="wb_recording")
    layers = anatomy.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    seen: dict[int, dict] = {}
    handles = []
    for i, layer in enumerate(layers):
        attr, attn = anatomy.attention_of(layer)
        info = anatomy.layer_info(model, i)
        assert getattr(layer, attr) is attn and info.attention == type(attn).__name__
        for extra in info.extras:                      # q/k norms are not part of AttentionWeights
            setattr(attn, extra, nn.Identity())

        def pre(m, args, kwargs, i=i):
            seen[i] = {"h": args[0] if args else kwargs["hidden_states"]}

        def post(m, args, kwargs, out, i=i):           # RECORDED holds this module's call to the attention function
            seen[i].update(out=out[0], **RECORDED)

        handles += [attn.register_forward_pre_hook(pre, with_kwargs=True),
                    attn.register_forward_hook(post, with_kwargs=True)]
    ids = torch.randint(3, 100, (2, 5))
    with torch.no_grad():
        model(ids, position_ids=torch.zeros_like(ids), use_cache=False)
    for handle in handles:
        handle.remove()

    for i in range(len(layers)):
        w, s = anatomy.attention_weights(model, i), seen[i]
        P, h = w.head_dim, s["h"]                                              # h (B, L, D)
        assert s["query"].shape[1] == w.num_heads and s["key"].shape[1] == w.num_kv_heads
        close = dict(atol=1e-5, rtol=1e-5)
        q_scale = P**-0.5 if name in QUERY_SCALED else 1.0
        torch.testing.assert_close(_heads(_linear(h, w.q, w.q_bias), P) * q_scale, s["query"], **close)
        torch.testing.assert_close(_heads(_linear(h, w.k, w.k_bias), P), s["key"], **close)
        torch.testing.assert_close(_heads(_linear(h, w.v, w.v_bias), P), s["value"], **close)
        a = s["a"].reshape(*h.shape[:2], -1)                                   # (B, L, H*P)
        torch.testing.assert_close(_linear(a, w.o, w.o_bias), s["out"], **close)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_token_attention_is_o_of_v(name):
    """With a single token, softmax attention reads only that token: output = o(repeat_kv(v(h))) exactly, whatever
    q, k, rotary embeddings or score scaling are."""
    model = tiny(name)
    seen = {}
    for i, layer in enumerate(anatomy.decoder_layers(model)):
        _, attn = anatomy.attention_of(layer)
        attn.register_forward_hook(lambda m, args, kwargs, out, i=i: seen.update(
            {i: (args[0] if args else kwargs["hidden_states"], out[0])}), with_kwargs=True)
    with torch.no_grad():
        model(torch.tensor([[5], [7]]), use_cache=False)
    for i, (h, out) in seen.items():                                             # h (B, 1, D)
        w = anatomy.attention_weights(model, i)
        v = _linear(h, w.repeat_kv(w.v), None if w.v_bias is None else w.repeat_kv(w.v_bias))   # (B, 1, H*P)
        torch.testing.assert_close(_linear(v, w.o, w.o_bias), out, atol=1e-5, rtol=1e-5)


def test_layer_info_reports_sliding_windows_parallel_blocks_and_extras():
    def kinds(name):
        infos = [anatomy.layer_info(tiny(name), i) for i in range(3)]
        return [(info.attention_type, info.sliding_window) for info in infos]

    assert kinds("llama") == [("full_attention", None)] * 3
    assert kinds("mistral") == [("sliding_attention", 4)] * 3          # Mistral: every layer slides
    assert kinds("gemma2") == [("sliding_attention", 4), ("full_attention", None), ("sliding_attention", 4)]
    assert kinds("gemma3") == kinds("gemma2")
    parallel = ("gpt_neox", "phi", "stablelm", "gptj", "cohere", "llama", "gpt2", "phi3")
    assert [anatomy.layer_info(tiny(n), 0).parallel_residual for n in parallel] == [True] * 5 + [False] * 3
    assert anatomy.layer_info(tiny("qwen3"), 0).extras == ("q_norm", "k_norm")
    assert anatomy.layer_info(tiny("llama"), 0).extras == ()
    assert [anatomy.tied_embeddings(tiny(n)) for n in ("llama", "gpt2", "mistral")] == [True, True, False]


def test_fused_layouts_and_biases_are_unfused():
    neox = anatomy.attention_weights(tiny("gpt_neox"), 0)
    assert neox.q.shape == neox.k.shape == (32, 32) and neox.q_bias is not None
    qwen2 = anatomy.attention_weights(tiny("qwen2"), 0)                 # q/k/v biases, no output bias
    assert qwen2.k.shape == (16, 32) and qwen2.k_bias.shape == (16,) and qwen2.o_bias is None
    assert anatomy.attention_weights(tiny("llama"), 0).q_bias is None


def test_index_and_unknown_layout_errors_name_the_fix(monkeypatch):
    model = tiny("llama")
    with pytest.raises(IndexError, match=r"layers 0\.\.2"):
        anatomy.attention_weights(model, 3)
    mpt = AutoModelForCausalLM.from_config(MptConfig(d_model=32, n_heads=4, n_layers=2, vocab_size=101))
    with pytest.raises(ValueError, match=r"holds \{'Wqkv': 'Linear', 'out_proj': 'Linear'\}.*FAMILIES\['mpt'\] = "):
        anatomy.attention_weights(mpt, 0)
    monkeypatch.setitem(anatomy.FAMILIES, "mpt", anatomy.Family(qkv=("Wqkv",), out="out_proj", fused="qkv"))
    w = anatomy.attention_weights(mpt, 1)                               # MPT's Wqkv rows: all q, all k, all v
    fused = anatomy.decoder_layers(mpt)[1].attn.Wqkv.weight
    assert torch.equal(torch.cat([w.q, w.k, w.v]), fused)


def test_decoder_layers_error_when_the_model_lists_no_layer_class(monkeypatch):
    model = tiny("llama")
    monkeypatch.setattr(model, "_no_split_modules", [])
    with pytest.raises(ValueError, match="_no_split_modules"):
        anatomy.decoder_layers(model)
