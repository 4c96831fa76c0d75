"""The generation engine, speculative decoding and the generation benchmarks, on tiny random models (CPU, fast).

Greedy decoding must reproduce transformers' own ``generate()`` token for token, for a teacher and for students
(Mamba-2, Hyena, a hybrid keeping attention layers); speculative greedy decoding must reproduce plain greedy.
"""

import copy

import pytest
import torch
from transformers import DynamicCache

from tests.helpers.generation_checks import PROMPT, bench_json, graph_against_eager, saved, tiny_generation_models
from tests.helpers.tiny_models import tiny
from workbench.generation import DecodeOptions, Session, generate, speculative_generate
from workbench.generation.bench import BENCH_FIELDS, position_buckets, run_setting
from workbench.generation.bench.speed import hf_kernels_per_step
from workbench.generation.models import LoadedModel
from workbench.generation.sampling import filter_logits, next_tokens
from workbench.generation.session import cache_keyword
from workbench.students import build_student, student_mixers
from workbench.students.adapter import mixer_attentions
from workbench.teachers import anatomy

pytestmark = pytest.mark.usefixtures("one_thread")

EOS, PAD = 2, 0  # the tiny configs' eos and pad tokens


@pytest.fixture(scope="module")
def models():
    return tiny_generation_models()


def hf_greedy(model, ids, n):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=EOS, pad_token_id=PAD)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("name", ["teacher", "mamba2", "hyena", "hybrid", "hybrid-mid"])
def test_greedy_equals_transformers_generate(models, name):
    model = models[name]
    result = generate(model, PROMPT, 10, stop_tokens=[EOS], pad_token_id=PAD)
    assert torch.equal(result.tokens, hf_greedy(model, PROMPT, 10))
    assert len(result.per_token_seconds) == result.tokens.shape[1] - 1
    assert result.prefill_seconds > 0 and not result.cuda_graph
    assert all(m.__class__.__name__ == "MixerAttention" for m in
               [layer.self_attn for layer in model.model.layers if "Mixer" in type(layer.self_attn).__name__])


@pytest.mark.parametrize("name", ["teacher", "mamba2", "hyena", "hybrid-mid"])
def test_chunked_prefill_gives_the_same_greedy_tokens(models, name):
    """The prompt fed 4 (then 4, then 1) tokens at a time: mixers continue with ``extend``, attention via its cache."""
    whole = generate(models[name], PROMPT, 8)
    chunked = generate(models[name], PROMPT, 8, prefill_chunk=4)
    assert torch.equal(chunked.tokens, whole.tokens)
    assert torch.equal(generate(models[name], PROMPT, 8, options=DecodeOptions(prefill_chunk=4)).tokens, whole.tokens)
    with pytest.raises(ValueError, match="prefill_chunk"):
        generate(models[name], PROMPT, 2, prefill_chunk=0)


def test_decode_options_come_from_keywords_or_options(models):
    both = DecodeOptions.of(DecodeOptions(compile=True), prefill_chunk=4)
    assert both == DecodeOptions(compile=True, prefill_chunk=4)
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(models["mamba2"], PROMPT, 2, options=DecodeOptions.of(cuda_graph="yes"))
    with pytest.raises(TypeError, match="cuda_grph"):
        generate(models["mamba2"], PROMPT, 2, cuda_grph=False)


@pytest.mark.parametrize("name", ["teacher", "mamba2", "hybrid-mid"])
def test_static_cache_session_takes_a_chunked_prompt(models, name):
    """The CUDA-graph path's static cache (a mixer at layer 0 in hybrid-mid): a prompt fed in chunks, then a token,
    gives the logits of the dynamic cache's whole-prompt session (positions come from the cache's length)."""
    model = models[name]
    token = PROMPT[:, :1]
    with torch.no_grad():
        whole = Session(model)
        whole.forward(PROMPT)
        expected = whole.forward(token)
        static = Session(model, max_length=PROMPT.shape[1] + 1, static=True)
        for start in range(0, PROMPT.shape[1], 4):
            static.forward(PROMPT[:, start:start + 4])
        assert static.cache.get_seq_length() == PROMPT.shape[1]
        torch.testing.assert_close(static.forward(token), expected, rtol=1e-4, atol=1e-5)


def test_a_static_decode_step_moves_a_mixer_layers_length_without_writing_into_the_cache(models, monkeypatch):
    """After the prompt, a mixer layer of a static cache has its length counter moved on and nothing written (a
    decode step's only cache writes are the kept attention layers' keys and values): hybrid, layers 0 and 2 kept."""
    from transformers.cache_utils import StaticLayer

    model = models["hybrid"]
    with torch.no_grad():
        session = Session(model, max_length=PROMPT.shape[1] + 2, static=True)
        session.forward(PROMPT)
        marks = session.cache.layers[1].keys.clone()
        layers = session.cache.layers
        written = []
        update = StaticLayer.update
        monkeypatch.setattr(StaticLayer, "update", lambda self, *a, **k: written.append(layers.index(self)) or
                            update(self, *a, **k))
        session.forward(PROMPT[:, :1])
    assert written == [0, 2]
    assert [int(layer.cumulative_length) for layer in layers] == [PROMPT.shape[1] + 1] * 3
    assert torch.equal(layers[1].keys, marks)


def test_one_decoding_state_per_layer_and_cache(models, monkeypatch):
    """The session reaches each mixer layer's state through its cache, the state MixerAttention runs for that cache;
    a multi-token continuation through transformers' own cache runs one ``Mixer.extend``, as the engine does."""
    model = models["hybrid"]
    (attention,) = mixer_attentions(model).values()
    mixer = type(attention.mixer)
    with torch.no_grad():
        session = Session(model)
        assert session.mixers == {1: attention.state_for(session.cache)}
        expected = model(PROMPT, use_cache=False).logits
        cached = {cache_keyword(model): DynamicCache(config=model.config), "use_cache": True}
        parts = [model(PROMPT[:, :4], **cached).logits]
        calls = []
        extend, step = mixer.extend, mixer.step
        monkeypatch.setattr(mixer, "extend", lambda *a: calls.append("extend") or extend(*a))
        monkeypatch.setattr(mixer, "step", lambda *a: calls.append("step") or step(*a))
        parts.append(model(PROMPT[:, 4:], **cached).logits)
    assert calls == ["extend"] and attention.state_for(cached[cache_keyword(model)]).seen == PROMPT.shape[1]
    torch.testing.assert_close(torch.cat(parts, dim=1), expected, rtol=1e-4, atol=1e-5)


def test_session_rollback_equals_never_going_ahead(models):
    """checkpoint, read 5 more tokens, roll back to 2 of them: the next logits are those of reading only the 2."""
    model = models["hybrid-mid"]
    with torch.no_grad():
        ahead, direct = Session(model), Session(model)
        for session in (ahead, direct):
            session.forward(PROMPT[:, :4])
        ahead.checkpoint()
        ahead.forward(PROMPT[:, 4:9])
        ahead.rollback(6)
        direct.forward(PROMPT[:, 4:6])
        assert ahead.length == direct.length == 6 and ahead.cache.get_seq_length() == 6
        torch.testing.assert_close(ahead.forward(PROMPT[:, 6:7]), direct.forward(PROMPT[:, 6:7]),
                                   rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="between the checkpoint"):
            ahead.rollback(3)


def test_sampling_is_reproducible_and_respects_top_k(models):
    model = models["hybrid"]

    def run(seed, **kw):
        return generate(model, PROMPT, 8, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(3).tokens, run(3).tokens)
    assert not torch.equal(run(3).tokens, run(4).tokens)
    assert torch.equal(run(5, top_k=1).tokens, generate(model, PROMPT, 8).tokens)  # top-1 sampling is greedy

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    kept = filter_logits(logits, top_k=5).isfinite()
    assert kept.sum(-1).eq(5).all()
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(5).indices, True))
    draws = torch.stack([next_tokens(logits, 1.0, top_k=5, generator=torch.Generator().manual_seed(s))
                         for s in range(50)])                                      # (50, 4)
    assert kept.gather(-1, draws.T).all()
    nucleus = filter_logits(logits, top_p=0.5).isfinite()
    probs = logits.softmax(-1)
    assert (probs.masked_fill(~nucleus, 0).sum(-1) >= 0.5).all()
    assert (nucleus.sum(-1) >= 1).all() and nucleus.sum() < kept.numel()


def test_stop_tokens_finish_each_sequence(models):
    model = models["mamba2"]
    free = generate(model, PROMPT, 10).tokens
    stop = int(free[0, 3])
    first = [int((row == stop).nonzero()[0]) if (row == stop).any() else None for row in free]
    result = generate(model, PROMPT, 10, stop_tokens=[stop], pad_token_id=PAD)
    assert result.lengths[0] == first[0] + 1
    assert torch.equal(result.tokens[0, : first[0] + 1], free[0, : first[0] + 1])
    assert result.tokens[0, first[0] + 1:].eq(PAD).all()
    single = generate(model, PROMPT[:1], 10, stop_tokens=[stop])
    assert single.tokens.shape[1] == first[0] + 1                                  # all finished: decoding ends


def perturbed(model, scale):
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * scale)
    return draft


def shallow(model, keep):
    """A copy of ``model`` keeping only the decoder layers ``keep`` (a shallow draft, as ``--depth`` builds one)."""
    draft = copy.deepcopy(model)
    anatomy.keep_layers(draft, keep)
    return draft


@pytest.mark.parametrize("target", ["hybrid", "hybrid-mid", "mamba2", "teacher"])
def test_speculative_greedy_equals_plain_greedy(models, target):
    model = models[target]
    plain = generate(model, PROMPT, 16, stop_tokens=[EOS], pad_token_id=PAD).tokens
    rates = []
    for draft in (model, models["teacher"], models["hyena"], perturbed(model, 0.05)):
        for k in (1, 3):
            result = speculative_generate(model, draft, PROMPT, 16, k=k, stop_tokens=[EOS], pad_token_id=PAD)
            assert torch.equal(result.tokens, plain)
            assert 0.0 <= result.acceptance_rate <= 1.0
            rates.append(result.acceptance_rate)
    assert rates[0] == rates[1] == 1.0                                             # the model drafting for itself
    single = speculative_generate(model, perturbed(model, 0.05), PROMPT[:1], 16, k=4)
    assert torch.equal(single.tokens, generate(model, PROMPT[:1], 16).tokens)


def test_shallow_students_generate_and_draft(models):
    """A shallow student (the teacher's layers 0 and 2, layer 2 keeping attention, renumbered 1): the engine's greedy
    tokens are transformers' own, and as a draft or as a target it leaves the greedy text of its target unchanged."""
    shallow = build_student(models["teacher"], "mamba2", keep_attention=[2], source_layers=[0, 2]).eval()
    assert torch.equal(generate(shallow, PROMPT, 10, stop_tokens=[EOS], pad_token_id=PAD).tokens,
                       hf_greedy(shallow, PROMPT, 10))
    for target, draft in ((models["teacher"], shallow), (models["hybrid"], shallow), (shallow, models["mamba2"])):
        plain = generate(target, PROMPT, 16, stop_tokens=[EOS], pad_token_id=PAD).tokens
        result = speculative_generate(target, draft, PROMPT, 16, k=3, stop_tokens=[EOS], pad_token_id=PAD)
        assert torch.equal(result.tokens, plain)


def test_targets_verify_in_place_where_their_layers_allow_else_by_rolling_back(models):
    """Attention and Mamba-2 layers verify a block in place on a static cache (the pass a CUDA graph captures);
    Hyena layers cannot, so that target checkpoints and rolls back, and gives its plain greedy tokens all the same."""
    from workbench.generation.verify import Rollback, Verifier, target_verifier, verification_session

    chosen = {}
    for name in ("teacher", "mamba2", "hybrid", "hyena"):
        session = verification_session(models[name], 40)
        chosen[name] = type(target_verifier(session, 2, 4, 40, graph=False))
    assert chosen == {"teacher": Verifier, "mamba2": Verifier, "hybrid": Verifier, "hyena": Rollback}
    model = models["hyena"]
    plain = generate(model, PROMPT, 16, stop_tokens=[EOS], pad_token_id=PAD).tokens
    for draft in (model, perturbed(model, 0.05)):
        result = speculative_generate(model, draft, PROMPT, 16, k=3, stop_tokens=[EOS], pad_token_id=PAD)
        assert torch.equal(result.tokens, plain) and not result.cuda_graph
    assert speculative_generate(model, model, PROMPT, 16, k=3).acceptance_rate == 1.0
    with pytest.raises(ValueError, match="needs a CUDA device"):
        speculative_generate(model, model, PROMPT, 4, cuda_graph=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_speculative_verification_is_captured_on_cuda(models, monkeypatch):
    """A draft model's rounds on CUDA: the target's pass replays a CUDA graph, and so does each draft step of a
    draft that goes back by snapshots (all Mamba-2, a hybrid, a shallow draft keeping attention on the static
    cache); the tokens, the acceptance and the drafts are those of the eager rounds with the re-running drafter."""
    from workbench.generation import speculative

    prompt = PROMPT.to("cuda")
    drafts = {"hybrid": perturbed(models["hybrid"], 0.05).to("cuda"),       # perturbed on the CPU, then moved
              "all Mamba-2": perturbed(models["mamba2"], 0.005).to("cuda"),
              "shallow hybrid": shallow(models["hybrid"], [0, 1]).to("cuda"),
              "shallow attention": shallow(models["teacher"], [0]).to("cuda")}
    target = models["hybrid"].to("cuda")
    plain = generate(target, prompt, 24, cuda_graph=False).tokens
    partly = []                                                  # drafts with rounds that went back part way
    for name, draft in drafts.items():
        captured = speculative_generate(target, draft, prompt, 24, k=3)
        monkeypatch.setattr(speculative.SnapshotDraft, "fits", staticmethod(lambda session, batch: False))
        rerun = speculative_generate(target, draft, prompt, 24, k=3, cuda_graph=False)
        monkeypatch.undo()
        assert captured.cuda_graph and not rerun.cuda_graph, name
        assert torch.equal(captured.tokens, rerun.tokens) and torch.equal(captured.tokens, plain), name
        assert (captured.accepted, captured.rounds) == (rerun.accepted, rerun.rounds), name
        partly += [name] if 0 < captured.accepted < captured.proposed else []
    assert partly
    mamba2 = models["mamba2"].to("cuda")
    snapshots = speculative_generate(mamba2, drafts["all Mamba-2"], prompt, 24, k=3)
    eager = speculative_generate(mamba2, drafts["all Mamba-2"], prompt, 24, k=3, cuda_graph=False)
    assert torch.equal(snapshots.tokens, eager.tokens) and snapshots.accepted == eager.accepted
    assert 0 < snapshots.accepted < snapshots.proposed
    with pytest.raises(ValueError, match="verifies by rolling back"):
        speculative_generate(models["hyena"].to("cuda"), models["hyena"], prompt, 4, cuda_graph=True)
    for name in ("hybrid", "hyena", "mamba2"):
        models[name].to("cpu")


def test_phase_clock_sums_each_phase_over_the_rounds(models):
    """``PhaseClock`` on the host: the time between a round's marks, summed by phase; a speculative generation's
    drafting and verifying fit in its decode time."""
    import time

    from workbench.generation.speculative import PhaseClock

    clock = PhaseClock(torch.device("cpu"), phases=2)
    for _ in range(3):
        clock.mark()
        time.sleep(0.01)
        clock.mark()
        time.sleep(0.03)
        clock.mark()
    draft, verify = clock.totals()
    assert 0.03 <= draft < 0.09 and 0.09 <= verify < 0.2
    result = speculative_generate(models["hybrid"], models["mamba2"], PROMPT, 12, k=3)
    assert result.rounds > 0 and 0 < result.draft_seconds and 0 < result.verify_seconds
    assert result.draft_seconds + result.verify_seconds <= result.decode_seconds


def test_drafts_go_back_by_state_snapshots(models, monkeypatch):
    """Drafts whose steps update their states in place (all Mamba-2, a hybrid, a shallow draft of attention and
    Mamba-2 layers, one of attention only) go back by state snapshots (``SnapshotDraft``: what a step moves on copied
    after each step and restored on rejection, an eager draft's dynamic cache cropped); a Hyena draft re-runs the kept
    tokens (``ModelDraft``, the reference twin). Going back to the same place, the two propose the same drafts in
    every round."""
    from workbench.generation import speculative

    real = speculative.model_drafter

    def rounds(target, draft, snapshots: bool) -> tuple[list[str], list[torch.Tensor], object]:
        """The drafter chosen, every round's drafts, and the result."""
        kinds, drafts = [], []

        def recording(*args):
            drafter = real(*args)
            kinds.append(type(drafter).__name__)
            propose = drafter.propose
            drafter.propose = lambda k: drafts.append(propose(k).clone()) or drafts[-1]
            return drafter

        monkeypatch.setattr(speculative, "model_drafter", recording)
        if not snapshots:
            monkeypatch.setattr(speculative.SnapshotDraft, "fits", staticmethod(lambda session, batch: False))
        result = speculative_generate(target, draft, PROMPT, 20, k=3, stop_tokens=[EOS], pad_token_id=PAD)
        monkeypatch.undo()
        return kinds, drafts, result

    gpt2 = build_student(tiny("gpt2"), "mamba2").eval()
    cases = {  # target, draft: tiny random models' argmax is fragile, so a draft is a small change of a model
        "all Mamba-2": (models["mamba2"], perturbed(models["mamba2"], 0.005)),
        "hybrid": (models["hybrid"], perturbed(models["hybrid"], 0.005)),
        "shallow hybrid": (models["hybrid"], shallow(models["hybrid"], [0, 1])),
        "attention only": (models["mamba2"], perturbed(models["teacher"], 0.005)),
        "shallow attention": (models["hybrid"], shallow(models["teacher"], [0])),
        # GPT-2's learned positions: a draft that went back to the wrong position would draft other tokens
        "GPT-2, shallow attention": (gpt2, shallow(tiny("gpt2"), [0])),
        "GPT-2, all Mamba-2": (gpt2, perturbed(gpt2, 0.005)),
    }
    accepted = {}
    for name, (target, draft) in cases.items():
        kinds, snap_drafts, snap = rounds(target, draft, snapshots=True)
        rerun_kinds, rerun_drafts, rerun = rounds(target, draft, snapshots=False)
        assert (kinds, rerun_kinds) == (["SnapshotDraft"], ["ModelDraft"]), name
        assert len(snap_drafts) == len(rerun_drafts) >= 5, name
        for a, b in zip(snap_drafts, rerun_drafts):
            assert torch.equal(a, b), name
        assert torch.equal(snap.tokens, rerun.tokens), name
        assert (snap.accepted, snap.proposed, snap.rounds) == (rerun.accepted, rerun.proposed, rerun.rounds), name
        accepted[name] = snap.accepted / snap.proposed
    assert 0 < accepted["hybrid"] < 1 and 0 < accepted["shallow hybrid"] < 1     # rounds that went back part way
    kinds, _, _ = rounds(models["teacher"], models["hyena"], snapshots=True)
    assert kinds == ["ModelDraft"]


@pytest.mark.parametrize("mixer", ["mamba2", "hyena"])
def test_mixer_prefill_state_equals_stepping(models, mixer):
    m = student_mixers(models[mixer])[1]
    x = torch.randn(2, 12, m.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, state = m.prefill(x[:, :8])
        stepped = m.init_state(2)
        for t in range(8):
            _, stepped = m.step(x[:, t], stepped)
        assert state.keys() == stepped.keys()
        for key in state:
            torch.testing.assert_close(state[key], stepped[key])
        torch.testing.assert_close(y, m(x[:, :8]))
        tail = []
        for t in range(8, 12):
            y_t, state = m.step(x[:, t], state)
            tail.append(y_t)
        torch.testing.assert_close(torch.stack(tail, 1), m(x)[:, 8:], atol=1e-5, rtol=1e-4)


def test_bench_generate_cli_writes_the_documented_json(models, tmp_path):
    folder, student = saved(tmp_path, models, "teacher", "hybrid")
    plot = tmp_path / "bench.html"
    report = bench_json(tmp_path, "generate", "--models", f"{folder},{student}", "--hf-baseline", "--batch", "1,2",
                        "--context", "8,4096", "--new", "4", "--plot", str(plot))
    assert plot.is_file()
    assert report["bandwidth_bytes_per_s"] > 0 and report["new_tokens"] == 4
    settings = report["settings"]
    assert len(settings) == 2 * 2 * 2 * 2                                          # models x engines x batch x ctx
    for s in settings:
        assert set(BENCH_FIELDS) <= set(s)
        if s["context"] == 4096:
            assert s["status"] == "skipped" and "maximum context" in s["reason"]
        else:
            assert s["status"] == "ok" and s["decode_tokens_per_s"] > 0 and s["ttft_s"] > 0 < s["ttft_first_s"]
            assert s["per_token_p50_s"] <= s["per_token_p95_s"] and s["peak_memory_bytes"] is None
            assert s["bytes_per_step"] > 0 and 0 < s["floor_fraction"]
    assert {s["engine"] for s in settings} == {"workbench", "hf-generate"}


def hf_row(model, ids, new=4) -> dict:
    """The hf-generate record of one bench setting for ``model`` on ids' device."""
    return run_setting(LoadedModel(model, None, "teacher", "model"), "hf-generate", ids, new, bandwidth=1e12)


def test_time_to_first_token_is_measured_after_a_warm_up_call_on_the_same_prompts(models, monkeypatch):
    """The engine's row runs one call of a single new token on the very prompts first (its prefill + first token is
    ttft_first_s: kernels compiled or autotuned for the shape land there), then the timed run, whose prefill is
    ttft_s."""
    from workbench.generation.bench import speed

    calls = []

    def recording(model, ids, new, **kw):
        result = generate(model, ids, new, **kw)
        calls.append((ids, new, result.prefill_seconds))
        return result

    monkeypatch.setattr(speed, "generate", recording)
    record = run_setting(LoadedModel(models["hybrid"], None, "hybrid", "model"), "workbench", PROMPT, 4,
                         bandwidth=1e12)
    assert [new for _, new, _ in calls] == [1, 4] and all(ids is PROMPT for ids, _, _ in calls)
    assert (record["ttft_first_s"], record["ttft_s"]) == (calls[0][2], calls[1][2])
    assert hf_row(models["teacher"], PROMPT)["ttft_first_s"] > 0


def test_repeat_pools_timed_runs_and_keeps_each_runs_rate(models, monkeypatch):
    """With repeat 3 the engine's row makes its warm-up call, then three timed runs on the same prompts; the record's
    tokens/s is the pooled one (total tokens over total time), so it lies within the three runs' own rates, which
    the record keeps. hf-generate repeats the same way; repeat 0 is refused."""
    from workbench.generation.bench import speed

    news = []

    def recording(model, ids, new, **kw):
        news.append(new)
        return generate(model, ids, new, **kw)

    monkeypatch.setattr(speed, "generate", recording)
    record = run_setting(LoadedModel(models["hybrid"], None, "hybrid", "model"), "workbench", PROMPT, 4,
                         bandwidth=1e12, repeat=3)
    rates = record["decode_tokens_per_s_runs"]
    assert news == [1, 4, 4, 4] and record["repeat"] == 3 and len(rates) == 3
    assert min(rates) * (1 - 1e-9) <= record["decode_tokens_per_s"] <= max(rates) * (1 + 1e-9)
    assert record["decode_tokens_per_s"] == pytest.approx(PROMPT.shape[0] * 3 * 3 / record["decode_s"])
    hf = run_setting(LoadedModel(models["teacher"], None, "teacher", "model"), "hf-generate", PROMPT, 4,
                     bandwidth=1e12, repeat=2)
    assert hf["repeat"] == 2 and len(hf["decode_tokens_per_s_runs"]) == 2 and hf["status"] == "ok"
    assert hf_row(models["teacher"], PROMPT)["decode_tokens_per_s_runs"] is not None
    with pytest.raises(ValueError, match="repeat=0"):
        run_setting(LoadedModel(models["teacher"], None, "teacher", "model"), "hf-generate", PROMPT, 4,
                    bandwidth=1e12, repeat=0)


def test_hf_generate_row_counts_no_kernels_on_the_cpu(models):
    record = hf_row(models["teacher"], PROMPT)
    assert record["status"] == "ok" and record["decode_tokens_per_s"] > 0
    assert record["kernels_per_step"] is None and hf_kernels_per_step(models["teacher"], PROMPT) is None


def test_bench_quality_cli(models, tmp_path):
    teacher, student = saved(tmp_path, models, "teacher", "hybrid")
    report = bench_json(tmp_path, "quality", "--models", str(student), "--teacher", str(teacher), "--window", "32",
                        "--max-tokens", "200", "--prompts", "2", "--new", "5")
    entry = report["models"][0]
    assert entry["compare"]["kl"] >= 0 and 0 <= entry["compare"]["agreement"] <= 1
    assert [(b["start"], b["end"]) for b in entry["buckets"]] == position_buckets(32) == [(0, 16), (16, 32)]
    assert all(b["kl"] >= 0 and 0 <= b["agreement"] <= 1 for b in entry["buckets"])
    assert len(report["continuations"]) == 2
    assert set(report["continuations"][0]) == {"prompt", "teacher", str(student)}


@pytest.mark.gpu
def test_hf_generate_row_counts_the_kernels_of_one_decode_step(models):
    """On CUDA the hf-generate row reports the kernels of one decode step of transformers' generate() (a 2-token run
    less a 1-token run): at least one per layer, and the same when counted again."""
    device = torch.device("cuda")
    ids = PROMPT.to(device)
    model = copy.deepcopy(models["teacher"]).to(device)
    with torch.no_grad():
        counted = hf_row(model, ids)["kernels_per_step"]
        again = [hf_kernels_per_step(model, ids) for _ in range(2)]
    assert isinstance(counted, int) and counted >= model.config.num_hidden_layers
    assert again == [counted, counted]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_split_decode_attention_in_a_cuda_graph_gives_the_eager_tokens(models):
    """The kept attention layers through the flash-decoding kernels (``decode_attention`` backend "split", the
    default on CUDA), replayed from the captured step: the greedy tokens of the eager step through the grouped sdpa
    call (float32)."""
    from workbench.ops.backend import force_backend

    ids = PROMPT.to(torch.device("cuda"))
    for name in ("teacher", "hybrid"):
        model = copy.deepcopy(models[name]).to(ids.device)
        with force_backend("decode_attention", "grouped"):
            eager = generate(model, ids, 16, cuda_graph=False)
        with force_backend("decode_attention", "split"):
            split = generate(model, ids, 16)
        assert split.cuda_graph and torch.equal(split.tokens, eager.tokens), name


@pytest.mark.gpu
def test_cuda_graph_decode_equals_eager(models):
    ids = PROMPT.to(torch.device("cuda"))
    graph_against_eager(models, ids, compile=False)
    hyena = copy.deepcopy(models["hyena"]).to(ids.device)
    auto = generate(hyena, ids, 12)
    assert not auto.cuda_graph and "Hyena" in auto.graph_note
    assert torch.equal(auto.tokens, generate(hyena, ids, 12, cuda_graph=False).tokens)
