"""The layer-wise loss terms of a step (``workbench.distill.step.stage_losses``) on tiny decoders of every family.

"hidden" (MOHAWK stage 2, Scavenging Hyena's progressive stages) runs each chosen block alone on the teacher's input
to it. The reference is the whole student's forward with every chosen block's input swapped for the teacher's
(``teacher_inputs``): the same term and the same gradients, while the other layers and the LM head never run.
"""

import contextlib

import pytest
import torch

from tests.helpers.mixer_checks import assert_rel_close, perturbed
from tests.helpers.tiny_models import CONFIGS, tiny
from workbench.distill import losses as L
from workbench.distill.config import StageConfig
from workbench.distill.step import stage_losses, teacher_inputs
from workbench.students import build_student, student_mixers
from workbench.teachers import anatomy
from workbench.teachers.wrapper import Teacher

REPLACE = [0, 2]  # of the tiny decoders' three layers: layer 2's own input differs from the teacher's


def hidden_ref(teacher, student, blocks, layers, x):
    """The whole student's forward with block i fed the teacher's block input, for each chosen layer i."""
    cap = teacher.capture(x, layers=layers, blocks=True, attention=False, logits=False)
    got = {}
    with teacher_inputs(blocks, {i: cap.block_in[i].float() for i in layers}, got):
        student(input_ids=x, use_cache=False)
    return torch.stack([L.hidden_alignment(got[i], cap.block_out[i]) for i in layers]).mean()


def gradients(student, loss):
    student.zero_grad(set_to_none=True)
    loss.backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in student.named_parameters()}


def setup(name: str):
    teacher = Teacher(tiny(name), tokenizer=None)
    torch.manual_seed(1)
    student = build_student(teacher.model, mixer="mamba2", replace=REPLACE, init="random").eval()
    mixers = student_mixers(student)
    for mixer in mixers.values():
        perturbed(mixer)
    return teacher, student, anatomy.decoder_layers(student), mixers


@pytest.mark.parametrize("length", [1, 11])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hidden_term_runs_only_the_chosen_blocks_and_matches_the_whole_forward(name, length):
    teacher, student, blocks, mixers = setup(name)
    batch = torch.randint(3, 100, (2, length + 1), generator=torch.Generator().manual_seed(length))
    stage = StageConfig("hidden", losses={"hidden": 1.0}, tokens=2 * length, batch_size=2, seq_len=length)

    ran = []
    outside = [anatomy.decoder_layers(student)[1], student.get_output_embeddings()]   # a kept layer, the LM head
    handles = [m.register_forward_hook(lambda *_: ran.append(1)) for m in outside]
    try:
        term = stage_losses(stage, teacher, student, blocks, mixers, batch, contextlib.nullcontext)["hidden"]
    finally:
        for h in handles:
            h.remove()
    assert not ran, "the hidden term ran parts of the student it does not read"

    ref = hidden_ref(teacher, student, blocks, REPLACE, batch[:, :-1])
    assert term.item() > 0
    assert_rel_close(term.detach(), ref.detach(), 1e-6, "hidden term")
    grads, grads_ref = gradients(student, term), gradients(student, ref)
    assert {n for n, g in grads.items() if g is None} == {n for n, g in grads_ref.items() if g is None}
    assert any(g is not None for n, g in grads.items() if "mixer" in n)
    for n, g in grads.items():
        if g is not None:
            assert_rel_close(g, grads_ref[n], 1e-5, f"grad {n}")
