"""torch.compile'd decode steps and the speculative-decoding benchmark, on tiny random models (CPU, inductor).

``generate(..., compile=True)`` must give the same greedy tokens as eager decoding, report its compilation apart
from the decode time, and leave the model as it was; ``workbench bench speculative`` must write its JSON, with
speculative greedy identical to plain greedy.
"""

import pytest
import torch

from tests.helpers.generation_checks import (
    PROMPT,
    bench_json,
    graph_against_eager,
    saved,
    tiny_generation_models,
    untouched,
)
from tests.helpers.tiny_models import CONFIGS, tiny
from tests.helpers.triton_interpreter import dependent_launch
from workbench.generation import generate
from workbench.generation.bench import BENCH_FIELDS
from workbench.generation.compile import (
    CompileError,
    GatedMLPStep,
    NormedMamba2Step,
    ResidualLayerForward,
    ResidualMamba2Step,
    compile_targets,
)
from workbench.students import student_mixers
from workbench.teachers import anatomy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    return tiny_generation_models()


@pytest.mark.parametrize("name", ["teacher", "mamba2"])
def test_compiled_greedy_equals_eager(models, name):
    model = models[name]
    eager = generate(model, PROMPT, 10)
    compiled = generate(model, PROMPT, 10, compile=True)
    assert torch.equal(compiled.tokens, eager.tokens)
    assert compiled.compiled and not eager.compiled and eager.compile_seconds == 0
    assert compiled.compile_seconds > 0 and compiled.compile_note is None
    assert len(compiled.per_token_seconds) == compiled.tokens.shape[1] - 2       # the compiling step left out
    assert compiled.decode_seconds == pytest.approx(sum(compiled.per_token_seconds))
    assert untouched(model)
    again = generate(model, PROMPT, 10, compile=True)                             # compiled code reused
    assert torch.equal(again.tokens, eager.tokens)


def test_compile_targets_cover_mixer_steps_mlp_and_norms(models):
    targets = compile_targets(models["hybrid"], fold_residuals=False)             # the norms' fold alone
    named = [(type(module).__name__, method) for module, method, _ in targets]
    assert named.count(("Mamba2", "step")) == 1                                   # layer 1 is the one mixer
    assert named.count(("LlamaMLP", "forward")) == 3 and named.count(("LlamaRMSNorm", "forward")) == 6
    assert not any("Attention" in kind for kind, _ in named)
    mlps = [function for module, _, function in targets if type(module).__name__ == "LlamaMLP"]
    assert all(type(function.__self__).__name__ == "GatedMLPStep" for function in mlps)   # its first half one op


@pytest.mark.parametrize("name", ["mamba2", "hybrid"])
def test_unfolded_norms_greedy_equals_eager(models, name):
    """``fold_norms=False``: the norms compiled as modules of their own (the default folds them, which the test above
    runs): the eager greedy tokens, and the model left as it was."""
    model = models[name]
    eager = generate(model, PROMPT, 10)
    unfolded = generate(model, PROMPT, 10, compile=True, fold_norms=False)
    assert torch.equal(unfolded.tokens, eager.tokens) and unfolded.compiled
    assert untouched(model)


def test_fold_norms_targets(models):
    """In the hybrid (layer 1 the mixer), every MLP takes its norm, the mixer its layer's first norm; the two
    attention layers' first norms stay; every folded norm passes its input through."""
    model = models["hybrid"]
    targets = compile_targets(model, fold_residuals=False)
    functions = {id(module): function for module, _, function in targets}
    layers = anatomy.decoder_layers(model)
    norms = [anatomy.pre_norms(model, layer) for layer in layers]
    passed = [function.__name__ == "_passed_through" for function in
              (functions[id(n.attention)] for n in norms)]
    assert passed == [False, True, False]
    assert all(functions[id(n.mlp)].__name__ == "_passed_through" for n in norms)
    mlps = [functions[id(anatomy.gated_mlp(model, layer).module)].__self__ for layer in layers]
    assert all(type(m) is GatedMLPStep and m.norm is n.mlp for m, n in zip(mlps, norms))
    mixer = student_mixers(model)[1]
    step = [f for module, method, f in targets if module is mixer and method == "step"]
    assert len(step) == 1 and type(step[0].__self__) is NormedMamba2Step and step[0].__self__.norm is norms[1].attention
    assert len(targets) == len(compile_targets(model, fold_norms=False))   # the same modules, some in other functions
    assert len(compile_targets(model, fold_norms=False, fold_residuals=True)) == len(targets)  # needs fold_norms


@pytest.mark.parametrize("name", ["mamba2", "hybrid"])
def test_folded_residuals_greedy_equals_eager(models, name):
    """``fold_residuals`` (the default): every Mamba-2 layer's forward becomes its mixer step and MLP, each adding its
    residual in its last projection (a residual added twice or lost would change the tokens); the eager greedy tokens,
    and the model left as it was. Without the folded norms it does nothing."""
    model = models[name]
    targets = compile_targets(model)
    layers = [module for module, method, f in targets if isinstance(f, ResidualLayerForward)]
    steps = [f.__self__ for module, method, f in targets if method == "step"]
    assert len(layers) == len(steps) == len(student_mixers(model)) and all(type(s) is ResidualMamba2Step
                                                                          for s in steps)
    eager = generate(model, PROMPT, 10)
    folded = generate(model, PROMPT, 10, compile=True)
    assert torch.equal(folded.tokens, eager.tokens) and folded.compiled
    assert untouched(model)
    assert not any(isinstance(f, ResidualLayerForward) for _, _, f in compile_targets(model, fold_norms=False))
    assert not any(isinstance(f, ResidualLayerForward) for _, _, f in compile_targets(model, fold_residuals=False))
    unfolded = generate(model, PROMPT, 10, compile=True, fold_norms=False, fold_residuals=True)
    assert torch.equal(unfolded.tokens, eager.tokens)


def test_biased_projections_fold_the_norm_and_keep_the_residual_adds():
    """A Qwen2 student (in_proj and out_proj carry biases, as the teacher's q/k/v and from_attention's out_proj do):
    the norm folds into the biased in_proj; the residual adds stay (``linear_residual`` has no bias); the eager greedy
    tokens."""
    from workbench.students import build_student

    model = build_student(tiny("qwen2"), "mamba2").eval()
    mixers = student_mixers(model)
    assert all(m.in_proj.bias is not None and m.out_proj.bias is not None for m in mixers.values())
    targets = compile_targets(model, fold_residuals=True)
    assert not any(isinstance(f, ResidualLayerForward) for _, _, f in targets)
    assert sum(type(getattr(f, "__self__", None)) is NormedMamba2Step for _, _, f in targets) == len(mixers)
    ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    eager = generate(model, ids, 6)
    assert torch.equal(generate(model, ids, 6, compile=True, fold_residuals=True).tokens, eager.tokens)


def test_residuals_fold_only_where_the_layer_is_the_plain_pre_norm_sum(models):
    """A layer whose forward computes something else than x + mixer(norm(x)), then h + mlp(norm(h)) (here: its
    output scaled, as a residual multiplier would) keeps its forward and its residual adds; its norms still fold."""
    model = models["mamba2"]
    layer = anatomy.decoder_layers(model)[0]
    own = layer.forward
    layer.forward = lambda hidden_states, *args, **kwargs: 0.5 * own(hidden_states, *args, **kwargs)
    try:
        targets = compile_targets(model, fold_residuals=True)
    finally:
        del layer.forward
    assert not any(module is layer for module, _, _ in targets)
    mixer = student_mixers(model)[0]
    (step,) = [f.__self__ for module, method, f in targets if module is mixer and method == "step"]
    assert type(step) is NormedMamba2Step
    assert sum(isinstance(f, ResidualLayerForward) for _, _, f in targets) == len(student_mixers(model)) - 1


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_pre_norms_are_found_where_the_layout_says_and_compute_the_folded_norm(family):
    """``anatomy.pre_norms`` finds the two norms in exactly the families of ``PRE_NORMS``, and there each norm module
    computes the RMSNorm the folded ops compute, bit for bit (so folding changes no number on the CPU)."""
    from workbench.generation.compile import _is_rms_norm

    model = tiny(family)
    found = [anatomy.pre_norms(model, layer) for layer in anatomy.decoder_layers(model)]
    assert all(found) if family in anatomy.PRE_NORMS else not any(found)
    for norms in filter(None, found):
        assert _is_rms_norm(norms.attention, norms.eps) and _is_rms_norm(norms.mlp, norms.eps)


def test_compile_leaves_a_growing_state_eager(models):
    model = models["hyena"]
    result = generate(model, PROMPT, 6, compile=True)
    assert torch.equal(result.tokens, generate(model, PROMPT, 6).tokens)
    assert "Hyena" in result.compile_note and result.compiled
    assert untouched(model)


@pytest.mark.parametrize("fold_norms", [True, False])
def test_compile_failure_is_a_clear_error(models, fold_norms):
    """A mixer step dynamo cannot trace whole (here: the part between the projections, which both the mixer's own
    step and the folded step call) fails with a CompileError that names the way out, and the model is left as it
    was."""
    model = models["mamba2"]
    mixer = student_mixers(model)[0]

    def untraceable(zxbcdt, state):
        torch._dynamo.graph_break()
        return type(mixer).step_between_projections(mixer, zxbcdt, state)

    mixer.step_between_projections = untraceable
    try:
        with pytest.raises(CompileError, match="compile=False"):
            generate(model, PROMPT, 4, compile=True, fold_norms=fold_norms)
        assert mixer.step_between_projections is untraceable                    # put back as it was
    finally:
        del mixer.step_between_projections
    assert untouched(model)


def test_bench_generate_records_compile(models, tmp_path):
    (folder,) = saved(tmp_path, models, "mamba2")
    (row,) = bench_json(tmp_path, "generate", "--models", str(folder), "--batch", "1", "--context", "8", "--new", "4",
                        "--compile")["settings"]
    assert set(BENCH_FIELDS) <= set(row) and row["status"] == "ok"
    assert row["compile"] is True and row["compile_s"] > 0 and row["decode_tokens_per_s"] > 0
    assert row["fold_norms"] is True and row["fold_residuals"] is True            # the defaults with --compile
    (row,) = bench_json(tmp_path, "generate", "--models", str(folder), "--batch", "1", "--context", "8", "--new", "4",
                        "--compile", "--no-fold-norms")["settings"]
    assert row["compile"] is True and row["fold_norms"] is False and row["status"] == "ok"
    assert row["fold_residuals"] is False                                         # it needs the folded norms
    (row,) = bench_json(tmp_path, "generate", "--models", str(folder), "--batch", "1", "--context", "8", "--new", "4",
                        "--compile", "--no-fold-residuals")["settings"]
    assert row["fold_norms"] is True and row["fold_residuals"] is False and row["status"] == "ok"


def test_bench_speculative_cli_writes_identical_greedy(models, tmp_path):
    target, draft = saved(tmp_path, models, "teacher", "hybrid")
    report = bench_json(tmp_path, "speculative", "--target", str(target), "--draft", str(draft), "--k", "1,3",
                        "--batch", "2", "--context", "12", "--new", "10")
    assert (report["batch"], report["context"], report["new_tokens"]) == (2, 12, 10)
    assert report["target_decode_tokens_per_s"] > 0
    assert [r["k"] for r in report["results"]] == [1, 3]
    for r in report["results"]:
        assert r["identical"] is True and r["first_difference"] is None
        assert 0.0 <= r["acceptance_rate"] <= 1.0 and r["rounds"] > 0
        assert r["speculative_decode_tokens_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["speculative_decode_tokens_per_s"] / r["target_decode_tokens_per_s"])
        assert 0 < r["draft_share"] and 0 < r["verify_share"] and r["draft_share"] + r["verify_share"] <= 1


def test_bench_speculative_pools_several_prompts(models, tmp_path, monkeypatch):
    """``--prompts 3``: three prompt sets from three places in the text, each decoded plainly and speculatively;
    acceptance is the pooled accepted over proposed drafts, rounds and tokens add up, tokens/s is tokens over
    seconds."""
    from workbench.generation.bench import speculative as bench

    target, draft = saved(tmp_path, models, "teacher", "hybrid")
    seen = []
    speculative_generate = bench.speculative_generate

    def recording(target, draft, ids, new, **kw):
        result = speculative_generate(target, draft, ids, new, **kw)
        if new == 10:
            seen.append((ids.clone(), result))
        return result

    monkeypatch.setattr(bench, "speculative_generate", recording)
    report = bench.bench_speculative(str(target), str(draft), [2], batch=1, context=12, new=10, device="cpu",
                                     n_prompts=3, progress=False)
    (entry,) = report["results"]
    assert report["prompts"] == 3 and len(seen) == 3 and len(entry["per_prompt"]) == 3
    assert len({tuple(ids.flatten().tolist()) for ids, _ in seen}) == 3             # three different prompts
    results = [r for _, r in seen]
    assert entry["acceptance_rate"] == pytest.approx(sum(r.accepted for r in results) /
                                                     sum(r.proposed for r in results))
    assert entry["rounds"] == sum(p["rounds"] for p in entry["per_prompt"]) == sum(r.rounds for r in results)
    tokens = sum(r.decode_tokens_per_s * r.decode_seconds for r in results)
    assert entry["speculative_decode_tokens_per_s"] == pytest.approx(tokens / sum(r.decode_seconds for r in results))
    assert entry["identical"] is all(p["identical"] for p in entry["per_prompt"]) is True
    with pytest.raises(ValueError, match="prompts=0: decode at least one prompt"):
        bench.bench_speculative(str(target), str(draft), [2], device="cpu", n_prompts=0, progress=False)


@pytest.mark.gpu
def test_compiled_cuda_graph_decode_equals_eager(models):
    graph_against_eager(models, PROMPT.to(torch.device("cuda")), compile=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs compute capability 9.0 (Hopper) or later")
def test_compiled_decode_with_dependent_launch_equals_eager(models):
    """The decode kernels launched with programmatic dependent launch inside the captured step (each one's weights and
    state read while the kernel before it runs): the eager tokens, so no kernel reads an input before it is written."""
    with dependent_launch(True):
        graph_against_eager(models, PROMPT.to(torch.device("cuda")), compile=True)


@pytest.mark.gpu
def test_compiled_decode_with_unfolded_residuals_equals_eager(models):
    """The residual adds as kernels of their own (the test above adds them inside out_proj and down, the default: the
    Triton residual kernel), compiled and captured: the eager tokens."""
    graph_against_eager(models, PROMPT.to(torch.device("cuda")), compile=True, fold_residuals=False)


@pytest.mark.gpu
def test_compiled_decode_with_unfolded_norms_equals_eager(models):
    """The norms as modules of their own (the test above folds them, the default: the norm_linear kernel and the
    gated MLP kernel with its norm), compiled and captured: the eager tokens."""
    graph_against_eager(models, PROMPT.to(torch.device("cuda")), compile=True, fold_norms=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_decode_with_the_gated_mlp_reference_equals_eager(models):
    """The gated MLPs' first half through its PyTorch reference on CUDA (backend forced: the default there is the
    Triton kernel, which the test above runs), compiled and captured: the eager tokens."""
    from workbench.ops.backend import force_backend

    with force_backend("gated_mlp", "ref"):
        graph_against_eager(models, PROMPT.to(torch.device("cuda")), compile=True)
