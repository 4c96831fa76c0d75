import pytest
import torch
import torch.nn.functional as F

from workbench.analysis import metrics
from workbench.distill import losses


def test_kl_is_exact_chunked_and_per_token():
    s, t = torch.randn(3, 7, 50), torch.randn(3, 7, 50)
    mask = torch.ones(3, 7)
    mask[1, 4:] = 0
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    expected = (ref * mask).sum() / mask.sum()
    for chunk in (1, 5, 4096):  # chunking changes nothing
        torch.testing.assert_close(losses.kl_divergence(s, t, mask, chunk_tokens=chunk), expected)
    assert losses.kl_divergence(t, t).abs() < 1e-6
    # per token, not per batch: duplicating the batch leaves the loss unchanged
    torch.testing.assert_close(losses.kl_divergence(s.repeat(2, 1, 1), t.repeat(2, 1, 1)), losses.kl_divergence(s, t))
    # masked positions do not matter at all
    s2 = s.clone()
    s2[1, 4:] = 100.0
    torch.testing.assert_close(losses.kl_divergence(s2, t, mask), expected)


def test_kl_temperature_scaling():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    T = 2.0
    ref = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(losses.kl_divergence(s, t, temperature=T), ref.mean() * T**2)


def test_cross_entropy_masked_mean():
    logits, targets = torch.randn(2, 6, 13), torch.randint(0, 13, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    per = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(2, 6)
    torch.testing.assert_close(losses.cross_entropy(logits, targets, mask), (per * mask).sum() / 8)
    with pytest.raises(ValueError, match="mask has shape"):
        losses.cross_entropy(logits, targets, torch.ones(2, 5))


def test_matrix_orientation_is_frobenius_per_head():
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    expected = torch.stack([torch.linalg.matrix_norm(a[i, h] - b[i, h]) for i in range(2) for h in range(3)]).mean()
    torch.testing.assert_close(losses.matrix_orientation(a, b), expected)
    mask = torch.ones(2, 5)
    mask[:, 3:] = 0
    sub = torch.stack([torch.linalg.matrix_norm(a[i, h, :3, :3] - b[i, h, :3, :3]) for i in range(2) for h in range(3)])
    torch.testing.assert_close(losses.matrix_orientation(a, b, mask), sub.mean())


def test_hidden_alignment_is_unsquared_l2_per_token_and_mse():
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    torch.testing.assert_close(losses.hidden_alignment(s, t), (s - t).norm(dim=-1).mean())
    torch.testing.assert_close(losses.attention_output_mse(s, t), F.mse_loss(s, t))


def test_agreement_is_a_masked_share_of_tokens():
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    assert metrics.top1_agreement(s, s) == 1.0
    same = (s.argmax(-1) == t.argmax(-1)).float()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(metrics.top1_agreement(s, t, mask), (same * mask).sum() / 6)


def test_the_kl_loss_is_the_kl_metric():
    """The distillation loss and the evaluations' KL are one function (workbench.analysis.metrics)."""
    assert losses.kl_divergence is metrics.kl_divergence
