"""Fused LM head + logit losses: a student's KL to its teacher (and its cross-entropy to the data) computed from the two
models' final hidden states, without ever materialising a (tokens × vocabulary) logits tensor or its gradient.

The idea is Liger-Kernel's fused linear losses (Hsu et al., "Liger Kernel", arXiv 2410.10989), written here in plain
PyTorch. The forward loops over chunks of C tokens; for each chunk it

  1. computes the student's logits s = h_s W_sᵀ (+ b_s) (C, V) in the compute dtype, and the teacher's
     t = h_t W_tᵀ (+ b_t) likewise (no gradient);
  2. applies the model's own logit transform z = cap · tanh(scale · s / cap) (Gemma-2's final soft-capping; a plain
     scale for Cohere / Granite; the identity for most families), in float32;
  3. takes the float32 log-softmax of z_s / T and z_t / T: the per-token KL(teacher ‖ student) times T², and the
     per-token cross-entropy of z_s against the targets;
  4. forms the gradient of each mean loss w.r.t. s analytically, with w = m / n (m the token mask, n the counted
     tokens):
        KL: T · (softmax(z_s / T) − softmax(z_t / T)) · w   (T² times the 1/T of z / T),
        CE: (softmax(z_s) − onehot(y)) · w,
     times dz/ds = scale · (1 − (z / cap)²) under soft-capping;
  5. accumulates grad h_s[chunk] = g W_s, grad W_s += gᵀ h_s[chunk] and grad b_s += Σ g (float32 accumulators).

The backward only scales the stored gradients by the incoming grad_output of each term. Memory beyond the inputs:
a few (C, V) buffers, plus the stored float32 gradients, (N, D) and (V, D) per term (cast to the inputs' dtypes once
scaled). Steps 2-4 are one pure function,
``chunk_losses``, compiled by ``torch.compile`` on CUDA (eager on the CPU).

Numerics follow the unfused path (``workbench.analysis.metrics.kl_divergence``, ``workbench.distill.losses
.cross_entropy`` on the logits of the model's ``lm_head``): the student's logits are computed in autocast's dtype
when autocast is on (as ``nn.Linear`` would), else in the common dtype of hidden state and weight; the teacher's in
its own dtype (the teacher runs outside autocast); everything after the matmul in float32.

Two backends with the same signature, chosen by ``workbench.ops.backend`` (op "logit_losses"):
  "chunked"  the fused forward/backward above;
  "ref"      materialises both (N, V) logits and computes the same losses on them: the reference for tests.

Shapes: N tokens, D width, V vocabulary, C tokens per chunk.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from workbench.ops import backend

Head = tuple[torch.Tensor, torch.Tensor | None]  # an LM head: weight (V, D), bias (V,) or None
TERMS = ("kl", "ce")                             # the loss terms, in the order the functions return them
IGNORE_INDEX = -100                              # such a target counts as a token, adds no loss (F.cross_entropy)
DEFAULT_CHUNK_TOKENS = 4096                      # C: a chunk's logits take C·V floats (805 MB at V = 49,152 in fp32);
                                                 #   H200, 32k tokens, bf16: 21.4 ms fwd+bwd, 2.3 GB, against 27.6 ms,
                                                 #   0.65 GB at 1024 and 20.2 ms, 4.6 GB at 8192 (docs/results.md)


# ---- checks ----------------------------------------------------------------------------------------------------
def _check(student_hidden: torch.Tensor, student_head: Head, teacher_hidden: torch.Tensor | None,
           teacher_head: Head | None, targets: torch.Tensor | None, mask: torch.Tensor | None, temperature: float,
           terms: Sequence[str], chunk_tokens: int, softcap: float | None) -> tuple[str, ...]:
    """ValueError naming the fix for inputs the losses cannot take; returns ``terms`` in the order of TERMS."""
    unknown = set(terms) - set(TERMS)
    if unknown or not terms:
        raise ValueError(f"terms must be a non-empty subset of {TERMS}, got {tuple(terms)}")
    if student_hidden.dim() != 2:
        raise ValueError(f"student hidden must be (N, D), got {tuple(student_hidden.shape)}: flatten the batch "
                         f"dimensions first (hidden.flatten(0, -2))")
    N, D = student_hidden.shape
    weight, bias = student_head
    if weight.dim() != 2 or weight.shape[1] != D:
        raise ValueError(f"student head weight {tuple(weight.shape)} does not fit student hidden "
                         f"{tuple(student_hidden.shape)}: expected (V, {D})")
    V = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"student head bias {tuple(bias.shape)} does not fit its weight {tuple(weight.shape)}: "
                         f"expected ({V},)")
    if "kl" in terms:
        if teacher_hidden is None or teacher_head is None:
            raise ValueError("the kl term needs the teacher's hidden states and head; pass them or drop 'kl'")
        if teacher_hidden.dim() != 2 or teacher_hidden.shape[0] != N:
            raise ValueError(f"teacher hidden {tuple(teacher_hidden.shape)} does not match student hidden "
                             f"{tuple(student_hidden.shape)}: both must be (N, D) over the same N tokens")
        t_weight, t_bias = teacher_head
        if t_weight.dim() != 2 or t_weight.shape[1] != teacher_hidden.shape[1]:
            raise ValueError(f"teacher head weight {tuple(t_weight.shape)} does not fit teacher hidden "
                             f"{tuple(teacher_hidden.shape)}: expected (V, {teacher_hidden.shape[1]})")
        if t_weight.shape[0] != V:
            raise ValueError(f"vocabulary mismatch: student head weight {tuple(weight.shape)} has V={V}, teacher head "
                             f"weight {tuple(t_weight.shape)} has V={t_weight.shape[0]}; KL needs one vocabulary")
        if t_bias is not None and tuple(t_bias.shape) != (V,):
            raise ValueError(f"teacher head bias {tuple(t_bias.shape)} does not fit its weight "
                             f"{tuple(t_weight.shape)}: expected ({V},)")
    if "ce" in terms:
        if targets is None:
            raise ValueError("the ce term needs targets (N,); pass them or drop 'ce'")
        if tuple(targets.shape) != (N,):
            raise ValueError(f"targets {tuple(targets.shape)} do not match student hidden "
                             f"{tuple(student_hidden.shape)}: expected ({N},)")
    if mask is not None and tuple(mask.shape) != (N,):
        raise ValueError(f"mask {tuple(mask.shape)} does not match student hidden {tuple(student_hidden.shape)}: "
                         f"expected ({N},)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return tuple(t for t in TERMS if t in terms)


def _weights(mask: torch.Tensor | None, N: int, device: torch.device) -> torch.Tensor:
    """(N,) float32 per-token weights m / n: each counted token's share of a mean over counted tokens (0 if none)."""
    m = torch.ones(N, device=device, dtype=torch.float32) if mask is None else mask.to(device, torch.float32)
    return m / m.sum().clamp_min(1.0)


def _student_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would compute the student's logits in: autocast's when it is on for this device (and
    the inputs are ones it casts), else the common dtype of hidden state and weight."""
    device = hidden.device.type
    common = torch.promote_types(hidden.dtype, weight.dtype)
    if torch.is_autocast_enabled(device) and common != torch.float64:
        return torch.get_autocast_dtype(device)
    return common


def transform_logits(z: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """The model's logits from its LM head's output, as Hugging Face computes them: scale, then tanh soft-capping."""
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return z


# ---- the fused path -------------------------------------------------------------------------------------------
def chunk_losses(s: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor | None, w: torch.Tensor,
                 temperature: float, logit_scale: float, softcap: float | None, terms: tuple[str, ...],
                 grad_dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Steps 2-4 on one chunk. s, t: (C, V) student / teacher head outputs; y: (C,) targets or None; w: (C,) float32
    per-token weights m / n. For each term of ``terms``: (its contribution to the mean loss (), the gradient of that
    contribution w.r.t. s (C, V) in ``grad_dtype``, the same gradient summed over tokens (V,) in float32)."""
    z_s = transform_logits(s.float(), logit_scale, softcap)                        # (C, V)
    # dz/ds: the chain rule through scale and soft-capping, (C, V) or a number
    dz = logit_scale * (1 - (z_s / softcap).square()) if softcap is not None else logit_scale
    out = []
    for term in terms:
        if term == "kl":
            T = temperature
            log_p_s = F.log_softmax(z_s / T, dim=-1)
            log_p_t = F.log_softmax(transform_logits(t.float(), logit_scale, softcap) / T, dim=-1)
            p_t = log_p_t.exp()
            per_token = (p_t * (log_p_t - log_p_s)).sum(-1)                          # (C,)
            loss = (per_token * w).sum() * T**2
            g = (log_p_s.exp() - p_t) * (w * T)[:, None]                              # (C, V)
        else:
            valid = (y != IGNORE_INDEX).float()                                       # (C,)
            y_safe = torch.where(y != IGNORE_INDEX, y, 0)[:, None]                    # (C, 1)
            log_p = F.log_softmax(z_s, dim=-1)
            per_token = -log_p.gather(-1, y_safe)[:, 0] * valid                       # (C,)
            loss = (per_token * w).sum()
            g = log_p.exp().scatter_add(-1, y_safe, -torch.ones_like(y_safe, dtype=log_p.dtype))
            g = g * (w * valid)[:, None]
        if softcap is not None or logit_scale != 1.0:
            g = g * dz
        out.append((loss, g.to(grad_dtype), g.sum(0)))
    return out


@functools.cache
def _compiled_chunk_losses():
    """``chunk_losses`` compiled for CUDA (static shapes: a run has two chunk lengths, full and last)."""
    return torch.compile(chunk_losses, dynamic=False)


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h (C, D) @ weight (V, D)ᵀ (+ bias), all already in one dtype: (C, V)."""
    return torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()


class _FusedLogitLosses(torch.autograd.Function):
    """Forward: steps 1-5 over all chunks; returns one scalar per term and keeps each term's gradients. Backward:
    those gradients times the incoming grad_output of each term."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, targets, weights, temperature, logit_scale, softcap, terms,
                chunk_tokens):
        N = h_s.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = _student_dtype(h_s, w_s)
        chunk_fn = _compiled_chunk_losses() if h_s.is_cuda else chunk_losses
        with torch.autocast(h_s.device.type, enabled=False):
            ws, bs = w_s.to(dtype), (b_s.to(dtype) if b_s is not None else None)
            if "kl" in terms:
                t_dtype = torch.promote_types(h_t.dtype, w_t.dtype)
                wt, bt = w_t.to(t_dtype), (b_t.to(t_dtype) if b_t is not None else None)
            losses = [h_s.new_zeros((), dtype=torch.float32) for _ in terms]
            g_h = [torch.empty(h_s.shape, device=h_s.device, dtype=torch.float32) if need_h else None
                   for _ in terms]                                                         # (N, D) each
            g_w = [torch.zeros(w_s.shape, device=w_s.device, dtype=torch.float32) if need_w else None
                   for _ in terms]                                                         # (V, D) each
            g_b = [torch.zeros(b_s.shape, device=b_s.device, dtype=torch.float32) if need_b else None
                   for _ in terms]                                                         # (V,) each
            for i in range(0, N, chunk_tokens):
                rows = slice(i, min(i + chunk_tokens, N))
                hs = h_s[rows].to(dtype)                                                   # (C, D)
                s = _linear(hs, ws, bs)                                                    # (C, V)
                t = _linear(h_t[rows].to(t_dtype), wt, bt) if "kl" in terms else None      # (C, V)
                y = targets[rows] if targets is not None else None
                for k, (loss, g, g_sum) in enumerate(chunk_fn(s, t, y, weights[rows], temperature, logit_scale,
                                                              softcap, terms, dtype)):
                    losses[k] += loss
                    if need_h:
                        g_h[k][rows] = g @ ws
                    if need_w:
                        g_w[k] += (g.t() @ hs).float()
                    if need_b:
                        g_b[k] += g_sum
        ctx.n_terms = len(terms)
        ctx.dtypes = (h_s.dtype, w_s.dtype, b_s.dtype if b_s is not None else None)
        ctx.save_for_backward(*g_h, *g_w, *g_b)
        return tuple(losses)

    @staticmethod
    def backward(ctx, *grad_losses):
        k = ctx.n_terms
        saved = ctx.saved_tensors
        grads = []
        for stored, dtype in zip((saved[:k], saved[k:2 * k], saved[2 * k:]), ctx.dtypes):
            if stored[0] is None:
                grads.append(None)
                continue
            total = sum(g * go for g, go in zip(stored, grad_losses))     # float32, one rounding to dtype below
            grads.append(total.to(dtype))
        return (*grads, *[None] * 10)


def fused_logit_losses(student_hidden: torch.Tensor, student_head: Head, teacher_hidden: torch.Tensor | None,
                       teacher_head: Head | None, targets: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None, temperature: float = 1.0, terms: Sequence[str] = ("kl",),
                       chunk_tokens: int = DEFAULT_CHUNK_TOKENS, logit_scale: float = 1.0,
                       softcap: float | None = None) -> dict[str, torch.Tensor]:
    """Logit losses of a student against a teacher, chunked over tokens; neither (N, V) logits tensor is built.

    student_hidden (N, D_s), student_head (weight (V, D_s), bias (V,) or None); teacher_hidden (N, D_t) and
    teacher_head likewise (None when ``terms`` has no "kl"); targets (N,) next-token ids (for "ce"); mask (N,) with
    1 for tokens that count (None: all). Both models' logits are softcap(logit_scale · head(h)) (softcap None: no
    capping). Returns {"kl": mean over counted tokens of KL(teacher ‖ student) at ``temperature``, times T²;
    "ce": mean cross-entropy against ``targets``}, for the terms asked, differentiable w.r.t. the student's hidden
    states, head weight and bias (a weight tied to the input embedding gets both gradients, summed by autograd)."""
    terms = _check(student_hidden, student_head, teacher_hidden, teacher_head, targets, mask, temperature, terms,
                   chunk_tokens, softcap)
    weights = _weights(mask, student_hidden.shape[0], student_hidden.device)
    t_hidden, (t_weight, t_bias) = (teacher_hidden, teacher_head) if "kl" in terms else (None, (None, None))
    losses = _FusedLogitLosses.apply(student_hidden, *student_head, t_hidden, t_weight, t_bias, targets, weights,
                                     float(temperature), float(logit_scale), softcap, terms, int(chunk_tokens))
    return dict(zip(terms, losses))


# ---- the KL of two logits tensors ---------------------------------------------------------------------------------
def logits_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
              temperature: float = 1.0, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """KL(teacher ‖ student) of materialised logits (N, V), exact over the vocabulary, mean over the tokens ``mask``
    (N,) counts, times T² (Hinton et al.: gradients keep their size across temperatures). Float32 log-softmaxes over
    chunks of ``chunk_tokens`` tokens, so memory beyond the logits stays at a few (chunk, V) buffers. The one copy of
    this loop: ``workbench.analysis.metrics.kl_divergence`` and the reference below call it."""
    total = student_logits.new_zeros((), dtype=torch.float32)
    for i in range(0, student_logits.shape[0], chunk_tokens):
        log_p_s = F.log_softmax(student_logits[i:i + chunk_tokens].float() / temperature, dim=-1)   # (chunk, V)
        log_p_t = F.log_softmax(teacher_logits[i:i + chunk_tokens].float() / temperature, dim=-1)   # (chunk, V)
        per_token = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)                                   # (chunk,)
        total = total + (per_token * mask[i:i + chunk_tokens]).sum()
    return total / mask.sum().clamp_min(1.0) * temperature**2


# ---- the reference --------------------------------------------------------------------------------------------
def fused_logit_losses_ref(student_hidden: torch.Tensor, student_head: Head, teacher_hidden: torch.Tensor | None,
                           teacher_head: Head | None, targets: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, temperature: float = 1.0, terms: Sequence[str] = ("kl",),
                           chunk_tokens: int = DEFAULT_CHUNK_TOKENS, logit_scale: float = 1.0,
                           softcap: float | None = None) -> dict[str, torch.Tensor]:
    """``fused_logit_losses`` the unfused way: both (N, V) logits materialised (the student's through ``F.linear``
    under the ambient autocast, the teacher's without gradient and outside autocast, each transformed as Hugging Face
    does), then the losses of ``workbench.analysis.metrics.kl_divergence`` (``logits_kl`` above) and
    ``workbench.distill.losses.cross_entropy`` (float32 log-softmax, mean over counted tokens, KL times T²).
    ``chunk_tokens``: the KL's chunks."""
    terms = _check(student_hidden, student_head, teacher_hidden, teacher_head, targets, mask, temperature, terms,
                   chunk_tokens, softcap)
    m = torch.ones(student_hidden.shape[0], device=student_hidden.device) if mask is None else mask.float()   # (N,)
    s = transform_logits(F.linear(student_hidden, *student_head), logit_scale, softcap)                        # (N, V)
    out = {}
    if "kl" in terms:
        with torch.no_grad(), torch.autocast(teacher_hidden.device.type, enabled=False):
            t_weight, t_bias = teacher_head
            dtype = torch.promote_types(teacher_hidden.dtype, t_weight.dtype)
            t = transform_logits(F.linear(teacher_hidden.to(dtype), t_weight.to(dtype),
                                    t_bias.to(dtype) if t_bias is not None else None), logit_scale, softcap)
        out["kl"] = logits_kl(s, t, m, temperature, chunk_tokens)
    if "ce" in terms:
        per_token = F.cross_entropy(s.float(), targets, reduction="none", ignore_index=IGNORE_INDEX)       # (N,)
        out["ce"] = (per_token * m).sum() / m.sum().clamp_min(1.0)
    return out


def logit_losses(student_hidden: torch.Tensor, student_head: Head, teacher_hidden: torch.Tensor | None,
                 teacher_head: Head | None, targets: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 temperature: float = 1.0, terms: Sequence[str] = ("kl",), chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 logit_scale: float = 1.0, softcap: float | None = None) -> dict[str, torch.Tensor]:
    """``fused_logit_losses`` on the backend chosen for the student's device (see ``workbench.ops.backend``; force the
    materialising one with ``force_backend("logit_losses", "ref")`` or ``WORKBENCH_BACKEND_LOGIT_LOSSES=ref``)."""
    fn = backend.select("logit_losses", student_hidden.device).fn
    return fn(student_hidden, student_head, teacher_hidden, teacher_head, targets, mask, temperature, terms,
              chunk_tokens, logit_scale, softcap)


def plain(*tensors: torch.Tensor | None) -> bool:
    """True when none of ``tensors`` is a DTensor (a parameter FSDP2 holds sharded): the fused path needs each head
    weight whole, as it is inside the forward of the FSDP module that owns it."""
    if not torch.distributed.is_available():
        return True
    from torch.distributed.tensor import DTensor

    return not any(isinstance(t, DTensor) for t in tensors)


backend.register("logit_losses", backend.Backend(
    "chunked", fused_logit_losses, lambda device: True,
    f"LM head + KL/CE over chunks of {DEFAULT_CHUNK_TOKENS} tokens, no (N, V) logits; compiled on CUDA"))
backend.register("logit_losses", backend.Backend(
    "ref", fused_logit_losses_ref, lambda device: True, "both (N, V) logits materialised, for tests"))
