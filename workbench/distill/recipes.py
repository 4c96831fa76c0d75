"""Recipes: Python presets that turn a few dials (token budget, sequence length, batch, learning rate) into a list of
stages that follow each paper's procedure. See docs/methods.md for the procedures.

- ``mohawk`` (arXiv 2408.10189): 1) matrix orientation, 2) hidden-state alignment, 3) end-to-end KD with every
  parameter; budget split as the paper's 80M / 160M / 2.76B (2.7% / 5.3% / 92%).
- ``mamba-in-llama`` (arXiv 2408.15237): attention-weight init (done by the student builder), a stage where only the
  mixers learn (CE on the data + 0.1 KL in the paper's stepwise phase; here KL 1 + CE 0.1), then end-to-end KL with
  every parameter.
- ``scavenging-hyena`` (arXiv 2401.17574): progressive layer-wise transfer from the first layer onward (hidden-state
  alignment of one group of layers at a time), then logit KD.
- ``kd``: plain end-to-end logit KD of the mixers.
- ``draft``: logit KD of every parameter, one stage: a draft model for speculative decoding, a shallow student
  (``RunConfig.depth``) trained to agree with its teacher's next-token distributions (the aim of DistillSpec, Zhou
  et al. 2023). It is the recipe of a shallow student that keeps attention in each of its layers, which has no
  mixer for the other recipes' first stages to train.

``mohawk``, ``mamba-in-llama`` and ``scavenging-hyena`` take ``e2e_lr_ratio`` (0.1 in their signatures): the peak
learning rate of their last stage, where every parameter trains, as a share of ``lr`` (the peak of the stages where
only the mixers learn). ``default_lr`` and ``default_dials`` hold the measured defaults a run gets when it names
none (``mamba-in-llama`` and ``mohawk``: ``e2e_lr_ratio`` 1, and for ``mamba-in-llama`` lr 3e-4 with no attention
kept; ``scavenging-hyena``: 0.3).

``mamba-in-llama`` and ``kd`` take ``align`` (default 0: off): the weight of a mixer-output alignment term
("attn_mse": each mixer's output on the teacher's attention input against the attention output it replaces, mean
squared error per token, LoLCATs' attention transfer) added to their stage where only the mixers learn (the first
stage of ``mamba-in-llama``, the one stage of ``kd``). Each step then also captures the teacher's attention inputs
and outputs and runs every mixer once more on them; the term is logged per step as "loss_attn_mse".

Recipes do not know the teacher: which layers are replaced is the run config's (``keep_attention`` / ``replace``),
and a stage that works on part of them names it as a group (``StageConfig.layer_group``) that the run resolves once
it has built its student. ``recipe`` refuses a dial its recipe does not have.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from workbench.distill.config import StageConfig


def _split(tokens: int, shares: list[float]) -> list[int]:
    return [max(1, int(tokens * s)) for s in shares]


def _e2e_lr(lr: float, ratio: float) -> float:
    """The last stage's peak learning rate: ``ratio`` times ``lr``."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < float("inf"):
        raise ValueError(f"e2e_lr_ratio={ratio!r}: must be a number > 0 (the end-to-end stage's lr over lr)")
    return lr * ratio


def _aligned(losses: dict[str, float], align: float) -> dict[str, float]:
    """``losses`` with the mixer-output alignment term at weight ``align`` (none at 0)."""
    if isinstance(align, bool) or not isinstance(align, int | float) or not align >= 0:
        raise ValueError(f"align={align!r}: must be a weight >= 0 (0: no mixer-output alignment term)")
    return {**losses, "attn_mse": float(align)} if align > 0 else losses


def mohawk(tokens: int, seq_len: int = 512, batch_size: int = 8, lr: float = 1e-3,
           e2e_lr_ratio: float = 0.1) -> list[StageConfig]:
    t1, t2, t3 = _split(tokens, [80 / 3000, 160 / 3000, 2760 / 3000])
    common = dict(seq_len=seq_len, batch_size=batch_size)
    return [StageConfig("matrix-orientation", "mixers", {"matrix": 1.0}, t1, lr=lr, **common),
            StageConfig("hidden-alignment", "mixers", {"hidden": 1.0}, t2, lr=lr, **common),
            StageConfig("knowledge-distillation", "all", {"kl": 1.0}, t3, lr=_e2e_lr(lr, e2e_lr_ratio), **common)]


def mamba_in_llama(tokens: int, seq_len: int = 512, batch_size: int = 8, lr: float = 1e-3,
                   align: float = 0.0, e2e_lr_ratio: float = 0.1) -> list[StageConfig]:
    t1, t2 = _split(tokens, [0.2, 0.8])
    common = dict(seq_len=seq_len, batch_size=batch_size)
    return [StageConfig("mixers-only", "mixers", _aligned({"kl": 1.0, "ce": 0.1}, align), t1, lr=lr, **common),
            StageConfig("end-to-end", "all", {"kl": 1.0}, t2, lr=_e2e_lr(lr, e2e_lr_ratio), **common)]


def scavenging_hyena(tokens: int, seq_len: int = 512, batch_size: int = 8, lr: float = 1e-3,
                     groups: int = 3, e2e_lr_ratio: float = 0.1) -> list[StageConfig]:
    """Progressive transfer over ``groups`` consecutive groups of the replaced layers (first layers first)."""
    if groups < 1:
        raise ValueError(f"scavenging-hyena needs at least one group of layers, got groups={groups}")
    progressive = _split(tokens, [0.4 / groups] * groups)
    common = dict(seq_len=seq_len, batch_size=batch_size)
    stages = [StageConfig(f"group-{k + 1}-of-{groups}", "mixers", {"hidden": 1.0}, t, layer_group=[k, groups],
                          lr=lr, **common)
              for k, t in enumerate(progressive)]
    return stages + [StageConfig("knowledge-distillation", "all", {"kl": 1.0}, int(tokens * 0.6),
                                 lr=_e2e_lr(lr, e2e_lr_ratio), **common)]


def kd(tokens: int, seq_len: int = 512, batch_size: int = 8, lr: float = 1e-3,
       align: float = 0.0) -> list[StageConfig]:
    return [StageConfig("knowledge-distillation", "mixers", _aligned({"kl": 1.0}, align), tokens, lr=lr,
                        seq_len=seq_len, batch_size=batch_size)]


def draft(tokens: int, seq_len: int = 512, batch_size: int = 8, lr: float = 1e-3) -> list[StageConfig]:
    return [StageConfig("draft-distillation", "all", {"kl": 1.0}, tokens, lr=lr, seq_len=seq_len,
                        batch_size=batch_size)]


RECIPES: dict[str, Callable[..., list[StageConfig]]] = {
    "mohawk": mohawk, "mamba-in-llama": mamba_in_llama, "scavenging-hyena": scavenging_hyena, "kd": kd,
    "draft": draft,
}


def default_lr(name: str, kept_attention: int) -> float:
    """The peak learning rate of recipe ``name`` when none is given: 1e-3, except 3e-4 for ``mamba-in-llama`` with
    no attention layer kept. Measured on the default teacher (H200, docs/results.md "Quality against tokens"): every
    layer replaced, 8M tokens of the mix at 64 x 512 per step, held-out ratio 3.91 at 3e-4 against 5.44 at 1e-4 and
    7.14 at 1e-3 (30M tokens: 2.27 at 3e-4, 3.30 at 1e-4); with 25% attention kept 1e-3 is the better one (1M
    tokens: 2.06-2.28 against 3.77 at 1e-4)."""
    return 3e-4 if name == "mamba-in-llama" and kept_attention == 0 else 1e-3


def default_dials(name: str) -> dict[str, float]:
    """Recipe dials that differ from the recipe's signature defaults when none is given (the signature keeps 0.1, the
    value older run records were made with): ``e2e_lr_ratio`` 1 for ``mamba-in-llama`` and ``mohawk`` (the end-to-end
    stage at the same peak as the stages where only the mixers learn) and 0.3 for ``scavenging-hyena``. Measured on
    the default teacher (H200, docs/results.md "The end-to-end stage's learning rate" and "a sixth campaign"),
    64 x 512 per step on the mix, held-out SOTU ratio:

    - ``mamba-in-llama``, every layer replaced (lr 3e-4): at 8M tokens 2.30 with ratio 1, 3.15 with 0.3, 3.91 with
      0.1; at 30M 1.57 against 2.27;
    - ``mamba-in-llama``, 25% attention (lr 1e-3): at 8M 1.29 with 1, 1.49 with 0.3, 1.76 with 0.1; at 30M 1.10
      against 1.27; 50% attention at 8M: 1.11 with 1, 1.19 with 0.3, 1.29 with 0.1;
    - ``scavenging-hyena`` (lr 1e-3) at 8M: 4.96 with 0.3 against 5.59 with 0.1 (1 not measured);
    - ``mohawk`` (lr 1e-3, every layer replaced) at 8M: 1.91 with 1 against 3.89 with 0.1 (one seed each)."""
    if name in ("mamba-in-llama", "mohawk"):
        return {"e2e_lr_ratio": 1.0}
    return {"e2e_lr_ratio": 0.3} if name == "scavenging-hyena" else {}


def full_dials(name: str, **dials) -> dict:
    """``dials`` of recipe ``name`` completed with the recipe's own defaults for the ones not given (its keyword
    arguments other than the budget, shape and learning rate): two sets of dials make the same stages when these are
    equal, whichever defaults either left out."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
    own = {k: p.default for k, p in inspect.signature(RECIPES[name]).parameters.items()
           if k not in ("tokens", "seq_len", "batch_size", "lr")}
    return own | dials


def recipe(name: str, **dials) -> list[StageConfig]:
    """The stages of recipe ``name`` for ``dials`` (``tokens`` and the recipe's keyword arguments)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
    accepted = list(inspect.signature(RECIPES[name]).parameters)
    unknown = sorted(set(dials) - set(accepted))
    if unknown:
        hint = (" (the replaced layers come from the run config, keep_attention or replace, not from the recipe)"
                if "layers" in unknown else "")
        raise ValueError(f"recipe {name!r} has no dial {', '.join(map(repr, unknown))}{hint}; its dials: "
                         f"{', '.join(accepted)}")
    return RECIPES[name](**dials)
