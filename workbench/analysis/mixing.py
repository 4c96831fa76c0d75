"""The students' materialised mixing matrices on the teacher's attention inputs, in float32, for figures and errors.

    mats = mixing_matrices(student, capture.attn_in)          # {layer: (B, H, L, L)} float32 on the CPU
    mixing_matrix(mixer, x, channels=[0])                     # one mixer; options go to its ``mixing_matrix``

A teacher on a GPU runs in bfloat16, and so does a student built from it; the captured attention inputs have the
model's dtype. The matrices are computed in float32 whatever that dtype is (a bfloat16 mixer is copied to float32 for
the computation; a mixer is a few MB), so that a figure shows the mixer's mixing and not bfloat16 rounding of its
cumulative decays, and the result is on the CPU, ready for numpy and plotly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from workbench.students import student_mixers


def float32_view(module: nn.Module) -> nn.Module:
    """``module`` itself when its floating-point parameters and buffers are float32, else a float32 copy of it."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return module
    return copy.deepcopy(module).float()


@torch.no_grad()
def mixing_matrix(mixer: nn.Module, x: torch.Tensor, **options) -> torch.Tensor:
    """``mixer.mixing_matrix(x, **options)`` computed in float32 for input x (B, L, D) of any dtype and device:
    (B, H, L, L) float32 on the CPU."""
    return float32_view(mixer).mixing_matrix(x.float(), **options).cpu()


def mixing_matrices(student: nn.Module, attn_in: dict[int, torch.Tensor], layers: Sequence[int] | None = None,
                    **options) -> dict[int, torch.Tensor]:
    """{layer: (B, H, L, L)} float32 CPU mixing matrices of the student's mixers in ``layers`` (default: every mixer
    layer) on the inputs ``attn_in`` {layer: (B, L, D)} (``Teacher.capture(...).attn_in``)."""
    mixers = student_mixers(student)
    chosen = sorted(mixers) if layers is None else list(layers)
    missing = [i for i in chosen if i not in mixers or i not in attn_in]
    if missing:
        raise KeyError(f"layers {missing} have no mixer in the student or no captured input: mixer layers "
                       f"{sorted(mixers)}, captured {sorted(attn_in)}; capture those layers (Teacher.capture(ids, "
                       f"layers=...)) or pass layers= from both")
    return {i: mixing_matrix(mixers[i], attn_in[i], **options) for i in chosen}
