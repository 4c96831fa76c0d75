"""Student vs teacher on the same windows: perplexity of each, KL(teacher ‖ student) and top-1 agreement per token.

The teacher's side of a comparison depends only on the windows: ``TeacherCache`` keeps it between comparisons against
the same frozen teacher (the evaluations of one run, the orders of a Laughing Hyena table), so later ones run the
teacher's LM head on its kept final hidden states instead of its whole decoder."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from workbench.analysis.metrics import kl_divergence, top1_agreement
from workbench.analysis.perplexity import logits_fn, windows
from workbench.ops import fused_kl
from workbench.teachers.wrapper import Teacher, logit_transform, output_head


class TeacherCache:
    """The teacher's final hidden state (B, W, D) for each batch of windows ``compare`` has seen, keyed by the
    batch's token ids. For one teacher, frozen, under one precision context (the same autocast): what it keeps is
    what that teacher computes there. A teacher whose logits are not its LM head's output on its final hidden state
    (``logit_transform`` None) or whose parameters are sharded keeps nothing: ``usable`` is False and ``compare``
    runs it in full."""

    def __init__(self):
        self.hidden: dict[bytes, torch.Tensor] = {}
        self.hits = 0   # batches served from the cache (tests and curious users read it)

    @staticmethod
    def usable(teacher) -> bool:
        return (isinstance(teacher, Teacher) and logit_transform(teacher.model) is not None
                and fused_kl.plain(*teacher.model.parameters()))

    @staticmethod
    def key(batch: torch.Tensor) -> bytes:
        """The key of a batch of token ids (B, W + 1) on the host (``compare`` hashes its batches before moving them
        to the device, so a lookup costs no copy back)."""
        return hashlib.sha256(batch.numpy().tobytes() + str(tuple(batch.shape)).encode()).digest()

    def final_hidden(self, teacher: Teacher, batch: torch.Tensor, key: bytes) -> torch.Tensor:
        """(B, W, D) the teacher's final hidden state on ``batch`` (B, W + 1, on the device; ``key``: its ``key``)
        without its last position: kept, or computed (the decoder alone, no LM head) and kept."""
        if key in self.hidden:
            self.hits += 1
        else:
            self.hidden[key] = teacher.capture(batch[:, :-1], layers=[], logits=False, final_hidden=True).final_hidden
        return self.hidden[key]


@torch.no_grad()
def compare(teacher, student, ids, window: int = 512, batch_size: int = 4, max_tokens: int | None = None,
            teacher_cache: TeacherCache | None = None) -> dict:
    """Metrics over non-overlapping windows of ``ids`` (the perplexity convention), up to ``max_tokens`` tokens.
    ``teacher_cache``: keep the teacher's side for later comparisons on the same windows, and reuse what it kept.

    Returns {"ppl_student", "ppl_teacher", "kl", "agreement", "tokens"}; KL and agreement are per-token means."""
    ids = torch.as_tensor(np.asarray(ids[: max_tokens] if max_tokens else ids, dtype=np.int64))
    device = next(student.parameters()).device
    t_logits, s_logits = logits_fn(teacher), logits_fn(student)
    cache = teacher_cache if teacher_cache is not None and TeacherCache.usable(teacher) else None
    spans = [(s, e) for s, e in windows(len(ids), window) if e - s == window + 1] or windows(len(ids), window)[:1]
    parts, sizes = [], []   # per batch: (4,) summed NLLs and mean KL, agreement; its tokens. Read at the end
    for i in range(0, len(spans), batch_size):
        host = torch.stack([ids[s:e] for s, e in spans[i:i + batch_size]])              # (B, W + 1)
        batch = host.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        if cache is None:
            lt = t_logits(x).float()                                                      # (B, W, V)
        else:   # the LM head on the kept final hidden state, as the causal LM computes its logits
            logits = F.linear(cache.final_hidden(teacher, batch, TeacherCache.key(host)), *output_head(teacher.model))
            lt = fused_kl.transform_logits(logits, *logit_transform(teacher.model)).float()
        ls = s_logits(x).float()
        parts.append(torch.stack([F.cross_entropy(ls.flatten(0, 1), y.flatten(), reduction="sum"),
                                  F.cross_entropy(lt.flatten(0, 1), y.flatten(), reduction="sum"),
                                  kl_divergence(ls, lt), top1_agreement(ls, lt)]))
        sizes.append(y.numel())
    count = sum(sizes)
    per_batch = torch.stack(parts).cpu().double()                                          # (batches, 4)
    weights = torch.tensor([[1.0, 1.0, n, n] for n in sizes], dtype=torch.float64)         # means -> sums
    nll_s, nll_t, kl, agree = ((per_batch * weights).sum(0) / count).tolist()
    return {"ppl_student": math.exp(nll_s), "ppl_teacher": math.exp(nll_t), "kl": kl, "agreement": agree,
            "tokens": count}
