"""The mixer registry: a plain table from a name to a mixer class, and presets that fix some config fields.

    MIXERS["mamba2"]                          -> Mamba2
    mixer_class("mamba2-discrete")            -> (Mamba2, {"discrete": True})
    register_mixer("mine", MyMixer)           # add your own (a Mixer subclass with from_attention)

The students package registers its own mixers here; packages above it register theirs when they are imported
(``workbench.laughing`` adds "laughing-hyena" and "laughing-multihyena"), so nothing here reaches up to them.
A mixer class offers ``from_attention(attn, config=None)`` and keeps its dataclass config as ``mixer.config``.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from workbench.students.base import Mixer
from workbench.students.hyena import Hyena
from workbench.students.mamba import Mamba
from workbench.students.mamba2 import Mamba2
from workbench.students.multihyena import MultiHyena
from workbench.teachers.anatomy import AttentionWeights

MIXERS: dict[str, type[Mixer]] = {  # name -> mixer class
    "hyena": Hyena,
    "multihyena": MultiHyena,
    "mamba2": Mamba2,
    "mamba": Mamba,
}
PRESETS: dict[str, tuple[str, dict]] = {  # name -> (registered mixer, config fields it fixes)
    # MOHAWK's discrete decay a_t = exp(-softplus(Λ_t)), no Δ input scale, in the Mamba-2 block (conv activation,
    # gated RMSNorm). Phi-Mamba's other choices (no activation, no norm: mamba2.MOHAWK_FIELDS, pass them as mixer
    # config) trained far worse at our budgets: held-out ratio 33 vs 1.8 with 50% attention (docs/results.md).
    "mamba2-discrete": ("mamba2", {"discrete": True}),
}


def register_mixer(name: str, cls: type[Mixer]) -> None:
    """Make ``cls`` available to ``build_student(..., mixer=name)``. It must subclass Mixer and offer
    ``from_attention(attn, config=None)``."""
    if not (isinstance(cls, type) and issubclass(cls, Mixer) and callable(getattr(cls, "from_attention", None))):
        raise TypeError(f"{cls!r} is not a Mixer subclass with a from_attention(attn, config=None) classmethod")
    if name in PRESETS or MIXERS.get(name, cls) is not cls:
        raise ValueError(f"mixer name {name!r} is taken; the names in use are {mixer_names()}")
    MIXERS[name] = cls


def mixer_names() -> list[str]:
    return sorted({*MIXERS, *PRESETS})


def mixer_class(name: str) -> tuple[type[Mixer], dict]:
    """(class, config fields fixed by the name) for a registered or preset mixer name."""
    base, preset = PRESETS.get(name, (name, {}))
    if base not in MIXERS:
        hint = (" (the laughing-* mixers are registered by importing workbench.laughing.student)"
                if "laughing" in name else "")
        raise ValueError(f"unknown mixer {name!r}: choose one of {mixer_names()}{hint}, "
                         f"or add yours with workbench.students.register_mixer(name, cls)")
    return MIXERS[base], dict(preset)


def resolve_config(cls: type[Mixer], attn: AttentionWeights, overrides: dict) -> Any:
    """The config ``cls.from_attention`` picks for ``attn``, with ``overrides`` replacing its fields."""
    default = cls.from_attention(attn).config
    names = {f.name: getattr(default, f.name) for f in fields(default)}
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no config field {unknown}; {type(default).__name__} has {sorted(names)}")
    # JSON turns tuples into lists: give tuple fields their tuples back
    values = {k: tuple(v) if isinstance(names[k], tuple) and isinstance(v, list) else v for k, v in overrides.items()}
    return replace(default, **values)
