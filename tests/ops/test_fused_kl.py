"""The fused LM head + logit losses (workbench.ops.fused_kl) against their materialising reference, the project's exact
losses, every model family's own logits, and the distillation step's logits path."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers.tiny_models import CONFIGS, tiny
from workbench.analysis.metrics import kl_divergence
from workbench.distill import losses, step
from workbench.distill.config import StageConfig
from workbench.ops import backend
from workbench.ops.fused_kl import (
    IGNORE_INDEX,
    chunk_losses,
    fused_logit_losses,
    fused_logit_losses_ref,
    logit_losses,
)
from workbench.students import build_student
from workbench.students.adapter import student_mixers
from workbench.teachers import Teacher, anatomy
from workbench.teachers.wrapper import fusable, logit_transform, output_head

N, D, V, CHUNK = 37, 24, 53, 16     # odd token count: chunks of 16, 16 and 5
WEIGHTS = {"kl": 0.7, "ce": 1.3}    # the step's loss is a weighted sum: both grad_outputs differ from 1


def _inputs(dtype=torch.float32, bias=True, seed=0, device="cpu"):
    """Student hidden (N, D), head (V, D) + (V,), teacher likewise, targets (N,) and a mask with zeros."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype)

    mask = (torch.rand(N, generator=g) > 0.3).float().to(device)
    return dict(h_s=rand(N, D), w_s=rand(V, D, scale=D**-0.5), b_s=rand(V) if bias else None, h_t=rand(N, D),
                w_t=rand(V, D, scale=D**-0.5), b_t=rand(V) if bias else None,
                targets=torch.randint(0, V, (N,), generator=g).to(device), mask=mask)


def _losses_and_grads(fn, x, dtype, terms, **kw):
    """fn's losses and the gradients of sum_k WEIGHTS[k] * loss_k w.r.t. student hidden, weight (and bias), on copies of
    the inputs ``x`` cast to ``dtype``."""
    c = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in x.items() if k != "mask"}
    params = [c["h_s"].requires_grad_(), c["w_s"].requires_grad_()]
    if c["b_s"] is not None:
        params.append(c["b_s"].requires_grad_())
    out = fn(c["h_s"], (c["w_s"], c["b_s"]), c["h_t"], (c["w_t"], c["b_t"]), c["targets"], x["mask"], terms=terms,
             chunk_tokens=CHUNK, **kw)
    loss = sum(WEIGHTS[k] * v for k, v in out.items())
    return out, torch.autograd.grad(loss, params)


def _close_fp32(a, b):
    """fp32 roundoff: the two paths sum the same float32 terms in other orders (over V in the softmax, over chunks
    for the weight); 1e-5 relative is ~100 ulps, with the floor relative to the tensor's largest entry."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("terms", [("kl",), ("kl", "ce"), ("ce",)], ids=["kl", "kl+ce", "ce"])
@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
def test_fused_matches_ref_in_fp32(temperature, terms, bias):
    x = _inputs(bias=bias)
    out, grads = _losses_and_grads(fused_logit_losses, x, torch.float32, terms, temperature=temperature)
    out_ref, grads_ref = _losses_and_grads(fused_logit_losses_ref, x, torch.float32, terms, temperature=temperature)
    assert list(out) == list(terms) and all(v.dtype == torch.float32 and v.dim() == 0 for v in out.values())
    for k in terms:
        torch.testing.assert_close(out[k], out_ref[k], rtol=1e-5, atol=0)
    assert len(grads) == (3 if bias else 2)
    for a, b in zip(grads, grads_ref):
        assert a.dtype == b.dtype == torch.float32
        _close_fp32(a, b)


@pytest.mark.parametrize("softcap,scale", [(3.0, 1.0), (None, 0.7), (2.5, 1.6)], ids=["softcap", "scale", "both"])
def test_softcap_and_logit_scale_are_exact(softcap, scale):
    x = _inputs()
    kw = dict(temperature=2.0, softcap=softcap, logit_scale=scale)
    out, grads = _losses_and_grads(fused_logit_losses, x, torch.float32, ("kl", "ce"), **kw)
    out_ref, grads_ref = _losses_and_grads(fused_logit_losses_ref, x, torch.float32, ("kl", "ce"), **kw)
    plain, _ = _losses_and_grads(fused_logit_losses, x, torch.float32, ("kl", "ce"), temperature=2.0)
    for k in out:
        torch.testing.assert_close(out[k], out_ref[k], rtol=1e-5, atol=0)
        assert not torch.isclose(out[k], plain[k])    # the transform changes the losses
    for a, b in zip(grads, grads_ref):
        _close_fp32(a, b)


def test_ref_is_the_projects_exact_losses():
    """The reference computes what kl_divergence and cross_entropy give on the materialised logits, masked."""
    x = _inputs()
    s = F.linear(x["h_s"], x["w_s"], x["b_s"])[None]                                  # (1, N, V)
    t = F.linear(x["h_t"], x["w_t"], x["b_t"])[None]
    targets = x["targets"].clone()
    targets[3] = IGNORE_INDEX   # counted, adds no loss, as in F.cross_entropy
    out = fused_logit_losses_ref(x["h_s"], (x["w_s"], x["b_s"]), x["h_t"], (x["w_t"], x["b_t"]), targets, x["mask"],
                                 temperature=2.0, terms=("kl", "ce"), chunk_tokens=CHUNK)
    torch.testing.assert_close(out["kl"], kl_divergence(s, t, x["mask"][None], temperature=2.0), rtol=1e-6, atol=0)
    torch.testing.assert_close(out["ce"], losses.cross_entropy(s, targets[None], x["mask"][None]), rtol=1e-6, atol=0)
    fused = fused_logit_losses(x["h_s"], (x["w_s"], x["b_s"]), x["h_t"], (x["w_t"], x["b_t"]), targets, x["mask"],
                               temperature=2.0, terms=("kl", "ce"), chunk_tokens=CHUNK)
    for k in out:
        torch.testing.assert_close(fused[k], out[k], rtol=1e-5, atol=0)


def test_masked_tokens_do_not_matter_and_chunking_changes_nothing():
    x = _inputs()
    h = x["h_s"].clone().requires_grad_()
    args = ((x["w_s"], x["b_s"]), x["h_t"], (x["w_t"], x["b_t"]), x["targets"], x["mask"])
    base = fused_logit_losses(h, *args, terms=("kl", "ce"), chunk_tokens=CHUNK)
    grad = torch.autograd.grad(base["kl"] + base["ce"], h)[0]
    assert torch.all(grad[x["mask"] == 0] == 0) and grad[x["mask"] == 1].abs().sum() > 0
    moved = h.detach().clone()
    moved[x["mask"] == 0] += 100.0
    for chunk in (1, 7, N, 1000):
        other = fused_logit_losses(moved, *args, terms=("kl", "ce"), chunk_tokens=chunk)
        for k in base:
            torch.testing.assert_close(other[k], base[k], rtol=1e-5, atol=0)
    nothing = fused_logit_losses(h, *args[:-1], torch.zeros(N), terms=("kl", "ce"))
    assert all(v == 0 for v in nothing.values())                 # no counted token: 0, as masked_mean


def test_tied_head_gets_both_gradients():
    """A head tied to the input embedding: the weight feeds the hidden states and the logits, autograd sums both."""
    x = _inputs(bias=False)
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(1))
    mix = torch.randn(D, D, generator=torch.Generator().manual_seed(2)) * D**-0.5
    grads = []
    for fn in (fused_logit_losses, fused_logit_losses_ref):
        w = x["w_s"].clone().requires_grad_()
        h = torch.tanh(w[ids] @ mix)                                                    # (N, D) from the embedding
        out = fn(h, (w, None), x["h_t"], (x["w_t"], None), x["targets"], x["mask"], temperature=2.0,
                 terms=("kl", "ce"), chunk_tokens=CHUNK)
        grads.append(torch.autograd.grad(0.7 * out["kl"] + 1.3 * out["ce"], w)[0])
    _close_fp32(*grads)
    w = x["w_s"].clone().requires_grad_()
    h = torch.tanh(x["w_s"][ids] @ mix)                                                 # not through w this time
    out = fused_logit_losses(h, (w, None), x["h_t"], (x["w_t"], None), x["targets"], x["mask"], temperature=2.0,
                             terms=("kl", "ce"), chunk_tokens=CHUNK)
    head_only = torch.autograd.grad(0.7 * out["kl"] + 1.3 * out["ce"], w)[0]
    assert not torch.allclose(head_only, grads[0])                # the embedding's share is in the tied gradient


def test_a_frozen_head_gets_no_gradient_and_the_rest_is_unchanged():
    x = _inputs()
    h = x["h_s"].clone().requires_grad_()
    args = (x["h_t"], (x["w_t"], x["b_t"]), x["targets"], x["mask"])
    out = fused_logit_losses(h, (x["w_s"], x["b_s"]), *args, terms=("kl",))
    (g,) = torch.autograd.grad(out["kl"], h)
    w = x["w_s"].clone().requires_grad_()
    g_all = torch.autograd.grad(fused_logit_losses(h, (w, x["b_s"]), *args, terms=("kl",))["kl"], [h, w])
    torch.testing.assert_close(g, g_all[0], rtol=0, atol=0)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_no_tensor_of_all_logits_is_ever_built():
    x = _inputs()
    h, w = x["h_s"].clone().requires_grad_(), x["w_s"].clone().requires_grad_()
    sizes = {}
    for fn in (fused_logit_losses, fused_logit_losses_ref):
        with _LargestTensor() as seen:
            out = fn(h, (w, x["b_s"]), x["h_t"], (x["w_t"], x["b_t"]), x["targets"], x["mask"], terms=("kl", "ce"),
                     chunk_tokens=CHUNK)
            torch.autograd.grad(out["kl"] + out["ce"], [h, w])
        sizes[fn.__name__] = seen.numel
    assert CHUNK * V <= sizes["fused_logit_losses"] < N * V        # a chunk's logits, never all of them
    assert sizes["fused_logit_losses_ref"] >= N * V                 # the reference builds them (the test can fail)


# bf16: 8 significant bits, unit roundoff u = 2^-8 relative (2^-9 for round-to-nearest). Against the reference in
# float64 on the same bf16 inputs (float64 logits, float32 log-softmax: errors ~2^-24, nothing next to u), the losses
# see only the rounding of the logits (computed in bf16 as nn.Linear does), so they agree to u relative. A gradient
# goes through about three roundings (the logit gradient to bf16, the matmul's bf16 output, the final cast) and its
# matmul sums over V (or N) terms that cancel (the softmax differences sum to zero), so its error is bounded by a few
# u times the largest entry, not by u times each entry. We allow 4 u of the largest entry, and require it of the
# unfused path too: the fused one is held to the same accuracy as today's path (measured on these inputs: up to
# 2.7 u for either).
BF16_U = 2.0**-8


def _check_bf16_against_float64(x, terms, device_kind, **kw):
    truth, grads_truth = _losses_and_grads(fused_logit_losses_ref, x, torch.float64, terms, **kw)
    for fn in (fused_logit_losses, fused_logit_losses_ref):
        out, grads = _losses_and_grads(fn, x, torch.bfloat16, terms, **kw)
        for k in terms:
            err = (out[k].double() - truth[k]).abs() / truth[k].abs()
            assert err <= BF16_U, f"{fn.__name__} {k} on {device_kind}: relative error {err:.2e} > 2^-8"
        for name, a, b in zip(("hidden", "weight", "bias"), grads, grads_truth):
            assert a.dtype == torch.bfloat16
            err = (a.double() - b).abs().max() / b.abs().max()
            assert err <= 4 * BF16_U, f"{fn.__name__} grad {name} on {device_kind}: {err / BF16_U:.2f} u > 4 u"


@pytest.mark.parametrize("softcap", [None, 3.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("terms", [("kl",), ("kl", "ce")], ids=["kl", "kl+ce"])
@pytest.mark.parametrize("temperature", [1.0, 2.0], ids=["T1", "T2"])
def test_bf16_is_as_accurate_as_the_unfused_path(temperature, terms, softcap):
    for seed in range(3):
        _check_bf16_against_float64(_inputs(torch.bfloat16, seed=seed), terms, "cpu", temperature=temperature,
                                    softcap=softcap)


def test_autocast_computes_the_student_logits_like_nn_linear():
    """fp32 master weights under bf16 autocast (a run on the GPU): the student's logits in bf16 as the ref's F.linear,
    the teacher's in its own dtype; gradients come back in the parameters' float32."""
    x = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = _losses_and_grads(fused_logit_losses, x, torch.float32, ("kl", "ce"), temperature=2.0)
        out_ref, grads_ref = _losses_and_grads(fused_logit_losses_ref, x, torch.float32, ("kl", "ce"),
                                               temperature=2.0)
    exact, _ = _losses_and_grads(fused_logit_losses, x, torch.float32, ("kl", "ce"), temperature=2.0)
    for k in out:
        torch.testing.assert_close(out[k], out_ref[k], rtol=BF16_U, atol=0)
        assert out[k] != exact[k]                                  # autocast did change the computation
    for a, b in zip(grads, grads_ref):
        assert a.dtype == torch.float32
        assert (a - b).abs().max() <= 4 * BF16_U * b.abs().max()


def test_chunk_losses_gradient_is_autograds():
    """The analytic logit gradients of one chunk (step 4) are autograd's gradients of the chunk's losses."""
    s = torch.randn(9, V, requires_grad=True)
    t, y, w = torch.randn(9, V), torch.randint(0, V, (9,)), torch.rand(9)
    y[2] = IGNORE_INDEX
    for softcap, scale in ((None, 1.0), (2.0, 0.8)):
        terms = chunk_losses(s, t, y, w, 1.5, scale, softcap, ("kl", "ce"), torch.float32)
        for loss, g, g_sum in terms:
            (auto,) = torch.autograd.grad(loss, s, retain_graph=True)
            torch.testing.assert_close(g, auto)
            torch.testing.assert_close(g_sum, auto.sum(0))


def test_chunk_math_compiles_to_one_graph():
    """What ``torch.compile`` gets on CUDA: one graph, no breaks (checked with the eager backend, no compiler)."""
    s, t, y, w = torch.randn(9, V), torch.randn(9, V), torch.randint(0, V, (9,)), torch.rand(9)
    compiled = torch.compile(chunk_losses, dynamic=False, fullgraph=True, backend="aot_eager")
    for softcap in (None, 3.0):
        args = (s, t, y, w, 2.0, 0.7, softcap, ("kl", "ce"), torch.bfloat16)
        for got, want in zip(compiled(*args), chunk_losses(*args)):
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b)


def test_bad_inputs_name_both_shapes():
    x = _inputs()
    head, t_head = (x["w_s"], x["b_s"]), (x["w_t"], x["b_t"])
    with pytest.raises(ValueError, match=r"teacher hidden \(36, 24\) does not match student hidden \(37, 24\)"):
        fused_logit_losses(x["h_s"], head, x["h_t"][:-1], t_head)
    with pytest.raises(ValueError, match=r"vocabulary mismatch: student head weight \(53, 24\) has V=53, teacher"):
        fused_logit_losses(x["h_s"], head, x["h_t"], (x["w_t"][:50], None))
    with pytest.raises(ValueError, match=r"student head weight \(53, 23\) does not fit student hidden \(37, 24\)"):
        fused_logit_losses(x["h_s"], (x["w_s"][:, :-1], None), x["h_t"], t_head)
    with pytest.raises(ValueError, match=r"must be \(N, D\), got \(1, 37, 24\)"):
        fused_logit_losses(x["h_s"][None], head, x["h_t"], t_head)
    with pytest.raises(ValueError, match="the ce term needs targets"):
        fused_logit_losses(x["h_s"], head, x["h_t"], t_head, terms=("kl", "ce"))
    with pytest.raises(ValueError, match=r"mask \(36,\) does not match"):
        fused_logit_losses(x["h_s"], head, x["h_t"], t_head, mask=x["mask"][:-1])
    with pytest.raises(ValueError, match="terms must be a non-empty subset"):
        fused_logit_losses(x["h_s"], head, x["h_t"], t_head, terms=("kll",))
    with pytest.raises(ValueError, match="the kl term needs the teacher"):
        fused_logit_losses_ref(x["h_s"], head, None, None)


def test_backend_choice_and_override():
    assert backend.select("logit_losses", "cpu").name == "chunked"
    x = _inputs()
    args = (x["h_s"], (x["w_s"], x["b_s"]), x["h_t"], (x["w_t"], x["b_t"]), x["targets"], x["mask"])
    with _LargestTensor() as seen:
        logit_losses(*args, chunk_tokens=CHUNK)
    assert seen.numel < N * V
    with backend.force_backend("logit_losses", "ref"), _LargestTensor() as seen:
        logit_losses(*args, chunk_tokens=CHUNK)
    assert seen.numel >= N * V


# ---- models: heads, logit transforms, the teacher's final hidden state, the distillation step ------------------------
@pytest.mark.parametrize("family", [*CONFIGS, "granite-scaled"])
def test_every_family_has_logits_softcap_scale_head_of_its_last_hidden_state(family):
    """LOGIT_TRANSFORMS against each family's own forward: logits = softcap(scale · lm_head(base_model(x)))."""
    if family == "granite-scaled":
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(CONFIGS["granite"]().__class__(**{
            **CONFIGS["granite"]().to_dict(), "logits_scaling": 4.0})).eval()
    else:
        model = tiny(family)
    x = torch.randint(3, 101, (2, 9))
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits
        hidden = model.base_model(input_ids=x, use_cache=False).last_hidden_state
    transform = logit_transform(model)
    assert transform is not None, f"{family} has no row in LOGIT_TRANSFORMS"
    scale, softcap = transform
    z = F.linear(hidden, *output_head(model)) * scale
    z = torch.tanh(z / softcap) * softcap if softcap is not None else z
    torch.testing.assert_close(z, logits, rtol=1e-5, atol=1e-5)
    if family in ("gemma2", "cohere", "granite-scaled"):
        assert transform != (1.0, None)
    weight, bias = output_head(model)
    assert (weight is model.get_input_embeddings().weight) == anatomy.tied_embeddings(model)
    assert (bias is not None) == (family in ("phi", "gptj"))


def test_an_unknown_family_takes_the_logits_path(monkeypatch):
    from workbench.teachers import wrapper

    teacher = Teacher(tiny("llama"), tokenizer=None)
    student = tiny("llama", seed=1)
    assert fusable(teacher, student)
    monkeypatch.delitem(wrapper.LOGIT_TRANSFORMS, "llama")
    assert logit_transform(student) is None and not fusable(teacher, student)
    assert not fusable(Teacher(tiny("gemma2"), tokenizer=None), tiny("gemma"))  # different transforms


def test_teacher_final_hidden_keeps_the_hooks_and_skips_the_head():
    teacher = Teacher(tiny("qwen2"), tokenizer=None)
    x = torch.randint(3, 101, (2, 11))
    calls = []
    hook = teacher.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    full = teacher.capture(x, layers=[0, 2], attn_probs=True)
    assert calls == [1]
    cap = teacher.capture(x, layers=[0, 2], attn_probs=True, logits=False, final_hidden=True)
    hook.remove()
    assert calls == [1] and cap.logits is None                        # the LM head did not run
    for field in ("block_in", "block_out", "attn_in", "attn_out", "attn_probs"):
        got, want = getattr(cap, field), getattr(full, field)
        assert sorted(got) == [0, 2]
        for i in got:
            torch.testing.assert_close(got[i], want[i], rtol=0, atol=0)
    assert cap.final_hidden.shape == (2, 11, teacher.config.hidden_size)
    torch.testing.assert_close(F.linear(cap.final_hidden, *output_head(teacher.model)), full.logits)
    with pytest.raises(ValueError, match="not both"):
        teacher.capture(x, final_hidden=True)


def _step_losses(family: str, fused: bool, monkeypatch) -> tuple[dict, list[torch.Tensor], list[str], list[int]]:
    """stage_losses of a kl + ce stage (T = 2, all parameters trained) on a tiny teacher of ``family`` and its
    Mamba-2 student, fused or through the logits; the losses, the student's gradients and LM head calls."""
    teacher = Teacher(tiny(family), tokenizer=None)
    student = build_student(teacher, "mamba2", keep_attention=[0]).train()
    heads = [teacher.model.get_output_embeddings(), student.get_output_embeddings()]
    calls = [0, 0]
    for i, head in enumerate(heads):
        head.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    monkeypatch.setattr(step, "fusable", lambda t, s: fused and fusable(t, s))
    stage = StageConfig(losses={"kl": 1.0, "ce": 0.1}, temperature=2.0, train="all")
    batch = torch.randint(3, 101, (2, 14), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)  # the same dropout masks for both paths (GPT-2's dropout is on in train mode)
    out = step.stage_losses(stage, teacher, student, anatomy.decoder_layers(student), student_mixers(student), batch,
                            contextlib.nullcontext)
    names, params = zip(*[(n, p) for n, p in student.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(sum(stage.losses[k] * v for k, v in out.items()), params)
    return out, list(grads), list(names), calls


@pytest.mark.parametrize("family", ["llama", "phi", "gemma2", "gpt2"])  # tied, bias, softcap, Conv1D + dropout
def test_stage_losses_fused_equal_the_logits_path(family, monkeypatch, one_thread):
    out, grads, names, calls = _step_losses(family, True, monkeypatch)
    assert calls == [0, 0]                                                 # no LM head ran over the batch
    out_ref, grads_ref, _, calls_ref = _step_losses(family, False, monkeypatch)
    assert calls_ref == [1, 1]
    assert set(out) == {"kl", "ce"} and out["kl"] > 0
    for k in out:
        torch.testing.assert_close(out[k], out_ref[k], rtol=1e-5, atol=0)
    # fp32 roundoff carried through the student's backward: gradients that are sums of cancelling terms (a mixer's
    # skip D sums x · dy over every token) lose relative accuracy, so the floor is relative to the largest gradient
    scale = max(g.abs().max().item() for g in grads_ref)
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * scale, msg=lambda m, name=name: f"{name}: {m}")


def test_a_sharded_head_takes_the_logits_path(tmp_path):
    """FSDP2 holds a sharded parameter as a DTensor: the fused path needs the whole weight, so it steps aside."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        teacher = Teacher(tiny("gpt2"), tokenizer=None)
        student = tiny("gpt2", seed=1)
        assert fusable(teacher, student)
        mesh = init_device_mesh("cpu", (1,))
        head = student.get_output_embeddings()
        head.weight = torch.nn.Parameter(distribute_tensor(head.weight.detach(), mesh, [Shard(0)]))
        assert not fusable(teacher, student)
        emb = teacher.model.get_input_embeddings()
        emb.weight = torch.nn.Parameter(distribute_tensor(emb.weight.detach(), mesh, [Shard(0)]),
                                        requires_grad=False)
        assert not fusable(teacher, tiny("gpt2", seed=1))
        with pytest.raises(ValueError, match="unsharded teacher"):
            teacher.capture(torch.randint(3, 101, (1, 5)), logits=False, final_hidden=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("terms", [("kl",), ("kl", "ce")], ids=["kl", "kl+ce"])
@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain", "softcap"])
def test_fused_on_the_gpu_in_bf16(terms, softcap):
    """The compiled chunk math on CUDA: bf16 inputs within the bf16 bound of the CPU test, and fp32 master weights
    under bf16 autocast as close to the ref as on the CPU."""
    for seed in range(3):
        _check_bf16_against_float64(_inputs(torch.bfloat16, seed=seed, device="cuda"), terms, "cuda",
                                    temperature=2.0, softcap=softcap)
    x = _inputs(seed=7, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = _losses_and_grads(fused_logit_losses, x, torch.float32, terms, temperature=2.0, softcap=softcap)
        out_ref, grads_ref = _losses_and_grads(fused_logit_losses_ref, x, torch.float32, terms, temperature=2.0,
                                               softcap=softcap)
    for k in terms:
        torch.testing.assert_close(out[k], out_ref[k], rtol=BF16_U, atol=0)
    for a, b in zip(grads, grads_ref):
        assert a.dtype == torch.float32 and (a - b).abs().max() <= 4 * BF16_U * b.abs().max()
