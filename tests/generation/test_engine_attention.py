"""The engine's own attention for decode steps (``workbench.generation.attention``): the same tokens and logits as
the transformers version's sdpa path, for grouped-query, multi-query, multi-head and sliding-window families, with a
dynamic and a static cache; the model's own implementation is back when a session's forward returns."""

import pytest
import torch

import workbench.generation.attention as engine_attention_module
from tests.helpers.generation_checks import tiny_generation_models
from tests.helpers.tiny_models import tiny
from workbench.generation import DecodeOptions, Session, generate
from workbench.generation.attention import ENGINE_ATTENTION, engine_attention

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["llama", "qwen3", "mistral", "gemma", "phi"]   # GQA, MQA and q/k norms, sliding window, MQA, MHA
PROMPT = torch.tensor([[5, 17, 42, 8, 99, 23, 61], [7, 3, 88, 14, 56, 31, 9]])


@pytest.fixture(scope="module")
def models():
    return {name: tiny(name, attn_implementation="sdpa") for name in FAMILIES}


def step_logits(model, static: bool, engine: bool, steps: int = 6) -> torch.Tensor:
    """Logits (steps, B, V) of a prompt's prefill and then ``steps - 1`` greedy decode steps."""
    session = Session(model, max_length=PROMPT.shape[1] + steps, static=static, engine_attention=engine)
    out = [session.forward(PROMPT)[:, -1]]
    for _ in range(steps - 1):
        out.append(session.forward(out[-1].argmax(-1)[:, None])[:, -1])
    return torch.stack(out)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("name", FAMILIES)
def test_decode_steps_match_the_versions_own_attention(models, name, static, monkeypatch):
    model = models[name]
    calls = []
    grouped = engine_attention_module.decode_attention
    monkeypatch.setattr(engine_attention_module, "decode_attention",
                        lambda *args: calls.append(args[0].shape) or grouped(*args))
    ours = step_logits(model, static, engine=True)
    theirs = step_logits(model, static, engine=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"                  # restored after every forward
    # every decode step of every layer took the grouped path (a short prefill does too where it has a mask: the
    # sliding window's)
    assert sum(shape[2] == 1 for shape in calls) == 5 * model.config.num_hidden_layers


@pytest.mark.parametrize("name", ["llama", "qwen3", "mistral"])
def test_greedy_tokens_are_the_same_with_either_attention(models, name):
    ours = generate(models[name], PROMPT, 9)
    theirs = generate(models[name], PROMPT, 9, options=DecodeOptions(engine_attention=False))
    assert torch.equal(ours.tokens, theirs.tokens)


def test_a_few_positions_at_once_and_models_not_on_sdpa(models):
    """Several new positions with a cache (as speculative verification feeds them) take the grouped path under the
    cache's mask; an eager model is left on its own attention."""
    model = models["llama"]
    ahead = Session(model)
    ahead.forward(PROMPT)
    got = ahead.forward(torch.tensor([[4, 6, 8], [10, 12, 14]]), keep=3)
    reference = Session(model, engine_attention=False)
    reference.forward(PROMPT)
    torch.testing.assert_close(got, reference.forward(torch.tensor([[4, 6, 8], [10, 12, 14]]), keep=3),
                               rtol=1e-5, atol=1e-5)
    eager = tiny("llama", attn_implementation="eager")
    with engine_attention(eager):
        assert eager.config._attn_implementation == "eager"
    with engine_attention(model):
        assert model.config._attn_implementation == ENGINE_ATTENTION
    assert model.config._attn_implementation == "sdpa"


def test_a_hybrid_students_kept_layers_decode_through_it(monkeypatch):
    """A student keeping attention in layers 0 and 2: both kept layers take the grouped path on every decode step,
    and the tokens and logits are those of the version's own attention."""
    hybrid = tiny_generation_models()["hybrid"]
    calls = []
    grouped = engine_attention_module.decode_attention
    monkeypatch.setattr(engine_attention_module, "decode_attention",
                        lambda *args: calls.append(args[0].shape) or grouped(*args))
    ours = generate(hybrid, PROMPT, 5)
    assert len(calls) == 2 * 4                                          # 2 kept layers, 4 decode steps
    theirs = generate(hybrid, PROMPT, 5, options=DecodeOptions(engine_attention=False))
    assert torch.equal(ours.tokens, theirs.tokens)
    torch.testing.assert_close(step_logits(hybrid, False, True), step_logits(hybrid, False, False),
                               rtol=1e-5, atol=1e-5)
