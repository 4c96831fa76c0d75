"""The published students a quality curve is drawn beside: held-out perplexity ratios (student / teacher) and the
training tokens per teacher parameter they were reached at, as the papers report them. Data only (no plotting
library), so benchmark scripts record them on machines without one; ``workbench.viz.quality`` draws them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Anchor:
    label: str                                      # legend entry: the paper, its teacher and student
    ratios: tuple[float, ...]                       # held-out perplexity ratios student / teacher
    tokens_per_parameter: tuple[float, ...] | None  # training tokens per teacher parameter of each ratio; None: a
                                                    #   horizontal line (no budget drawn)
    point_labels: tuple[str, ...] = ()              # a label beside each point (e.g. the attention share)


ANCHORS: tuple[Anchor, ...] = (
    Anchor("Pythia-1B → pure Mamba (arXiv 2604.14191)", (1.195, 1.126, 1.093, 1.018), (1.0, 2.0, 3.0, 10.0)),
    Anchor("Mamba in the Llama, 8B teacher, 20B tokens", (1.03, 1.09, 1.22, 1.66), (2.5, 2.5, 2.5, 2.5),
           ("50% attn", "25% attn", "6.25% attn", "0% attn")),
    Anchor("Scavenging Hyena, Pythia-70M → Hyena", (2.36,), None),
)
