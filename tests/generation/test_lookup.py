"""Prompt-lookup speculative decoding (``workbench.generation.lookup``) on the tiny random teacher (CPU): the drafts
it copies from the context, and greedy tokens identical to plain greedy decoding whatever is drafted."""

import copy

import pytest
import torch

from tests.helpers.generation_checks import PROMPT, tiny_generation_models
from workbench.generation import Session, generate
from workbench.generation.lookup import PromptLookup, lookup_generate
from workbench.generation.verify import static_lengths

pytestmark = pytest.mark.usefixtures("one_thread")

EOS, PAD = 2, 0  # the tiny configs' eos and pad tokens


@pytest.fixture(scope="module")
def models():
    models = tiny_generation_models()
    noisy = copy.deepcopy(models["teacher"])     # the tiny teacher repeats one token; moved off, its text varies
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return models | {"noisy-teacher": noisy}


def test_drafts_copy_what_followed_the_longest_earlier_suffix():
    lookup = PromptLookup([1, 2, 3, 9, 1, 2, 4, 7, 1, 2], max_ngram=2)
    assert lookup.propose(3) == [4, 7, 1]            # "1 2" last occurred before 4 (not before 3: latest first)
    lookup.extend([3])
    assert lookup.propose(2) == [9, 1]               # "2 3" occurred once, before 9
    assert PromptLookup([5, 6, 7], max_ngram=3).propose(4) == []          # no suffix occurred before
    assert PromptLookup([5, 6, 5], max_ngram=3, min_ngram=2).propose(1) == []   # only a 1-gram matches
    assert PromptLookup([5, 6, 5], max_ngram=3).propose(1) == [6]


def test_a_loop_shorter_than_the_draft_is_drafted_whole():
    """The copy reads on past the known tokens into the draft itself."""
    assert PromptLookup([8, 1, 2, 1, 2]).propose(5) == [1, 2, 1, 2, 1]
    assert PromptLookup([3, 3]).propose(4) == [3, 3, 3, 3]


def test_ngram_sizes_are_checked():
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        PromptLookup([1], max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        PromptLookup([1], max_ngram=2, min_ngram=0)


@pytest.mark.parametrize("name", ["teacher", "noisy-teacher"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_lookup_greedy_equals_plain_greedy(models, k, name):
    model = models[name]
    plain = generate(model, PROMPT, 40, stop_tokens=[EOS], pad_token_id=PAD)
    result = lookup_generate(model, PROMPT, 40, k=k, stop_tokens=[EOS], pad_token_id=PAD)
    assert torch.equal(result.tokens, plain.tokens) and result.lengths == plain.lengths
    assert result.rounds >= 1 and k * (result.rounds - 1) <= result.proposed <= k * result.rounds  # the last: fewer
    assert 0 <= result.accepted <= result.proposed
    assert result.tokens.shape[1] == 1 + result.rounds + result.accepted       # each round: accepted + 1
    assert not result.cuda_graph and len(result.per_token_seconds) == result.tokens.shape[1] - 1
    single = lookup_generate(model, PROMPT[:1], 40, k=k, max_ngram=2)
    assert torch.equal(single.tokens, generate(model, PROMPT[:1], 40).tokens)


def test_a_looping_continuation_is_accepted_in_long_runs(models):
    """The tiny random teacher's greedy continuation of a repeating prompt repeats too: lookup drafts most of it,
    and a round then yields several tokens."""
    model = models["teacher"]
    prompt = torch.tensor([[5, 6, 7, 8] * 4])
    plain = generate(model, prompt, 64)
    result = lookup_generate(model, prompt, 64, k=4)
    assert torch.equal(result.tokens, plain.tokens)
    assert result.acceptance_rate > 0.5 and result.rounds < 32


@pytest.mark.parametrize("name", ["mamba2", "hybrid", "hybrid-mid"])
def test_targets_with_mamba2_layers_give_their_plain_greedy_tokens(models, name):
    """Mixer layers verify the drafts without moving their state (Mamba2.verify) and accept the kept ones."""
    model = models[name]
    prompt = torch.cat([PROMPT, PROMPT[:, :5]], dim=1)                  # a repeat: some drafts match
    plain = generate(model, prompt, 40, stop_tokens=[EOS], pad_token_id=PAD)
    for k in (1, 4):
        result = lookup_generate(model, prompt, 40, k=k, stop_tokens=[EOS], pad_token_id=PAD)
        assert torch.equal(result.tokens, plain.tokens)
        assert result.tokens.shape[1] == 1 + result.rounds + result.accepted and result.accepted > 0


def test_targets_with_mixers_that_cannot_verify_or_no_static_cache_are_refused(models):
    with pytest.raises(ValueError, match=r"layers \[0, 1, 2\] are \['Hyena'\] mixers.*speculative_generate"):
        lookup_generate(models["hyena"], PROMPT, 4)
    with pytest.raises(ValueError, match="plain static attention cache"):
        static_lengths(Session(models["teacher"]).cache)          # a DynamicCache
    with pytest.raises(ValueError, match="needs a CUDA device"):
        lookup_generate(models["teacher"], PROMPT, 4, cuda_graph=True)
    with pytest.raises(ValueError, match="k \\(draft tokens per round\\)"):
        lookup_generate(models["teacher"], PROMPT, 4, k=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_verification_gives_the_eager_tokens_on_cuda(models):
    model = models["teacher"].to("cuda")
    prompt = torch.tensor([[5, 6, 7, 8] * 4, [9, 10, 11, 12] * 4], device="cuda")
    eager = lookup_generate(model, prompt, 48, k=4, cuda_graph=False)
    captured = lookup_generate(model, prompt, 48, k=4)
    assert captured.cuda_graph and not eager.cuda_graph
    assert torch.equal(captured.tokens, eager.tokens)
    assert torch.equal(captured.tokens, generate(model, prompt, 48, cuda_graph=False).tokens)
    models["teacher"].to("cpu")


def test_bench_speculative_takes_a_lookup_draft(models, tmp_path):
    from tests.helpers.generation_checks import bench_json, saved

    (target,) = saved(tmp_path, models, "teacher")
    report = bench_json(tmp_path, "speculative", "--target", str(target), "--draft", "lookup:2", "--k", "2,4",
                        "--batch", "2", "--context", "12", "--new", "16")
    assert report["draft"] == "lookup:2" and [r["k"] for r in report["results"]] == [2, 4]
    for r in report["results"]:
        assert r["identical"] is True and r["first_difference"] is None and r["speculative_cuda_graph"] is False
        assert 0.0 <= r["acceptance_rate"] <= 1.0 and r["rounds"] > 0
    from workbench.generation.bench.speculative import lookup_ngram

    assert (lookup_ngram("lookup"), lookup_ngram("lookup:5"), lookup_ngram("runs/lookup")) == (3, 5, None)
    with pytest.raises(ValueError, match="lookup or lookup:N with N >= 1"):
        lookup_ngram("lookup:0")
