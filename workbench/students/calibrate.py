"""Output-scale calibration: the data-dependent last step of ``init="attention"``.

A mixer initialised from attention (Mamba in the Llama: V -> x, K -> B, Q -> C, O -> out projection) follows the
attention's *direction* only roughly (unnormalised linear scores q·k instead of softmax) and its *scale* not at all:
softmax rows sum to one, so each attention head outputs an average of its values, while a Mamba-2 head outputs an
RMS-normalised sum (RMS 1) and a Hyena or Mamba-1 channel an unnormalised one. On SmolLM2-135M, layer 12, the
attention-initialised Mamba-2 heads' outputs are 3-6x the attention heads' RMS; with layers 10-13 replaced, held-out
perplexity is 231 before this step and 34 after it (teacher 21; random init 47).

This step runs the teacher once on a few hundred tokens and rescales, per head, the columns of each replaced
layer's mixer ``out_proj`` so that every head's output RMS matches that of the attention head it replaces:

  1. ``teacher.capture(ids, attn_probs=True)``: each replaced layer's attention input x (B, L, D) and its attention
     probabilities A (B, H, L, L)
  2. the teacher's head outputs o_h = A_h (x W_v,h^T + b_v,h), (B, H, L, P), before the output projection; their RMS r_h
  3. the mixer's ``out_proj`` input g (B, L, H·P) for the same x (a forward pre-hook); its RMS per head s_h
  4. ``out_proj.weight[:, columns of head h] *= r_h / s_h``  (one group if out_proj's width is not H·P)

The student's function changes only through these scales; the attention-derived directions stay as they were.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.students.adapter import student_mixers
from workbench.students.base import Mixer
from workbench.teachers import anatomy
from workbench.teachers.anatomy import AttentionWeights
from workbench.teachers.wrapper import Teacher


def attention_head_rms(attn: AttentionWeights, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """RMS over (batch, position, channel) of each attention head's output before the output projection.
    x (B, L, D) the attention input, probs (B, H, L, L) -> (H,)."""
    H, P = attn.num_heads, attn.head_dim
    v = x @ attn.repeat_kv(attn.v).to(x.dtype).T                                   # (B, L, H·P)
    if attn.v_bias is not None:
        v = v + attn.repeat_kv(attn.v_bias).to(x.dtype)
    heads = probs.to(x.dtype) @ v.unflatten(-1, (H, P)).transpose(1, 2)           # (B, H, L, P)
    return heads.float().pow(2).mean(dim=(0, 2, 3)).sqrt()


def mixer_head_rms(mixer: Mixer, x: torch.Tensor, groups: int) -> torch.Tensor:
    """RMS of the mixer's ``out_proj`` input for x (B, L, D), in ``groups`` equal channel groups -> (groups,)."""
    seen: list[torch.Tensor] = []
    handle = mixer.out_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        mixer(x)
    finally:
        handle.remove()
    g = seen[0].float().unflatten(-1, (groups, -1))                                # (B, L, groups, E/groups)
    return g.pow(2).mean(dim=(0, 1, 3)).sqrt()


@torch.no_grad()
def calibrate_output_scale(student: nn.Module, teacher: Teacher | nn.Module, input_ids: torch.Tensor,
                           mixers: dict[int, Mixer] | None = None) -> dict[int, torch.Tensor]:
    """Rescale each mixer's out_proj columns per head (steps 1-4 above) on the teacher's activations for
    ``input_ids`` (B, L). ``mixers``: layer -> mixer (default: every replaced layer of ``student``). Returns the
    applied scales, layer -> (groups,)."""
    if not isinstance(teacher, Teacher):
        teacher = Teacher(teacher, tokenizer=None)
    mixers = student_mixers(student) if mixers is None else mixers
    if not mixers:
        return {}
    missing = [i for i, m in mixers.items() if not isinstance(getattr(m, "out_proj", None), nn.Linear)]
    if missing:
        raise ValueError(f"cannot calibrate layers {missing}: their mixers have no nn.Linear out_proj")
    input_ids = input_ids.to(teacher.device)
    cap = teacher.capture(input_ids, layers=sorted(mixers), blocks=False, attention=True, attn_probs=True,
                          logits=False)
    scales = {}
    for i, mixer in mixers.items():
        attn = anatomy.attention_weights(teacher.model, i)
        x = cap.attn_in[i]
        width = mixer.out_proj.in_features
        groups = attn.num_heads if width % attn.num_heads == 0 else 1
        target = attention_head_rms(attn, x, cap.attn_probs[i])                    # (H,)
        if groups == 1:
            target = target.pow(2).mean(0, keepdim=True).sqrt()
        weight = mixer.out_proj.weight
        current = mixer_head_rms(mixer, x.to(weight.dtype), groups)                 # (groups,)
        scale = (target.to(current.device) / current.clamp_min(1e-12))
        weight.mul_(scale.repeat_interleave(width // groups).to(weight.dtype)[None, :])
        scales[i] = scale.cpu()
    return scales
