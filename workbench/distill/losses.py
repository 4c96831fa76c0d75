"""Distillation losses: small pure functions with an explicit mask and a per-token reduction.

Shapes: B batch, L length, V vocabulary, D width, H heads. ``mask`` is (B, L) with 1 for tokens that count; every
loss returns the mean over counted tokens (never over the batch size), so padding and batch size do not change it.
The logit loss ``kl_divergence`` is the metric of ``workbench.analysis.metrics`` (with its mask helpers); the terms
below compare the student's logits with the data, and its mixers and blocks with the teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.analysis.metrics import full_mask, kl_divergence, masked_mean

__all__ = ["kl_divergence", "cross_entropy", "matrix_orientation", "hidden_alignment", "attention_output_mse"]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy against ``targets`` (B, L) (ground truth or teacher pseudo-labels), mean per token."""
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    return masked_mean(per_token.view(targets.shape), full_mask(logits, mask))


def matrix_orientation(student_matrix: torch.Tensor, teacher_matrix: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """MOHAWK stage 1 (arXiv 2408.10189): Frobenius norm of (student mixing matrix − teacher attention matrix) per
    (batch, head), averaged over heads and batch. Matrices (B, H, L, L); ``mask`` (B, L) drops padded rows/columns."""
    diff = (student_matrix.float() - teacher_matrix.float())
    if mask is not None:
        m = full_mask(diff[:, 0], mask)                                  # (B, L)
        diff = diff * m[:, None, :, None] * m[:, None, None, :]
    return diff.pow(2).sum((-1, -2)).sqrt().mean()


def hidden_alignment(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """MOHAWK stage 2: mean over tokens of the L2 norm (not squared) of (student − teacher) block outputs (B, L, D)."""
    per_token = (student_hidden.float() - teacher_hidden.float()).norm(dim=-1)  # (B, L)
    return masked_mean(per_token, full_mask(student_hidden, mask))


def attention_output_mse(student_out: torch.Tensor, teacher_out: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """LoLCATs-style attention transfer (arXiv 2410.10254): mean squared error of mixer vs attention outputs
    (B, L, D), averaged over features then over counted tokens."""
    per_token = (student_out.float() - teacher_out.float()).pow(2).mean(-1)     # (B, L)
    return masked_mean(per_token, full_mask(student_out, mask))
