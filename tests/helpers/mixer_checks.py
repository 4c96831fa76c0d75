"""Checks shared by the mixer tests."""

import torch

from workbench.students.base import Mixer


@torch.no_grad()
def step_outputs(mixer, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Run ``mixer.step`` token by token over x (B, L, D) from a fresh state: the outputs stacked as (B, L, D), and
    the final state. The base class's ``extend`` (L calls of ``step``), never a mixer's faster override."""
    return Mixer.extend(mixer, x, mixer.init_state(x.shape[0]))


@torch.no_grad()
def perturbed(mixer, dtype: torch.dtype | None = None):
    """The mixer (in ``dtype`` when given) with every parameter moved off its initial value, so no zero-initialised
    part (z rows, a gate bias) hides a bug."""
    if dtype is not None:
        mixer = mixer.to(dtype)
    for p in mixer.parameters():
        p.add_(0.1 * torch.randn_like(p))
    return mixer


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str = "") -> None:
    """max |actual - expected| <= rtol * max |expected| (a relative error that ignores tiny entries)."""
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item() or 1.0
    assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol} x {scale:.3g}"
