"""Per-token comparisons of two next-token distributions: small pure functions with an explicit mask.

Shapes: B batch, L length, V vocabulary. ``mask`` is (B, L) with 1 for tokens that count; every function returns the
mean over counted tokens (never over the batch size), so padding and batch size do not change it. The distillation
losses (``workbench.distill.losses``) build on these; evaluations (``workbench.analysis.compare``) report them.
"""

from __future__ import annotations

import torch

from workbench.ops.fused_kl import DEFAULT_CHUNK_TOKENS, logits_kl


def full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) float mask for ``x`` (B, L, ...); all ones if None."""
    if mask is None:
        return torch.ones(x.shape[:2], device=x.device, dtype=torch.float32)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])} (B, L)")
    return mask.to(device=x.device, dtype=torch.float32)


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_token`` (B, L) over the tokens ``mask`` (B, L) counts (0 when it counts none)."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                  temperature: float = 1.0, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Forward KL(teacher ‖ student) of next-token distributions, exact over the full vocabulary, mean per token.

    Computed over chunks of ``chunk_tokens`` tokens in float32 so that memory stays bounded for large vocabularies;
    scaled by T² (Hinton et al.) so gradients keep their size across temperatures. Logits: (B, L, V)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits "
                         f"{tuple(teacher_logits.shape)}")
    m = full_mask(student_logits, mask).flatten()                                          # (B·L,)
    return logits_kl(student_logits.flatten(0, 1), teacher_logits.flatten(0, 1), m, temperature, chunk_tokens)


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of counted tokens where student and teacher rank the same next token first (a metric, no gradient)."""
    same = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()    # (B, L)
    return masked_mean(same, full_mask(student_logits, mask))
