"""Which layers a student swaps, in one vocabulary, and the spec a student carries in its config.

A student is described by the layers whose attention became a mixer (``replaced``); the layers that keep attention
are the rest of ``range(num_layers)``. Callers may say either one: ``split_layers`` is the only place that turns
one into the other, and the only place that checks a layer list.

    replaced, kept = split_layers(30, keep_attention=[0, 15])    # every layer but 0 and 15 becomes a mixer
    replaced, kept = split_layers(30, replace=[10, 20])           # layers 10 and 20 become mixers

The layers that keep attention may also be chosen by measurement instead of named (``AutoKeep``: "auto:25%" or
"auto:8" keeps the layers whose replacement costs the most, ``workbench.analysis.layer_scores``); the run resolves
such a rule into a layer list once its teacher is loaded, and from then on the list is what it records.

The spec (``StudentSpec``) is stored in the student's config under ``workbench_student``, so ``load_student``
rebuilds the swapped structure; its canonical field is ``layers`` (the replaced ones) with ``num_layers``, and it
also writes the derived ``keep_attention`` for readers of config.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SPEC_KEY = "workbench_student"  # the config attribute (and config.json key) holding the StudentSpec
INITS = ("attention", "random")


def check_layers(name: str, layers: Sequence[int], n: int) -> list[int]:
    """``layers`` sorted; ValueError naming ``name`` if one is out of 0..n - 1 or listed twice."""
    layers = list(layers)
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"{name} {bad} out of range: the teacher has layers 0..{n - 1}")
    repeated = sorted(i for i in set(layers) if layers.count(i) > 1)
    if repeated:
        raise ValueError(f"{name} lists layers more than once: {repeated}")
    return sorted(layers)


def check_one_of(keep_attention: Sequence[int] | None, replace: Sequence[int] | None) -> None:
    """Refuse ``keep_attention`` and ``replace`` given together: each one says the other."""
    if keep_attention and replace is not None:
        raise ValueError(f"give either keep_attention ({list(keep_attention)}) or replace ({list(replace)}), not "
                         f"both: each one says the other")


def split_layers(num_layers: int, keep_attention: Sequence[int] | None = None,
                 replace: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """(replaced, kept) layer indices of a ``num_layers``-layer teacher, from either the layers that keep attention
    or the layers to replace (not both); neither given: every layer is replaced."""
    check_one_of(keep_attention, replace)
    if replace is not None:
        replaced = check_layers("replace", replace, num_layers)
        return replaced, [i for i in range(num_layers) if i not in replaced]
    kept = check_layers("keep_attention", keep_attention or [], num_layers)
    return [i for i in range(num_layers) if i not in kept], kept


AUTO_METHODS = ("auto", "auto-greedy")  # the rule's prefix: the method that scores the layers


@dataclass(frozen=True)
class AutoKeep:
    """A rule that chooses how many layers keep attention, and by which measurement, before the teacher is known:
    "auto:25%" (a share of the teacher's layers) or "auto:8" (a count). ``method`` "auto" keeps the layers whose
    replacement cost alone is largest; "auto-greedy" restores attention one layer at a time in an all-mixer student,
    each time where it lowers the KL most (``workbench.analysis.layer_scores``)."""

    method: str                   # one of AUTO_METHODS
    count: int | None = None      # layers that keep attention; or
    share: float | None = None    # the share of the teacher's layers (0 < share < 1) that keep attention

    @classmethod
    def parse(cls, text: str) -> AutoKeep:
        """"auto:25%" -> AutoKeep("auto", share=0.25); "auto-greedy:8" -> AutoKeep("auto-greedy", count=8)."""
        usage = "give auto:N (N layers keep attention) or auto:P% (P percent of the teacher's layers), e.g. auto:25%"
        method, colon, amount = str(text).partition(":")
        if method not in AUTO_METHODS or not colon:
            raise ValueError(f"{text!r} is not a layer-choice rule: {usage} (or auto-greedy:... for the greedy "
                             f"choice)")
        if amount.endswith("%"):
            try:
                percent = float(amount[:-1])
            except ValueError:
                raise ValueError(f"{text!r}: {amount!r} is not a percentage; {usage}") from None
            if not 0 < percent < 100:
                raise ValueError(f"{text!r}: the share must be above 0% and below 100% (every layer kept leaves "
                                 f"nothing to distil)")
            return cls(method, share=percent / 100)
        if not amount.isdigit() or int(amount) < 1:
            raise ValueError(f"{text!r}: {amount!r} is not a count of layers >= 1 nor a percentage; {usage}")
        return cls(method, count=int(amount))

    def __str__(self) -> str:
        amount = f"{self.share * 100:g}%" if self.share is not None else str(self.count)
        return f"{self.method}:{amount}"

    def count_for(self, num_layers: int) -> int:
        """How many of a ``num_layers``-layer teacher's layers keep attention: the count, or the share of the layers
        rounded half up; ValueError unless it is at least one and leaves at least one layer to replace."""
        if self.count is not None:
            k = self.count
        else:
            k = math.floor(self.share * num_layers + 0.5)
            if k == 0:
                raise ValueError(f"{self}: {self.share * 100:g}% of the teacher's {num_layers} layers rounds to no "
                                 f"layer; give a larger share or a count (auto:1)")
        if k >= num_layers:
            raise ValueError(f"{self} keeps {k} layers but the teacher has {num_layers}: at most {num_layers - 1} "
                             f"may keep attention (at least one layer must become a mixer)")
        return k


def spread_layers(num_layers: int, depth: int) -> list[int]:
    """``depth`` of a ``num_layers``-layer teacher's layers, evenly spread, the first and the last always among them
    (a shallow student's source layers): spread_layers(30, 6) -> [0, 6, 12, 17, 23, 29]."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_layers:
        raise ValueError(f"depth {depth!r}: a student keeps between 1 and the teacher's {num_layers} layers")
    if depth == 1:
        return [num_layers - 1]
    return sorted({round(j * (num_layers - 1) / (depth - 1)) for j in range(depth)})


@dataclass
class StudentSpec:
    mixer: str                       # mixer name in the registry (workbench.students.registry), in every replaced layer
    mixer_config: dict               # the resolved mixer config's fields (dataclasses.asdict)
    layers: list[int]                # indices of the layers whose attention is a mixer (canonical)
    init: str                        # "attention" (Mamba in the Llama's transfer) or "random"
    num_layers: int | None = None    # the student's decoder layers (the teacher's, unless some were dropped); None
                                     #   in specs saved before it was recorded
    source_layers: list[int] | None = None  # a shallow student: the teacher layer each of its layers was copied
                                     #   from (the rest dropped, ``keep_layers``); None: all of them, one to one

    @property
    def keep_attention(self) -> list[int]:
        """The layers that keep the teacher's attention (derived from ``layers`` and ``num_layers``)."""
        if self.num_layers is None:
            raise ValueError("this spec does not record num_layers; read the kept layers off the model")
        return split_layers(self.num_layers, replace=self.layers)[1]

    def to_dict(self) -> dict:
        """The stored form: the fields, and ``keep_attention`` for readers of config.json."""
        return {"mixer": self.mixer, "mixer_config": self.mixer_config, "layers": list(self.layers),
                "keep_attention": self.keep_attention if self.num_layers is not None else None,
                "init": self.init, "num_layers": self.num_layers, "source_layers": self.source_layers}

    @classmethod
    def from_dict(cls, data: dict) -> StudentSpec:
        """A stored spec; one from before ``num_layers`` was recorded gets it from its ``keep_attention``."""
        data = dict(data)
        kept = data.pop("keep_attention", None)
        if data.get("num_layers") is None and kept is not None:
            data["num_layers"] = len(data["layers"]) + len(kept)
        spec = cls(**data)
        if kept is not None and spec.num_layers is not None and sorted(kept) != spec.keep_attention:
            raise ValueError(f"student spec is inconsistent: layers {spec.layers} replaced but keep_attention {kept} "
                             f"in a {spec.num_layers}-layer model")
        return spec


def student_spec(model_or_config) -> StudentSpec | None:
    """The spec of a student (model or config), None for a plain teacher."""
    from torch import nn  # here, so that the module (read by run configs) loads without torch

    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    spec = getattr(config, SPEC_KEY, None)
    return StudentSpec.from_dict(spec) if spec is not None else None
