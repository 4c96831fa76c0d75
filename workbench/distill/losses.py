"""Distillation losses: small pure functions with an explicit mask and a per-token reduction.

Shapes: B batch, L length, V vocabulary, D width, H heads. ``mask`` is (B, L) with 1 for tokens that count; every
loss returns the mean over counted tokens (never over the batch size), so padding and batch size do not change it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) float mask; all ones if None."""
    if mask is None:
        return torch.ones(x.shape[:2], device=x.device, dtype=torch.float32)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:2])} (B, L)")
    return mask.to(device=x.device, dtype=torch.float32)


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                  temperature: float = 1.0, chunk_tokens: int = 4096) -> torch.Tensor:
    """Forward KL(teacher ‖ student) of next-token distributions, exact over the full vocabulary, mean per token.

    Computed over chunks of ``chunk_tokens`` tokens in float32 so that memory stays bounded for large vocabularies;
    scaled by T² (Hinton et al.) so gradients keep their size across temperatures. Logits: (B, L, V)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits "
                         f"{tuple(teacher_logits.shape)}")
    m = _full_mask(student_logits, mask).flatten()                        # (B·L,)
    s, t = student_logits.flatten(0, 1), teacher_logits.flatten(0, 1)     # (B·L, V)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for i in range(0, s.shape[0], chunk_tokens):
        log_p_s = F.log_softmax(s[i:i + chunk_tokens].float() / temperature, dim=-1)
        log_p_t = F.log_softmax(t[i:i + chunk_tokens].float() / temperature, dim=-1)
        per_token = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)        # (chunk,)
        total = total + (per_token * m[i:i + chunk_tokens]).sum()
    return total / m.sum().clamp_min(1.0) * temperature**2


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy against ``targets`` (B, L) (ground truth or teacher pseudo-labels), mean per token."""
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return _masked_mean(per_token.view(targets.shape), _full_mask(logits, mask))


def matrix_orientation(student_matrix: torch.Tensor, teacher_matrix: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """MOHAWK stage 1 (arXiv 2408.10189): Frobenius norm of (student mixing matrix − teacher attention matrix) per
    (batch, head), averaged over heads and batch. Matrices (B, H, L, L); ``mask`` (B, L) drops padded rows/columns."""
    diff = (student_matrix.float() - teacher_matrix.float())
    if mask is not None:
        m = _full_mask(diff[:, 0], mask)                                  # (B, L)
        diff = diff * m[:, None, :, None] * m[:, None, None, :]
    return diff.pow(2).sum((-1, -2)).sqrt().mean()


def hidden_alignment(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """MOHAWK stage 2: mean over tokens of the L2 norm (not squared) of (student − teacher) block outputs (B, L, D)."""
    per_token = (student_hidden.float() - teacher_hidden.float()).norm(dim=-1)  # (B, L)
    return _masked_mean(per_token, _full_mask(student_hidden, mask))


def attention_output_mse(student_out: torch.Tensor, teacher_out: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """LoLCATs-style attention transfer (arXiv 2410.10254): mean squared error of mixer vs attention outputs
    (B, L, D), averaged over features then over counted tokens."""
    per_token = (student_out.float() - teacher_out.float()).pow(2).mean(-1)     # (B, L)
    return _masked_mean(per_token, _full_mask(student_out, mask))


def top1_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Share of counted tokens where student and teacher rank the same next token first (a metric, no gradient)."""
    same = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()    # (B, L)
    return _masked_mean(same, _full_mask(student_logits, mask))
