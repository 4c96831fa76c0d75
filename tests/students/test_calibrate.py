"""Output-scale calibration of attention-initialised mixers (workbench.students.calibrate)."""

import pytest
import torch

from tests.helpers.tiny_models import tiny
from workbench.analysis.compare import compare
from workbench.students import build_student, student_mixers
from workbench.students.calibrate import attention_head_rms, mixer_head_rms
from workbench.teachers import anatomy
from workbench.teachers.wrapper import Teacher


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("mixer", ["mamba2", "hyena", "mamba"])
def test_calibrated_heads_match_the_attention_heads_rms(family, mixer):
    teacher = Teacher(tiny(family), tokenizer=None)
    ids = torch.randint(3, 101, (2, 37))
    student = build_student(teacher, mixer, keep_attention=[1], init="attention", calibration_ids=ids)
    uncalibrated = build_student(teacher, mixer, keep_attention=[1], init="attention")
    cap = teacher.capture(ids, attn_probs=True)
    for i, m in student_mixers(student).items():
        attn = anatomy.attention_weights(teacher.model, i)
        target = attention_head_rms(attn, cap.attn_in[i], cap.attn_probs[i])
        before = student_mixers(uncalibrated)[i]
        groups = attn.num_heads if m.out_proj.in_features % attn.num_heads == 0 else 1
        if groups == 1:
            target = target.pow(2).mean(0, keepdim=True).sqrt()
        # the out_proj input is unchanged; its columns carry the scale, so compare through the weights
        scale = (m.out_proj.weight / before.out_proj.weight).nan_to_num(nan=1.0)           # (D, E)
        per_group = scale.mean(0).unflatten(0, (groups, -1)).mean(-1)
        achieved = per_group * mixer_head_rms(m, cap.attn_in[i], groups)
        torch.testing.assert_close(achieved, target, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(per_group, torch.ones_like(per_group))


def test_attention_head_rms_equals_the_output_projection_input(teacher):
    """Step 2 recomputes each head's output from the probabilities and V: check it against the teacher's own
    o_proj input (a Llama attention module)."""
    ids = teacher.encode("The state of our Union is strong, and we will keep it so.")
    layer = 3
    seen = []
    attn_module = anatomy.attention_of(teacher.layers[layer])[1]
    handle = attn_module.o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        cap = teacher.capture(ids, layers=[layer], attn_probs=True)
    finally:
        handle.remove()
    attn = anatomy.attention_weights(teacher.model, layer)
    direct = seen[0].unflatten(-1, (attn.num_heads, attn.head_dim)).pow(2).mean(dim=(0, 1, 3)).sqrt()
    torch.testing.assert_close(attention_head_rms(attn, cap.attn_in[layer], cap.attn_probs[layer]), direct,
                               rtol=1e-4, atol=1e-6)


def test_calibration_makes_attention_init_beat_random_init_on_the_default_teacher(teacher, heldout_ids, one_thread):
    """Four middle layers of SmolLM2-135M as Mamba-2, no training: attention init with calibration is much closer
    to the teacher than without it, and than random init (the students issue's init criterion, at small scale)."""
    calibration = torch.from_numpy(heldout_ids[-257:].astype("int64"))[None]   # not among the evaluated tokens
    keep = [i for i in range(teacher.num_layers) if i not in (10, 11, 12, 13)]
    kl = {}
    for name, init, ids in (("calibrated", "attention", calibration), ("attention", "attention", None),
                            ("random", "random", None)):
        torch.manual_seed(0)
        student = build_student(teacher, "mamba2", keep_attention=keep, init=init, calibration_ids=ids).eval()
        kl[name] = compare(teacher, student, heldout_ids, window=256, max_tokens=512)["kl"]
    assert kl["calibrated"] < 0.75 * kl["random"]
    assert kl["calibrated"] < 0.5 * kl["attention"]
