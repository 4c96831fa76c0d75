"""Work a step leaves out (``workbench.distill.step``), checked against the step that does it all, on tiny decoders of
every family: the same loss terms and the same gradient for every trained parameter.

- A stage without "kl" runs the teacher only up to its last chosen layer (``Teacher.capture(stop_after=...)``).
- A stage whose student starts with layers that are the teacher's own (``shared_prefix``) takes their output from
  the teacher's forward instead of running them (``stage_losses(prefix=...)``).
"""

import contextlib

import pytest
import torch

from tests.helpers.mixer_checks import perturbed
from tests.helpers.tiny_models import CONFIGS, tiny
from workbench.distill import losses as L
from workbench.distill import step as step_module
from workbench.distill.config import RunConfig, StageConfig
from workbench.distill.events import iter_events
from workbench.distill.run import Run
from workbench.distill.run_dir import RunDir
from workbench.distill.step import shared_prefix, stage_losses, trainable_parameters
from workbench.students import build_student, student_mixers
from workbench.teachers import anatomy
from workbench.teachers.wrapper import Teacher

FAMILIES = sorted(CONFIGS)


def setup(name: str, replace: list[int]):
    teacher = Teacher(tiny(name), tokenizer=None)
    torch.manual_seed(1)
    student = build_student(teacher.model, mixer="mamba2", replace=replace, init="random").eval()
    mixers = student_mixers(student)
    for mixer in mixers.values():
        perturbed(mixer)
    return teacher, student, anatomy.decoder_layers(student), mixers


def batch_of(length: int = 11) -> torch.Tensor:
    return torch.randint(3, 100, (2, length + 1), generator=torch.Generator().manual_seed(length))   # (B, L + 1)


def gradients(params: list[torch.nn.Parameter], loss: torch.Tensor) -> list[torch.Tensor | None]:
    for p in params:
        p.grad = None
    loss.backward()
    return [None if p.grad is None else p.grad.clone() for p in params]


def train_only(student, params):
    student.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)


@contextlib.contextmanager
def calls(*modules):
    """The number of forward calls of ``modules`` while active (a list, one count per call)."""
    ran = []
    handles = [m.register_forward_hook(lambda *_: ran.append(1)) for m in modules]
    try:
        yield ran
    finally:
        for h in handles:
            h.remove()


# ---- the teacher stops after the last layer a stage reads ---------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_capture_stopped_after_a_layer_records_what_the_whole_forward_records(name):
    teacher = Teacher(tiny(name), tokenizer=None)
    implementation = teacher.config._attn_implementation
    x = batch_of()[:, :-1]
    options = dict(layers=[0, 1], blocks=True, attention=True, attn_probs=True, logits=False, outputs=[1])
    whole = teacher.capture(x, **options)
    with calls(teacher.layers[2], teacher.model.base_model) as ran:   # the base model's hook: its forward finished
        cut = teacher.capture(x, **options, stop_after=1)
    assert not ran, "layers past stop_after ran, or the base model's forward went on to its end"
    for field in ("block_in", "block_out", "attn_in", "attn_out", "attn_probs", "layer_output"):
        got, want = getattr(cut, field), getattr(whole, field)
        assert got.keys() == want.keys() == {0, 1} - ({0} if field == "layer_output" else set())
        for i in want:
            assert torch.equal(got[i], want[i]), f"{field}[{i}]"
    assert teacher.config._attn_implementation == implementation   # back from eager, and no hook left behind
    with calls(teacher.layers[2]) as ran:
        teacher.capture(x, logits=False)
    assert ran


def test_capture_refuses_to_stop_before_what_it_is_asked_for():
    teacher = Teacher(tiny("llama"), tokenizer=None)
    x = batch_of()[:, :-1]
    with pytest.raises(ValueError, match="logits=False"):
        teacher.capture(x, layers=[0], stop_after=1)
    with pytest.raises(ValueError, match="logits=False"):
        teacher.capture(x, layers=[0], logits=False, final_hidden=True, stop_after=1)
    with pytest.raises(ValueError, match=r"before layers \[2\].*stop_after >= 2"):
        teacher.capture(x, layers=[0, 2], logits=False, stop_after=1)
    with pytest.raises(IndexError, match="out of range"):
        teacher.capture(x, layers=[0], logits=False, stop_after=3)


def matrix_ref(teacher, mixers, layers, x):
    cap = teacher.capture(x, layers=layers, blocks=False, attention=True, attn_probs=True, logits=False)
    return torch.stack([L.matrix_orientation(mixers[i].mixing_matrix(cap.attn_in[i].float()), cap.attn_probs[i])
                        for i in layers]).mean()


def hidden_ref(teacher, blocks, layers, x):
    cap = teacher.capture(x, layers=layers, blocks=True, attention=False, logits=False)
    return torch.stack([L.hidden_alignment(step_module.first_output(blocks[i](cap.block_in[i].float())),
                                           cap.block_out[i]) for i in layers]).mean()


@pytest.mark.parametrize("term", ["matrix", "hidden"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_layerwise_stage_runs_the_teacher_up_to_its_last_layer_only(name, term):
    """Layers 0 and 1 replaced, the stage on layer 0 alone (a Scavenging Hyena group): the teacher's layers 1 and 2
    never run (nor what follows them); the term and its gradients are those of the whole teacher forward."""
    teacher, student, blocks, mixers = setup(name, replace=[0, 1])
    batch = batch_of()
    stage = StageConfig(term, losses={term: 1.0}, layers=[0], tokens=2 * 11, batch_size=2, seq_len=11)
    params = trainable_parameters(student, blocks, mixers, "mixers")
    train_only(student, params)
    with calls(teacher.layers[1], teacher.layers[2], teacher.model.base_model) as ran:
        got = stage_losses(stage, teacher, student, blocks, mixers, batch, contextlib.nullcontext)[term]
    assert not ran, "the teacher ran past the stage's last layer"
    x = batch[:, :-1]
    want = matrix_ref(teacher, mixers, [0], x) if term == "matrix" else hidden_ref(teacher, blocks, [0], x)
    assert got.item() > 0
    assert torch.equal(got.detach(), want.detach())
    grads, grads_ref = gradients(params, got), gradients(params, want)
    assert any(g is not None for g in grads)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g is None) == (g_ref is None)
        if g is not None:
            assert torch.equal(g, g_ref)


# ---- the student's leading layers that are the teacher's own ------------------------------------------------------
def test_shared_prefix_counts_the_leading_layers_that_are_the_teachers_own():
    teacher, student, blocks, mixers = setup("llama", replace=[2])
    mixers_only = trainable_parameters(student, blocks, mixers, "mixers")
    assert shared_prefix(teacher.model, student, blocks, mixers_only) == 2
    assert shared_prefix(teacher.model, student, blocks, trainable_parameters(student, blocks, mixers,
                                                                              "mixers+mlps")) == 0
    assert shared_prefix(teacher.model, student, blocks, list(student.parameters())) == 0
    with torch.no_grad():
        blocks[1].mlp.up_proj.weight[0, 0] += 1.0          # trained before: layer 1 is no longer the teacher's
    assert shared_prefix(teacher.model, student, blocks, mixers_only) == 1
    with torch.no_grad():
        student.model.embed_tokens.weight[5, 0] += 1.0     # what feeds layer 0 differs too
    assert shared_prefix(teacher.model, student, blocks, mixers_only) == 0
    _, other, other_blocks, other_mixers = setup("llama", replace=[2])
    other.double()                                         # same values, another dtype
    assert shared_prefix(teacher.model, other, other_blocks,
                         trainable_parameters(other, other_blocks, other_mixers, "mixers")) == 0


@pytest.mark.parametrize("name", ["llama", "gpt2", "opt"])
def test_shared_prefix_leaves_out_layers_that_draw_dropout_in_training(name):
    """The teacher runs in eval mode; a student in training mode computes like it only where nothing draws dropout:
    Llama has none (attention_dropout 0), GPT-2 drops after its embeddings (embd_pdrop 0.1, an nn.Dropout) and OPT
    in its decoder (dropout 0.1, a float attribute)."""
    teacher, student, blocks, mixers = setup(name, replace=[2])
    mixers_only = trainable_parameters(student, blocks, mixers, "mixers")
    assert shared_prefix(teacher.model, student, blocks, mixers_only) == 2          # eval mode: no dropout
    student.train()
    assert shared_prefix(teacher.model, student, blocks, mixers_only) == (2 if name == "llama" else 0)
    if name == "llama":
        _, attention = anatomy.attention_of(blocks[1])
        attention.attention_dropout = 0.1
        assert shared_prefix(teacher.model, student, blocks, mixers_only) == 1


@pytest.mark.parametrize("path", ["fused", "logits"])
@pytest.mark.parametrize("name", FAMILIES)
def test_a_kd_stage_starts_the_student_from_the_teachers_output_of_its_shared_layers(name, path, monkeypatch):
    """Layer 2 replaced, mixers trained, kl + ce (+ the mixer-output alignment term): the student's layers 0 and 1 do
    not run, and the terms and every trained parameter's gradient equal those of the whole student forward."""
    if path == "logits":
        monkeypatch.setattr(step_module, "fusable", lambda teacher, student: False)
    teacher, student, blocks, mixers = setup(name, replace=[2])
    batch = batch_of()
    stage = StageConfig("kd", losses={"kl": 1.0, "ce": 0.1, "attn_mse": 0.5}, tokens=2 * 11, batch_size=2,
                        seq_len=11)
    params = trainable_parameters(student, blocks, mixers, "mixers")
    train_only(student, params)
    prefix = shared_prefix(teacher.model, student, blocks, params)
    assert prefix == 2
    inside = [child for layer in blocks[:2] for child in layer.children()]   # what a run of those layers calls
    with calls(*inside) as ran:
        got = stage_losses(stage, teacher, student, blocks, mixers, batch, contextlib.nullcontext, prefix=prefix)
    assert not ran, "the student's shared layers ran"
    with calls(*inside) as ran:
        want = stage_losses(stage, teacher, student, blocks, mixers, batch, contextlib.nullcontext)
    assert ran
    assert got.keys() == want.keys() == {"kl", "ce", "attn_mse"}
    for term in want:
        assert torch.equal(got[term].detach(), want[term].detach()), term
    total = {k: sum(stage.losses[t] * v[t] for t in v) for k, v in (("got", got), ("want", want))}
    grads, grads_ref = gradients(params, total["got"]), gradients(params, total["want"])
    assert all(g is not None for g in grads)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert torch.equal(g, g_ref)
    assert all("forward" not in vars(layer) for layer in blocks)   # the layers are their own again


def test_the_prefix_is_not_taken_under_autocast():
    """The teacher runs without autocast: under autocast the student's shared layers would compute otherwise, so
    they run."""
    teacher, student, blocks, mixers = setup("llama", replace=[2])
    stage = StageConfig("kd", losses={"kl": 1.0}, tokens=2 * 11, batch_size=2, seq_len=11)
    with calls(blocks[0].mlp) as ran:
        stage_losses(stage, teacher, student, blocks, mixers, batch_of(), lambda: torch.autocast("cpu"), prefix=2)
    assert ran


def test_a_run_with_the_shared_prefix_trains_as_one_without(tiny_teacher_dir, tmp_path, monkeypatch):
    """A run of a mixers-only KD stage (layers 0 and 1 kept) and then an end-to-end one: the first takes the
    teacher's output of layers 0-1, the second (every parameter trained) does not; the step losses and the trained
    weights are those of a run that never takes it."""
    from safetensors.torch import load_file

    stages = [StageConfig("mixers", losses={"kl": 1.0, "ce": 0.1}, tokens=3 * 2 * 32, batch_size=2, seq_len=32,
                          lr=1e-2),
              StageConfig("all", losses={"kl": 1.0}, train="all", tokens=2 * 2 * 32, batch_size=2, seq_len=32,
                          lr=1e-3)]
    taken = []
    counted = shared_prefix

    def spy(*args):
        taken.append(counted(*args))
        return taken[-1] if not off else 0

    monkeypatch.setattr("workbench.distill.run.shared_prefix", spy)
    results = {}
    for off in (False, True):
        folder = tmp_path / ("without" if off else "with")
        config = RunConfig(teacher=tiny_teacher_dir, mixer="mamba2", keep_attention=[0, 1], stages=stages,
                           device="cpu", eval_every=0, checkpoint_every=100)
        Run(config, folder, progress=False, final_eval_tokens=200).execute()
        losses = [e["loss"] for e in iter_events(RunDir.open(folder).events_path, "step")]
        weights = load_file(sorted((folder / "checkpoints").glob("step-*.safetensors"))[-1])
        results[off] = losses, weights
    assert taken == [2, 0, 2, 0]
    assert len(results[False][0]) == 5 and results[False][0] == results[True][0]
    assert results[False][1].keys() == results[True][1].keys()
    for key, value in results[False][1].items():
        assert torch.equal(value, results[True][1][key]), key


def test_the_matrix_term_keeps_no_layers_matrices_for_the_backward():
    """Each layer's matrix term runs under activation checkpointing: what the forward saves for the backward is each
    layer's inputs only (the teacher's attention input and probabilities, held by the capture anyway), not the
    mixing matrices and their intermediates that the term written out keeps (and the same gradients: the test
    above)."""
    teacher, student, blocks, mixers = setup("llama", replace=[0, 1, 2])
    batch = batch_of(64)
    stage = StageConfig("matrix", losses={"matrix": 1.0}, tokens=2 * 64, batch_size=2, seq_len=64)
    train_only(student, trainable_parameters(student, blocks, mixers, "mixers"))
    H, D = teacher.config.num_attention_heads, teacher.config.hidden_size

    def saved(fn) -> list[tuple[int, ...]]:
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            fn().backward()
        return shapes

    checkpointed = saved(lambda: stage_losses(stage, teacher, student, blocks, mixers, batch,
                                              contextlib.nullcontext)["matrix"])
    assert checkpointed == [(2, 64, D), (2, H, 64, 64)] * 3
    written_out = saved(lambda: matrix_ref(teacher, mixers, [0, 1, 2], batch[:, :-1]))
    assert sum(shape == (2, H, 64, 64) for shape in written_out) > 2 * 3
