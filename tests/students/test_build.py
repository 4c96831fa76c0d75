"""build_student / load_student on tiny random teachers of many families (tests/helpers/tiny_models.py).

A test-only mixer (``CumulativeMean``: the causal running mean of the value stream, then the output projection)
keeps these tests independent of the real mixers' numerics; the real mixers are built in their own tests below.
"""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import workbench.students as build
from tests.helpers.tiny_models import CONFIGS, tiny
from workbench.students.base import Mixer
from workbench.teachers import Teacher, anatomy
from workbench.teachers.anatomy import AttentionWeights


@dataclass
class MeanConfig:
    scale: float = 1.0    # the running mean is multiplied by this
    bias: bool = False    # biases on the projections (from_attention turns them on when the teacher has any)


class CumulativeMean(Mixer):
    """y_l = out(scale * mean_{s <= l} v_s) with v = value projection: (B, L, D) -> (B, L, D). State: the running
    sum (B, E) and the count."""

    def __init__(self, d_model: int, d_inner: int, config: MeanConfig):
        super().__init__()
        self.config, self.d_model = config, d_model
        self.v = nn.Linear(d_model, d_inner, bias=config.bias)
        self.out = nn.Linear(d_inner, d_model, bias=config.bias)

    def forward(self, x):
        v = self.v(x)                                                                    # (B, L, E)
        counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]
        return self.out(self.config.scale * v.cumsum(1) / counts)

    def init_state(self, batch_size, device=None, dtype=None):
        return {"sum": torch.zeros(batch_size, self.v.out_features, device=device, dtype=dtype), "count": 0}

    def step(self, x_t, state):
        total, count = state["sum"] + self.v(x_t), state["count"] + 1
        return self.out(self.config.scale * total / count), {"sum": total, "count": count}

    @classmethod
    def from_attention(cls, attn: AttentionWeights, config: MeanConfig | None = None):
        config = config or MeanConfig(bias=any(b is not None for b in (attn.v_bias, attn.o_bias)))
        mixer = cls(attn.d_model, attn.num_heads * attn.head_dim, config)
        with torch.no_grad():
            mixer.v.weight.copy_(attn.repeat_kv(attn.v))
            mixer.out.weight.copy_(attn.o)
            if config.bias:
                mixer.v.bias.copy_(attn.repeat_kv(attn.v_bias) if attn.v_bias is not None else 0)
                mixer.out.bias.copy_(attn.o_bias if attn.o_bias is not None else 0)
        return mixer


pytestmark = pytest.mark.usefixtures("one_thread")


if "mean" not in build.MIXERS:
    build.register_mixer("mean", CumulativeMean)

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gpt2", "gpt_neox", "gemma2", "gemma3", "olmo2",
            "stablelm", "granite"]
IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def greedy_by_recomputation(model, ids, n):
    """Argmax decoding that reruns the whole sequence for every token, without a cache."""
    for _ in range(n):
        ids = torch.cat([ids, logits(model, ids)[:, -1:].argmax(-1)], dim=1)
    return ids


@pytest.mark.parametrize("name", FAMILIES)
def test_student_swaps_exactly_the_chosen_layers(name):
    teacher = tiny(name)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build.build_student(teacher, "mean", keep_attention=[1])
    assert type(student) is type(teacher)
    mixers = build.student_mixers(student)
    assert sorted(mixers) == [0, 2] and all(isinstance(m, CumulativeMean) for m in mixers.values())
    spec = build.student_spec(student)
    assert spec == build.StudentSpec(
        mixer="mean", mixer_config={"scale": 1.0, "bias": mixers[0].config.bias}, layers=[0, 2], init="attention",
        num_layers=3)
    assert spec.keep_attention == [1]
    # mixers start from the teacher's V and O; every other weight is the teacher's, and the teacher is unchanged
    w = anatomy.attention_weights(teacher, 2)
    assert torch.equal(mixers[2].v.weight, w.repeat_kv(w.v)) and torch.equal(mixers[2].out.weight, w.o)
    kept = {k: v for k, v in student.state_dict().items() if ".mixer." not in k}
    assert all(torch.equal(v, before[k]) for k, v in kept.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert build.student_spec(teacher) is None
    assert anatomy.tied_embeddings(student) == anatomy.tied_embeddings(teacher)
    # the student runs, and computes something else than the teacher
    out = logits(student)
    assert out.shape == (2, 7, 101) and torch.isfinite(out).all()
    assert not torch.allclose(out, logits(teacher))


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "gemma3", "phi3"])
def test_all_layers_kept_gives_the_teachers_logits_exactly(name):
    teacher = tiny(name)
    student = build.build_student(teacher, "mean", keep_attention=[0, 1, 2])
    assert build.student_mixers(student) == {}
    assert torch.equal(logits(student), logits(teacher))


def test_mixer_layer_output_is_the_mixers_output():
    teacher = Teacher(tiny("qwen2"), tokenizer=None)           # a workbench Teacher works as well as a bare model
    student = build.build_student(teacher, "mean", keep_attention=[0, 2])
    seen = {}
    layer = anatomy.decoder_layers(student)[1]
    name, adapter = anatomy.attention_of(layer)                # the adapter stands where the attention stood
    assert name == "self_attn" and isinstance(adapter, build.MixerAttention)
    adapter.register_forward_hook(lambda m, args, kwargs, out: seen.update(
        x=kwargs.get("hidden_states", args[0] if args else None), y=out), with_kwargs=True)
    logits(student)
    assert isinstance(seen["y"], tuple) and len(seen["y"]) == 2 and seen["y"][1] is None
    torch.testing.assert_close(seen["y"][0], adapter.mixer(seen["x"]))


def test_student_of_a_frozen_teacher_trains():
    teacher = Teacher(tiny("gpt2"), tokenizer=None)            # Teacher freezes its model
    student = build.build_student(teacher, "mean", keep_attention=[1]).train()
    student(IDS, labels=IDS, use_cache=False).loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(not p.requires_grad for p in teacher.model.parameters())


@pytest.mark.parametrize("name", ["llama", "gpt_neox", "gemma2", "mistral"])
def test_generate_equals_greedy_recomputation_for_a_hybrid(name, monkeypatch):
    student = build.build_student(tiny(name), "mean", keep_attention=[1]).eval()
    prompt = IDS[:, :5]
    expected = greedy_by_recomputation(student, prompt, 6)     # 11 tokens: past Mistral's sliding window of 4
    steps = []
    step = CumulativeMean.step
    monkeypatch.setattr(CumulativeMean, "step", lambda self, x_t, state: steps.append(1) or step(self, x_t, state))
    out = student.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(out, expected)
    assert len(steps) == 2 * 10    # two mixer layers: 5 prompt tokens caught up, then 5 decoded tokens


def test_cached_forward_matches_full_forward_token_by_token():
    from transformers import DynamicCache

    from workbench.generation.session import cache_keyword

    student = build.build_student(tiny("llama"), "mean", keep_attention=[2])
    full = logits(student)
    cache = DynamicCache(config=student.config)
    cached = {cache_keyword(student): cache, "use_cache": True}
    with torch.no_grad():
        parts = [student(IDS[:, :3], **cached).logits]
        parts += [student(IDS[:, t:t + 1], **cached).logits for t in range(3, 5)]
        parts += [student(IDS[:, 5:], **cached).logits]   # two tokens at once
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == 7
    cache.crop(-1)
    with pytest.raises(ValueError, match="cannot be cropped"):
        student(IDS[:, 6:], **cached)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "gemma2", "phi3"])
def test_save_and_load_round_trip(name, tmp_path):
    student = build.build_student(tiny(name), "mean", keep_attention=[0], scale=0.5)
    student.save_pretrained(tmp_path)
    loaded = build.load_student(tmp_path)
    assert type(loaded) is type(student) and build.student_spec(loaded) == build.student_spec(student)
    assert build.student_spec(loaded).mixer_config["scale"] == 0.5
    assert anatomy.tied_embeddings(loaded) == anatomy.tied_embeddings(student)
    assert torch.equal(logits(loaded), logits(student))


def test_load_in_another_dtype(tmp_path):
    student = build.build_student(tiny("llama"), "mean", keep_attention=[1])
    student.save_pretrained(tmp_path)
    loaded = build.load_student(tmp_path, dtype=torch.float64)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    torch.testing.assert_close(logits(loaded).float(), logits(student))


def test_replace_and_keep_attention_are_one_choice_said_two_ways():
    teacher = tiny("llama")
    kept = build.build_student(teacher, "mean", keep_attention=[0])
    replaced = build.build_student(teacher, "mean", replace=[2, 1])
    assert sorted(build.student_mixers(kept)) == sorted(build.student_mixers(replaced)) == [1, 2]
    assert build.student_spec(kept) == build.student_spec(replaced)
    torch.testing.assert_close(logits(kept), logits(replaced), rtol=0, atol=0)
    assert build.split_layers(3, replace=[2, 0]) == ([0, 2], [1])
    assert build.split_layers(3, keep_attention=[1]) == ([0, 2], [1]) and build.split_layers(3) == ([0, 1, 2], [])
    with pytest.raises(ValueError, match="not both"):
        build.build_student(teacher, "mean", keep_attention=[0], replace=[1])
    with pytest.raises(ValueError, match=r"replace \[3\] out of range: the teacher has layers 0\.\.2"):
        build.build_student(teacher, "mean", replace=[3])


def test_bad_inputs_raise_errors_that_name_the_fix(tmp_path, monkeypatch):
    teacher = tiny("llama")
    with pytest.raises(ValueError, match=r"keep_attention \[3\] out of range: the teacher has layers 0\.\.2"):
        build.build_student(teacher, "mean", keep_attention=[3])
    with pytest.raises(ValueError, match=r"keep_attention \[-1\] out of range"):
        build.build_student(teacher, "mean", keep_attention=[-1])
    with pytest.raises(ValueError, match=r"more than once: \[1\]"):
        build.build_student(teacher, "mean", keep_attention=[1, 1])
    names = r"unknown mixer 'mamba3': choose one of \[.*'mamba2', 'mamba2-discrete', 'mean'.*register_mixer"
    with pytest.raises(ValueError, match=names):
        build.build_student(teacher, "mamba3")
    with pytest.raises(ValueError, match=r"no config field \['width'\].*\['bias', 'scale'\]"):
        build.build_student(teacher, "mean", width=3)
    with pytest.raises(ValueError, match="init must be one of"):
        build.build_student(teacher, "mean", init="zeros")
    with pytest.raises(TypeError, match="not a Mixer subclass"):
        build.register_mixer("linear", nn.Linear)
    with pytest.raises(ValueError, match="is taken"):
        build.register_mixer("mamba2-discrete", CumulativeMean)
    with pytest.raises(ValueError, match=r"fixes \{'discrete': True\}; \{'discrete': False\} contradicts it"):
        build.build_student(teacher, "mamba2-discrete", discrete=False)
    # an attention layout the table does not know: the error says how to register it
    layer = anatomy.decoder_layers(teacher)[0]
    monkeypatch.setattr(layer.self_attn, "qkv", layer.self_attn.q_proj, raising=False)
    monkeypatch.delattr(layer.self_attn, "q_proj")
    with pytest.raises(ValueError, match=r"expected projection modules \['q_proj'\].*FAMILIES\['llama'\] = Family"):
        build.build_student(teacher, "mean")
    with pytest.raises(ValueError, match="holds no workbench student"):
        teacher.save_pretrained(tmp_path)
        build.load_student(tmp_path)


def test_random_init_has_the_same_structure_and_fresh_projections():
    teacher = tiny("qwen2")
    a = build.build_student(teacher, "mean", init="random")
    b = build.build_student(teacher, "mean")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    w = anatomy.attention_weights(teacher, 0)
    assert not torch.equal(build.student_mixers(a)[0].out.weight, w.o)
    assert build.student_spec(a).init == "random"


def test_every_family_in_the_tiny_zoo_builds():
    for name in CONFIGS:
        student = build.build_student(tiny(name), "mean", keep_attention=[0])
        assert torch.isfinite(logits(student)).all(), name


# ---- the real mixers ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixer,config", [
    ("mamba2", {}), ("mamba2-discrete", {}), ("mamba", {}), ("hyena", {"max_len": 64}),
    ("multihyena", {"max_len": 64}),
])
def test_real_mixers_build_generate_and_round_trip(mixer, config, tmp_path):
    student = build.build_student(tiny("llama"), mixer, keep_attention=[1], **config).eval()
    spec = build.student_spec(student)
    assert spec.mixer == mixer and spec.layers == [0, 2] and spec.keep_attention == [1]
    if mixer == "mamba2-discrete":
        assert spec.mixer_config["discrete"] is True
    prompt = IDS[:1, :5]
    expected = greedy_by_recomputation(student, prompt, 4)
    out = student.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(out, expected)
    student.save_pretrained(tmp_path)
    loaded = build.load_student(tmp_path)
    assert build.student_spec(loaded) == spec and torch.equal(logits(loaded), logits(student))


@pytest.mark.parametrize("mixer, rows", [("hyena", "hidden_size"), ("multihyena", "num_attention_heads"),
                                         ("mamba2", None), ("mamba", None)])
def test_filter_is_the_long_convolution_or_none(mixer, rows):
    """The Inspect tab draws filter spectra from ``Mixer.filter``: (N, L) for the Hyena family (a filter per channel
    for Hyena, per head for MultiHyena), None for mixers whose mixing depends on the input."""
    teacher = tiny("llama")
    student = build.build_student(teacher, mixer, keep_attention=[0, 2])
    filters = build.student_mixers(student)[1].filter(9)
    if rows is None:
        assert filters is None
    else:
        assert filters.shape == (getattr(teacher.config, rows), 9)
