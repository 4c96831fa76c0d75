"""Build a student from a teacher: the teacher's own Hugging Face model with chosen attention modules swapped for
token mixers (Hyena, MultiHyena, Mamba-2, discrete Mamba-2, Mamba). Everything else (embeddings, MLPs, norms, LM
head, tied weights) is exactly the teacher's, so a student runs, trains, saves and generates like the teacher does.

    student = build_student(teacher_model, "mamba2", keep_attention=[5, 11])   # layers 5 and 11 stay attention
    student.save_pretrained(path)
    student = load_student(path)                                                # same structure, same weights

The swap. Each replaced attention module becomes a ``MixerAttention``: it takes the call the decoder layer makes to
its attention (hidden_states, position_embeddings, attention_mask, the cache, ...; only hidden_states is used) and
returns what the layer unpacks (``(y, None)`` in transformers 5; the count is read from one probe forward pass
through the teacher's own code at build time, not assumed). The student's config records the spec (mixer name,
mixer config, replaced and kept layers) under ``workbench_student``; ``load_student`` rebuilds the swapped
structure from it before loading the safetensors weights.

Decoding with a cache (``generate()``). Kept attention layers use the normal KV cache. A mixer layer keeps its
recurrent state in a per-layer store keyed by the cache object, and records its token count in the cache (through
``cache.update`` with a (B, 1, L, 1) marker) so the cache's sequence length, positions and masks stay right for the
attention layers. A prefill runs the parallel ``forward`` and remembers its input; the first decode step then brings
the state up to date with ``step`` over those inputs, and every later token costs one ``step``. A cropped cache
(assisted or speculative decoding) no longer matches the stored state, and that raises. A reordered cache (beam
search) cannot be detected: the mixers' states are not reordered with it, so beam search is not supported.
Mixers take no attention mask: every position, padding included, enters their state, so pad on the right (or not
at all); left-padded batched generation lets pad tokens into the mixer layers.

Mixers are found in ``MIXERS`` (name -> class). A mixer class offers ``from_attention(attn, config=None)`` and keeps
its dataclass config as ``mixer.config``; the config the builder uses is the one ``from_attention`` picks for the
teacher's attention (heads, head width, biases), with the caller's ``**mixer_config`` fields replaced.
"""

from __future__ import annotations

import copy
import importlib
import json
import weakref
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence, TypeAlias

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers import logging as transformers_logging
from transformers.cache_utils import Cache

from workbench.students.base import AttentionWeights, Mixer
from workbench.students.calibrate import calibrate_output_scale
from workbench.teachers import anatomy
from workbench.teachers.wrapper import Teacher

Student: TypeAlias = PreTrainedModel  # the teacher's own *ForCausalLM class, some attention modules swapped for mixers

SPEC_KEY = "workbench_student"  # the config attribute (and config.json key) holding the StudentSpec
INITS = ("attention", "random")


# ---- the mixer registry ---------------------------------------------------------------------------------------------

MIXERS: dict[str, type[Mixer]] = {}  # name -> mixer class; the built-in mixers are added on first lookup

_BUILTIN = {  # name -> (module, class), imported on first use
    "hyena": ("workbench.students.hyena", "Hyena"),
    "multihyena": ("workbench.students.multihyena", "MultiHyena"),
    "mamba2": ("workbench.students.mamba2", "Mamba2"),
    "mamba": ("workbench.students.mamba", "Mamba"),
    "laughing-hyena": ("workbench.laughing.student", "LaughingHyena"),            # Hyena with modal SSM filters
    "laughing-multihyena": ("workbench.laughing.student", "LaughingMultiHyena"),
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
    if name in PRESETS or name in _BUILTIN or MIXERS.get(name, cls) is not cls:
        raise ValueError(f"mixer name {name!r} is taken; the names in use are {mixer_names()}")
    MIXERS[name] = cls


def mixer_names() -> list[str]:
    return sorted({*MIXERS, *_BUILTIN, *PRESETS})


def mixer_class(name: str) -> tuple[type[Mixer], dict]:
    """(class, config fields fixed by the name) for a registered, built-in or preset mixer name."""
    base, preset = PRESETS.get(name, (name, {}))
    if base not in MIXERS and base in _BUILTIN:
        module, attr = _BUILTIN[base]
        MIXERS[base] = getattr(importlib.import_module(module), attr)
    if base not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}: choose one of {mixer_names()}, "
                         f"or add yours with workbench.students.build.register_mixer(name, cls)")
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


# ---- the spec stored in the student's config ------------------------------------------------------------------------

@dataclass
class StudentSpec:
    mixer: str                 # mixer name in MIXERS or PRESETS, used in every replaced layer
    mixer_config: dict         # the resolved mixer config's fields (dataclasses.asdict)
    layers: list[int]          # indices of the layers whose attention is a mixer
    keep_attention: list[int]  # indices of the layers that keep the teacher's attention
    init: str                  # "attention" (Mamba in the Llama's transfer) or "random"


def student_spec(model_or_config) -> StudentSpec | None:
    """The spec of a student (model or config), None for a plain teacher."""
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    spec = getattr(config, SPEC_KEY, None)
    return StudentSpec(**spec) if spec is not None else None


def student_mixers(student: nn.Module) -> dict[int, Mixer]:
    """Layer index -> the mixer in that layer, for every replaced layer."""
    layers = anatomy.decoder_layers(student)
    found = {i: anatomy.attention_of(layer)[1] for i, layer in enumerate(layers)}
    return {i: module.mixer for i, module in found.items() if isinstance(module, MixerAttention)}


# ---- the adapter in place of an attention module --------------------------------------------------------------------

@dataclass
class _DecodeState:
    """A mixer layer's decoding progress for one cache."""
    seen: int = 0                        # tokens this layer has consumed through the cache
    state: Any = None                    # the mixer's recurrent state after ``seen - len(pending)`` tokens
    pending: torch.Tensor | None = None  # (B, L', D) inputs not yet folded into ``state`` (the prefill's)


class MixerAttention(nn.Module):
    """Stands where a decoder layer's attention module stood and runs a mixer instead.

    ``forward(hidden_states, *args, **kwargs)`` accepts the layer's attention call; only hidden_states (B, L, D)
    and a cache (any argument that is a transformers ``Cache``) are read. It returns ``outputs`` values as the
    teacher's attention did (the mixer output, then Nones for the attention weights), or a bare tensor if that
    count is 0.
    """

    def __init__(self, mixer: Mixer, layer_idx: int, outputs: int = 2):
        super().__init__()
        self.mixer = mixer
        self.layer_idx = layer_idx  # this layer's index in the cache, like the attention module's
        self.outputs = outputs      # how many values the teacher's attention returned (0: a bare tensor)
        self._decoding: weakref.WeakKeyDictionary[Cache, _DecodeState] = weakref.WeakKeyDictionary()

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, outputs={self.outputs}"

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        caches = [a for a in (*args, *kwargs.values()) if isinstance(a, Cache)]
        y = self._with_cache(hidden_states, caches[0]) if caches else self.mixer(hidden_states)   # (B, L, D)
        return (y, *[None] * (self.outputs - 1)) if self.outputs else y

    def _with_cache(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D), continuing from what this layer saw through ``cache``."""
        past = cache.get_seq_length(self.layer_idx)
        progress = self._decoding.get(cache) if past else None
        if past and (progress is None or progress.seen != past):
            raise ValueError(
                f"layer {self.layer_idx} is a mixer and its recurrent state does not match the cache ({past} cached "
                f"tokens, state after {progress.seen if progress else 'no'} tokens): a cache cannot be cropped, "
                f"reordered or shared with another model once a mixer has read it; start a new cache")
        if progress is None:                                   # prefill: parallel forward, state built on demand
            y = self.mixer(x)
            progress = _DecodeState(pending=x.detach())
            self._decoding[cache] = progress
        else:                                                  # continuation: one recurrent step per token
            state = self._caught_up(progress, x)
            outputs = []
            for t in range(x.shape[1]):
                y_t, state = self.mixer.step(x[:, t], state)   # (B, D)
                outputs.append(y_t)
            progress.state = state
            y = torch.stack(outputs, dim=1)                    # (B, L, D)
        marker = x.new_zeros(x.shape[0], 1, x.shape[1], 1)     # (B, 1, L, 1): counts L tokens for this layer
        cache.update(marker, marker, self.layer_idx)
        progress.seen = past + x.shape[1]
        return y

    def _caught_up(self, progress: _DecodeState, x: torch.Tensor) -> Any:
        """The recurrent state after every input seen so far (stepping through the prefill's inputs once)."""
        state = progress.state
        if state is None:
            state = self.mixer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if progress.pending is not None:
            for t in range(progress.pending.shape[1]):
                _, state = self.mixer.step(progress.pending[:, t], state)
            progress.pending = None
        return state


# ---- building -------------------------------------------------------------------------------------------------------

def _check_layers(keep_attention: Sequence[int], n: int) -> list[int]:
    keep = list(keep_attention)
    bad = [i for i in keep if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"keep_attention {bad} out of range: the teacher has layers 0..{n - 1}")
    repeated = sorted(i for i in set(keep) if keep.count(i) > 1)
    if repeated:
        raise ValueError(f"keep_attention lists layers more than once: {repeated}")
    return sorted(keep)


def _output_counts(model: nn.Module) -> list[int]:
    """How many values each layer's attention module returns (0: a bare tensor), read from one forward pass of
    two tokens through the model's own code."""
    layers = anatomy.decoder_layers(model)
    counts: dict[int, int] = {}

    def record(i):
        def hook(module, args, output):
            counts[i] = len(output) if isinstance(output, tuple) else 0
        return hook

    handles = [anatomy.attention_of(layer)[1].register_forward_hook(record(i)) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [counts[i] for i in range(len(layers))]


def _random_like(attn: AttentionWeights) -> AttentionWeights:
    """Projections of attn's shapes drawn like nn.Linear's default init (uniform in ±1/√fan_in), zero biases where
    attn has biases: ``init="random"`` builds the same structure as ``init="attention"``, without the teacher."""
    def uniform(w):
        return torch.empty_like(w).uniform_(-w.shape[1] ** -0.5, w.shape[1] ** -0.5)

    def zeros(b):
        return None if b is None else torch.zeros_like(b)

    return AttentionWeights(uniform(attn.q), uniform(attn.k), uniform(attn.v), uniform(attn.o), attn.num_heads,
                            attn.num_kv_heads, attn.head_dim, q_bias=zeros(attn.q_bias), k_bias=zeros(attn.k_bias),
                            v_bias=zeros(attn.v_bias), o_bias=zeros(attn.o_bias))


def _install(model: nn.Module, spec: StudentSpec, overrides: dict) -> StudentSpec:
    """Swap the attention of ``spec.layers`` in ``model`` (in place) for mixers; returns the spec with the
    resolved mixer config, also stored in ``model.config``."""
    cls, preset = mixer_class(spec.mixer)
    conflicts = {k: v for k, v in overrides.items() if k in preset and v != preset[k]}
    if conflicts:
        raise ValueError(f"mixer {spec.mixer!r} fixes {preset}; {conflicts} contradicts it")
    layers = anatomy.decoder_layers(model)
    attns = {i: anatomy.attention_weights(model, i) for i in spec.layers}  # unmappable layouts fail here
    outputs = _output_counts(model) if spec.layers else []
    config = resolve_config(cls, attns[spec.layers[0]], {**preset, **overrides}) if spec.layers else None
    for i, attn in attns.items():
        mixer = cls.from_attention(attn if spec.init == "attention" else _random_like(attn), config)
        name, _ = anatomy.attention_of(layers[i])
        setattr(layers[i], name, MixerAttention(mixer.to(device=attn.q.device, dtype=attn.q.dtype), i, outputs[i]))
    # stored as config.json will give it back (tuples become lists), so a saved and a built spec compare equal
    resolved = json.loads(json.dumps(asdict(config))) if config is not None else {}
    spec = replace(spec, mixer_config=resolved)
    setattr(model.config, SPEC_KEY, asdict(spec))
    return spec


def build_student(teacher_model: nn.Module, mixer: str = "mamba2", keep_attention: Sequence[int] = (),
                  init: str = "attention", calibration_ids: torch.Tensor | None = None, **mixer_config) -> Student:
    """A student: a deep copy of the teacher (a Hugging Face causal LM, or a workbench Teacher) whose attention is
    replaced by ``mixer`` in every layer not listed in ``keep_attention``.

    ``init="attention"`` initialises each mixer from its layer's attention projections (``from_attention``);
    ``init="random"`` builds the same mixers from random projections. ``mixer_config`` sets fields of the mixer's
    config dataclass (e.g. ``d_conv=4`` for Mamba-2). The student's parameters are all trainable; the teacher's
    weights are left untouched.

    ``calibration_ids`` (B, L) token ids: after the swap, rescale each mixer's output per head to the RMS of the
    attention head it replaces, measured on the teacher's activations for these tokens
    (``workbench.students.calibrate``; a few hundred tokens suffice). Recommended with ``init="attention"``.
    """
    if isinstance(teacher_model, Teacher):
        teacher_model = teacher_model.model
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    mixer_class(mixer)  # unknown names fail before the copy
    n = len(anatomy.decoder_layers(teacher_model))
    keep = _check_layers(keep_attention, n)
    spec = StudentSpec(mixer=mixer, mixer_config={}, layers=[i for i in range(n) if i not in keep],
                       keep_attention=keep, init=init)
    student = copy.deepcopy(teacher_model)
    _install(student, spec, mixer_config)
    if calibration_ids is not None:
        calibrate_output_scale(student, teacher_model, calibration_ids)
    return student.requires_grad_(True)


# ---- loading --------------------------------------------------------------------------------------------------------

def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise FileNotFoundError(f"{path} has no model.safetensors (or index): save the student with "
                            f"student.save_pretrained(path)")


def _read(files: list[Path], names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors called ``names`` from safetensors ``files``."""
    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            found.update({name: f.get_tensor(name) for name in names & set(f.keys())})
    return found


def load_student(path: str | Path, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Student:
    """A student saved with ``save_pretrained``. transformers' own ``from_pretrained`` loads the teacher-shaped
    part (with its key renaming, dtype and tied weights), the attention of the replaced layers is swapped for mixers
    as the saved spec says, and the mixers' weights are read from the same safetensors files."""
    path = Path(path)
    spec = student_spec(AutoConfig.from_pretrained(path))
    if spec is None:
        raise ValueError(f"{path} holds no workbench student (its config has no {SPEC_KEY!r}); load a plain model "
                         f"with transformers' AutoModelForCausalLM.from_pretrained")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the mixer weights are "unused" and the replaced q/k/v/o "missing"
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    layers = anatomy.decoder_layers(model)
    replaced = {id(anatomy.attention_of(layers[i])[1]) for i in spec.layers}
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if id(m) in replaced)
    attention_params = {k for k in model.state_dict() if k.startswith(prefixes)}  # replaced q/k/v/o: not loaded
    _install(model, spec, spec.mixer_config)
    mixer_params = {k for k in model.state_dict() if k.startswith(prefixes)}
    weights = _read(_weight_files(path), mixer_params)
    model.load_state_dict(weights, strict=False)
    not_loaded = (set(info["missing_keys"]) - attention_params) | (mixer_params - set(weights))
    problems = {"not loaded": sorted(not_loaded), "not used": sorted(set(info["unexpected_keys"]) - mixer_params)}
    if any(problems.values()):
        raise ValueError(f"{path} does not match the student its config describes: {problems}")
    return model.to(device) if device is not None else model
