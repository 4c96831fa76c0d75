"""Which layers keep attention, measured: how much the student loses when a layer's attention becomes a mixer.

Both measurements use one student with a mixer in every layer they score (built by the usual path: attention init and
output-scale calibration, ``workbench.students.build_student``) and give a layer its teacher's attention back by
swapping the module in place (``hybrid``), so every hybrid reuses the same mixers and only the teacher runs once:

- ``replacement_costs``: each layer alone is a mixer (every other layer keeps attention); its score is
  KL(teacher ‖ that hybrid) per token, in nats. ``most_costly`` keeps the k layers of largest score.
- ``greedy_restore``: from the all-mixer student, give attention back one layer at a time, each round to the layer
  whose restoring lowers the KL most; its scores are the first round's KL reductions (each layer restored alone in
  the all-mixer student), and ``order`` the layers in the order restored (keep the first k).

    student = build_student(teacher.model, "mamba2", calibration_ids=ids[None, :512])  # every layer a mixer
    scores = replacement_costs(teacher, student, ids[512:4608])
    kept = most_costly(scores.scores, 8, scores.layers)

KL is measured on windows of ``window`` tokens: given 1-D ids, their non-overlapping windows (the perplexity
convention, full windows only); given (N, window) ids, those windows, e.g. ``spread_windows``' sample of a whole
training stream (a mix's stream holds its sources one after another, so its first tokens are all one source). The
teacher's logits are computed once and kept (float32, tokens x vocabulary: 4096 tokens of a 49k vocabulary take 0.8
GB).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from workbench.analysis.metrics import kl_divergence
from workbench.analysis.perplexity import logits_fn, windows
from workbench.students.adapter import student_mixers
from workbench.teachers import anatomy

METHODS = ("cost", "greedy")


@dataclass
class LayerScores:
    method: str                        # "cost" (each layer alone a mixer) or "greedy" (restored one at a time)
    layers: list[int]                  # the layers scored (the student's mixer layers), ascending
    scores: list[float]                # one per layer: cost, KL of the hybrid; greedy, KL drop restoring it alone
    tokens: int                        # predicted tokens the KL is averaged over
    window: int                        # tokens per window
    all_mixers_kl: float | None = None  # greedy: KL of the student with every scored layer a mixer
    order: list[int] | None = None     # greedy: the layers in the order their attention was restored
    path_kl: list[float] | None = None  # greedy: KL after each restoring, in that order

    def as_dict(self) -> dict:
        return asdict(self)

    def kept(self, count: int) -> list[int]:
        """The ``count`` layers this measurement keeps as attention, ascending: the most costly ones (cost), or the
        first ``count`` restored (greedy; ValueError when fewer rounds were run)."""
        if self.method == "cost":
            return most_costly(self.scores, count, self.layers)
        if self.order is None or len(self.order) < count:
            raise ValueError(f"the greedy restoring ran {len(self.order or [])} rounds; keeping {count} layers needs "
                             f"{count}: run greedy_restore with rounds={count}")
        return sorted(self.order[:count])


def most_costly(scores: Sequence[float], count: int, layers: Sequence[int] | None = None) -> list[int]:
    """The ``count`` layers of largest score, ascending (``layers[i]`` scored ``scores[i]``; default the indices);
    of equal scores the lower layer first. ValueError unless 0 <= count <= the number of layers."""
    layers = list(range(len(scores))) if layers is None else list(layers)
    if len(layers) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(layers)} layers")
    if not 0 <= count <= len(layers):
        raise ValueError(f"cannot keep {count} of {len(layers)} scored layers")
    ranked = sorted(range(len(layers)), key=lambda j: (-scores[j], layers[j]))
    return sorted(layers[j] for j in ranked[:count])


@contextlib.contextmanager
def hybrid(student: nn.Module, teacher_model: nn.Module, mixers_on: Sequence[int]) -> Iterator[nn.Module]:
    """While active, ``student``'s mixer layers not in ``mixers_on`` run the teacher's attention again (a copy in the
    student's dtype, swapped into the layer in place of its mixer); afterwards every mixer is back."""
    mixers = student_mixers(student)
    unknown = sorted(set(mixers_on) - set(mixers))
    if unknown:
        raise ValueError(f"layers {unknown} are not mixers in the student (its mixer layers: {sorted(mixers)})")
    dtype = next(student.parameters()).dtype
    layers, teacher_layers = anatomy.decoder_layers(student), anatomy.decoder_layers(teacher_model)
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for i in sorted(set(mixers) - set(mixers_on)):
            name, wrapper = anatomy.attention_of(layers[i])
            attention = copy.deepcopy(anatomy.attention_of(teacher_layers[i])[1]).to(dtype)
            setattr(layers[i], name, attention)
            swapped.append((layers[i], name, wrapper))
        yield student
    finally:
        for layer, name, wrapper in swapped:
            setattr(layer, name, wrapper)


def spread_windows(ids, tokens: int, window: int, start: int = 0) -> np.ndarray:
    """(N, window) windows of ``ids[start:]`` (1-D token ids), N = tokens // window, their starts spread evenly from
    the stream's first position to its last full window, so they sample the whole stream instead of its beginning.
    Fewer windows when the stream holds fewer than N without overlap; ValueError when it holds none."""
    stream = np.asarray(ids)[start:]
    count = min(tokens // window, len(stream) // window)
    if count < 1:
        raise ValueError(f"scoring layers needs at least one window of {window} tokens; got {tokens} scoring tokens "
                         f"and a stream of {len(stream)} (give more scoring tokens or a shorter window)")
    starts = np.linspace(0, len(stream) - window, count).round().astype(np.int64)   # at least `window` apart
    return np.stack([stream[s:s + window] for s in starts])


class _KL:
    """KL(teacher ‖ model) per token over fixed windows of ``ids`` (module docstring), the teacher's logits computed
    once."""

    def __init__(self, teacher, ids, window: int, batch_size: int, autocast: Callable):
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        if ids.ndim == 2:
            if ids.shape[1] != window or not len(ids):
                raise ValueError(f"windows of shape {tuple(ids.shape)}: expected (N >= 1, window={window})")
            rows = list(ids)
        else:
            rows = [ids[s:e - 1] for s, e in windows(len(ids), window) if e - s == window + 1]
        if not rows:
            raise ValueError(f"scoring layers needs at least one window of {window} + 1 tokens; got {len(ids)} "
                             f"tokens (give more scoring tokens or a shorter window)")
        device = teacher.device
        self.autocast, self.window = autocast, window
        self.batches = [torch.stack(rows[i:i + batch_size]).to(device)
                        for i in range(0, len(rows), batch_size)]                                   # (B, W) each
        with torch.no_grad(), autocast():
            self.teacher_logits = [logits_fn(teacher)(x).float() for x in self.batches]              # (B, W, V)
        self.tokens = sum(x.numel() for x in self.batches)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        total = 0.0
        forward = logits_fn(model)
        for x, t in zip(self.batches, self.teacher_logits):
            with self.autocast():
                s = forward(x).float()
            total += kl_divergence(s, t).item() * x.numel()
        return total / self.tokens


def _prepare(student: nn.Module, layers: Sequence[int] | None) -> list[int]:
    mixers = sorted(student_mixers(student))
    chosen = mixers if layers is None else sorted(layers)
    missing = sorted(set(chosen) - set(mixers))
    if missing or not chosen:
        raise ValueError(f"layers {missing or chosen} cannot be scored: the student's mixer layers are {mixers} "
                         f"(build it with a mixer in every layer to score)")
    return chosen


def replacement_costs(teacher, student: nn.Module, ids, layers: Sequence[int] | None = None, window: int = 512,
                      batch_size: int = 4, autocast: Callable = contextlib.nullcontext) -> LayerScores:
    """Each layer's replacement cost: KL(teacher ‖ the student with only that layer a mixer, every other scored
    layer back to attention), per token, on ``ids`` (token ids, 1-D, or (N, window) windows). ``teacher``: a
    workbench Teacher;
    ``student``: built from it with a mixer in each of ``layers`` (default: every mixer layer it has);
    ``autocast``: the context the models run in (a run's bf16 autocast on a GPU). The student is left as given."""
    chosen = _prepare(student, layers)
    kl = _KL(teacher, ids, window, batch_size, autocast)
    was_training = student.training
    student.eval()
    try:
        scores = []
        for i in chosen:
            with hybrid(student, teacher.model, [i]):
                scores.append(kl(student))
    finally:
        student.train(was_training)
    return LayerScores("cost", chosen, scores, kl.tokens, window)


def greedy_restore(teacher, student: nn.Module, ids, rounds: int, layers: Sequence[int] | None = None,
                   window: int = 512, batch_size: int = 4, autocast: Callable = contextlib.nullcontext) -> LayerScores:
    """Give attention back to ``rounds`` layers one at a time, starting from the student with every scored layer a
    mixer: each round restores the layer whose restoring leaves the lowest KL(teacher ‖ student) (of equal KLs the
    lower layer). Arguments as ``replacement_costs``. The student is left as given."""
    chosen = _prepare(student, layers)
    if not 0 < rounds < len(chosen):
        raise ValueError(f"rounds={rounds}: restore between 1 and {len(chosen) - 1} of the {len(chosen)} scored "
                         f"layers")
    kl = _KL(teacher, ids, window, batch_size, autocast)
    was_training = student.training
    student.eval()
    try:
        with hybrid(student, teacher.model, chosen):
            start = kl(student)
        restored: list[int] = []
        path: list[float] = []
        first: list[float] = []
        for _ in range(rounds):
            candidates = [i for i in chosen if i not in restored]
            results = []
            for i in candidates:
                with hybrid(student, teacher.model, [j for j in chosen if j not in restored and j != i]):
                    results.append(kl(student))
            if not restored:
                first = [start - r for r in results]
            best = min(range(len(candidates)), key=lambda j: (results[j], candidates[j]))
            restored.append(candidates[best])
            path.append(results[best])
    finally:
        student.train(was_training)
    return LayerScores("greedy", chosen, first, kl.tokens, window, all_mixers_kl=start, order=restored,
                       path_kl=path)
