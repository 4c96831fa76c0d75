"""The engine's throughput path against its plain twin: ``race_tokens`` against ``next_tokens`` (the same draws from
the same generator), the fused step with no per-step waits against the default loop (the same tokens), and a
``Decoder`` reused over several batches against fresh ``generate`` calls. CPU tests on tiny random models; the
CUDA-graph versions are marked gpu.
"""

import copy

import pytest
import torch

from tests.helpers.generation_checks import PROMPT, tiny_generation_models
from workbench.generation import THROUGHPUT, DecodeOptions, Decoder, Session, generate
from workbench.generation.engine import Chosen
from workbench.generation.sampling import filter_logits, next_tokens, race_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

EOF_TOKEN, PAD = 2, 0  # the tiny configs' eos and pad tokens
SETTINGS = [(0.0, None, None), (1.0, None, None), (0.7, None, 0.9), (1.3, 20, 0.5), (1.0, 5, None), (1.0, None, 1.0)]


@pytest.fixture(scope="module")
def models():
    return tiny_generation_models()


def sampled(model, ids, options, seed, n=10, **kw):
    return generate(model, ids, n, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(seed),
                    options=options, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_race_tokens_draw_what_multinomial_draws(temperature, top_k, top_p, dtype):
    logits = (torch.randn(64, 500, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    for seed in range(3):
        plain = next_tokens(logits, temperature, top_k, top_p, torch.Generator().manual_seed(seed))
        raced = race_tokens(logits, temperature, top_k, top_p, torch.Generator().manual_seed(seed))
        assert torch.equal(raced, plain)
    kept = filter_logits(logits.float() / max(temperature, 1e-6), top_k, top_p).isfinite()      # (B, V)
    assert kept.gather(-1, raced[:, None]).all()
    if temperature == 0:
        assert torch.equal(raced, logits.argmax(-1))
    else:
        other = race_tokens(logits, temperature, top_k, top_p, torch.Generator().manual_seed(99))
        assert not torch.equal(other, raced)


def test_race_tokens_follow_the_renormalised_nucleus():
    """20,000 draws from one row: each token's frequency is within 5 standard deviations of its probability in the
    top-p set (renormalised), and nothing outside the set is drawn."""
    row = torch.randn(1, 40, generator=torch.Generator().manual_seed(3)) * 2
    draws = 20_000
    tokens = race_tokens(row.expand(draws, -1), 0.8, None, 0.7, torch.Generator().manual_seed(0))
    probs = filter_logits(row / 0.8, None, 0.7).softmax(-1)[0]                                    # (V,)
    counts = torch.bincount(tokens, minlength=row.shape[1]).double()
    assert counts[probs == 0].sum() == 0 and (probs > 0).sum() > 3
    sigma = (draws * probs * (1 - probs)).sqrt().clamp(min=1.0)
    assert ((counts - draws * probs).abs() <= 5 * sigma).all()


def test_chosen_records_tokens_stops_and_padding():
    chosen = Chosen(batch=3, max_new_tokens=4, stop_tokens=[7, 9], pad=0, device=torch.device("cpu"))
    recorded = [chosen.record(torch.tensor(token)).tolist() for token in ([5, 7, 1], [6, 3, 9], [9, 4, 4])]
    assert recorded == [[5, 7, 1], [6, 0, 9], [9, 0, 0]]                            # pad after a stop token
    assert chosen.tokens.tolist() == [[5, 6, 9, 0], [7, 0, 0, 0], [1, 9, 0, 0]]
    assert chosen.lengths.tolist() == [3, 1, 2] and chosen.finished.tolist() == [True, True, True]
    assert int(chosen.count) == 3
    chosen.reset()
    assert int(chosen.count) == 0 and not chosen.finished.any() and chosen.lengths.tolist() == [4, 4, 4]


@pytest.mark.parametrize("name", ["teacher", "mamba2", "hyena", "hybrid-mid"])
def test_throughput_options_give_the_plain_tokens(models, name):
    model = models[name]
    greedy = generate(model, PROMPT, 10, stop_tokens=[EOF_TOKEN], pad_token_id=PAD)
    fast = generate(model, PROMPT, 10, stop_tokens=[EOF_TOKEN], pad_token_id=PAD, options=THROUGHPUT)
    assert torch.equal(fast.tokens, greedy.tokens) and fast.lengths == greedy.lengths
    assert fast.per_token_seconds == [] and fast.decode_steps == fast.tokens.shape[1] - 1
    assert fast.decode_seconds > 0 and fast.decode_tokens_per_s > 0
    for seed in (0, 1):
        assert torch.equal(sampled(model, PROMPT, THROUGHPUT, seed).tokens,
                           sampled(model, PROMPT, DecodeOptions(), seed).tokens)
    assert not torch.equal(sampled(model, PROMPT, THROUGHPUT, 0).tokens, sampled(model, PROMPT, THROUGHPUT, 1).tokens)


@pytest.mark.parametrize("every", [1, 3, 16])
def test_checking_for_stops_now_and_then_cuts_the_same_tokens(models, every):
    """A stop token from row 0's free continuation: decoding on past the last stop (up to ``every`` steps) adds only
    padding, which is cut, so tokens and lengths are those of checking at every step."""
    model = models["mamba2"]
    free = generate(model, PROMPT, 12).tokens
    stop = int(free[0, 3])
    plain = generate(model, PROMPT, 12, stop_tokens=[stop], pad_token_id=PAD)
    fast = generate(model, PROMPT, 12, stop_tokens=[stop], pad_token_id=PAD,
                    options=DecodeOptions.of(THROUGHPUT, stop_check_every=every))
    assert torch.equal(fast.tokens, plain.tokens) and fast.lengths == plain.lengths
    single = generate(model, PROMPT[:1], 12, stop_tokens=[stop], options=DecodeOptions.of(THROUGHPUT,
                                                                                         stop_check_every=every))
    assert single.tokens.shape[1] == plain.lengths[0]                              # all finished: cut back
    with pytest.raises(ValueError, match="stop_check_every"):
        DecodeOptions(stop_check_every=0)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("name", ["teacher", "mamba2", "hybrid-mid"])
def test_a_restarted_session_reads_a_new_prompt_as_a_new_session(models, name, static):
    model = models[name]
    other = PROMPT.flip(0)
    with torch.no_grad():
        session = Session(model, max_length=PROMPT.shape[1] + 2, static=static)
        session.forward(PROMPT)
        session.forward(PROMPT[:, :1])
        session.restart()
        assert session.length == 0
        restarted = [session.forward(other), session.forward(other[:, :1])]
        fresh = Session(model, max_length=PROMPT.shape[1] + 2, static=static)
        expected = [fresh.forward(other), fresh.forward(other[:, :1])]
    for got, want in zip(restarted, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["teacher", "hybrid-mid"])
def test_a_decoder_reuses_its_session_for_batches_of_one_shape(models, name):
    model = models[name]
    decoder = Decoder(model, THROUGHPUT)
    generator = torch.Generator()
    other = torch.randint(3, 100, PROMPT.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for ids, seed in ((PROMPT, 0), (other, 1), (PROMPT, 0)):
        generator.manual_seed(seed)
        results.append(decoder.generate(ids, 10, temperature=1.0, top_p=0.9, stop_tokens=[EOF_TOKEN],
                                        pad_token_id=PAD, generator=generator))
    assert decoder.reuses == 2 and decoder.captures == 0                           # CPU: no graph to capture
    assert torch.equal(results[0].tokens, results[2].tokens)
    for result, (ids, seed) in zip(results, ((PROMPT, 0), (other, 1)), strict=False):
        fresh = generate(model, ids, 10, temperature=1.0, top_p=0.9, stop_tokens=[EOF_TOKEN], pad_token_id=PAD,
                         generator=torch.Generator().manual_seed(seed))
        assert torch.equal(result.tokens, fresh.tokens) and result.lengths == fresh.lengths
    decoder.generate(PROMPT, 6)                                                    # another shape: starts over
    assert decoder.reuses == 2


# ---- on a GPU: the step captured with its token choice ----------------------------------------------------------

@pytest.mark.gpu
def test_captured_race_sampler_draws_what_eager_draws_and_follows_reseeding():
    device = torch.device("cuda")
    logits = torch.randn(256, 49152, generator=torch.Generator().manual_seed(0)).mul(3).to(device, torch.bfloat16)
    generator = torch.Generator(device=device)
    static = logits.clone()
    generator.manual_seed(0)
    race_tokens(static, 1.0, None, 0.95, generator)                                # warm-up, outside the graph
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        out = race_tokens(static, 1.0, None, 0.95, generator)
    for seed in (1, 2, 1):
        generator.manual_seed(seed)
        replays = []
        for _ in range(2):
            graph.replay()
            replays.append(out.clone())
        reference = torch.Generator(device=device).manual_seed(seed)
        for replayed in replays:                                                   # two draws in a row
            assert torch.equal(replayed, next_tokens(logits, 1.0, None, 0.95, reference))
    assert not torch.equal(replays[0], replays[1])


@pytest.mark.gpu
def test_fused_graph_decoding_equals_the_plain_graph_and_eager(models):
    device = torch.device("cuda")
    ids = PROMPT.to(device)
    for name in ("teacher", "mamba2", "hybrid"):
        model = copy.deepcopy(models[name]).to(device)
        eager = generate(model, ids, 12, cuda_graph=False)
        fused = generate(model, ids, 12, options=DecodeOptions.of(THROUGHPUT, cuda_graph=True))
        assert fused.cuda_graph and torch.equal(fused.tokens, eager.tokens), name
        for seed in (0, 1):
            plain = generate(model, ids, 12, temperature=1.0, top_p=0.9, cuda_graph=True,
                             generator=torch.Generator(device=device).manual_seed(seed))
            fast = generate(model, ids, 12, temperature=1.0, top_p=0.9, generator=torch.Generator(
                device=device).manual_seed(seed), options=DecodeOptions.of(THROUGHPUT, cuda_graph=True))
            assert plain.cuda_graph and fast.cuda_graph and torch.equal(fast.tokens, plain.tokens), name


@pytest.mark.gpu
def test_a_decoder_replays_one_captured_step_for_every_batch(models):
    device = torch.device("cuda")
    prompts = [PROMPT.to(device), PROMPT.flip(0).to(device), PROMPT.to(device)]
    for name in ("teacher", "mamba2", "hybrid"):
        model = copy.deepcopy(models[name]).to(device)
        decoder = Decoder(model, DecodeOptions.of(THROUGHPUT, cuda_graph=True))
        generator = torch.Generator(device=device)
        results = []
        for seed, ids in enumerate(prompts):
            generator.manual_seed(seed % 2)
            results.append(decoder.generate(ids, 12, temperature=1.0, top_p=0.9, generator=generator))
        assert decoder.captures == 1 and decoder.reuses == 2, name
        assert results[1].graph_capture_seconds == 0 and results[1].cuda_graph, name
        assert torch.equal(results[0].tokens, results[2].tokens), name
        fresh = generate(model, prompts[1], 12, temperature=1.0, top_p=0.9, cuda_graph=True,
                         generator=torch.Generator(device=device).manual_seed(1))
        assert torch.equal(results[1].tokens, fresh.tokens), name


def test_counting_kernels_changes_no_token_and_needs_cuda(models):
    plain = generate(models["hybrid"], PROMPT, 6)
    counted = generate(models["hybrid"], PROMPT, 6, count_kernels=True)
    assert torch.equal(counted.tokens, plain.tokens) and counted.kernels_per_step is None   # the CPU has no kernels
    assert len(counted.per_token_seconds) == len(plain.per_token_seconds)


@pytest.mark.gpu
def test_kernels_of_one_decode_step_are_counted_and_that_step_untimed(models):
    """A teacher's decode step runs at least ten kernels per layer (projections, norms, rotary, attention, MLP),
    captured or eager; the counted step is left out of the timing and every token is the same."""
    device = torch.device("cuda")
    ids = PROMPT.to(device)
    model = copy.deepcopy(models["teacher"]).to(device)
    for options in (DecodeOptions(cuda_graph=True), DecodeOptions(cuda_graph=False), THROUGHPUT):
        plain = generate(model, ids, 8, options=options)
        counted = generate(model, ids, 8, options=DecodeOptions.of(options, count_kernels=True))
        assert torch.equal(counted.tokens, plain.tokens)
        assert counted.kernels_per_step >= 10 * model.config.num_hidden_layers, options
        assert counted.decode_steps == plain.decode_steps - 1, options
