"""Build a student from a teacher: the teacher's own Hugging Face model with chosen attention modules swapped for
token mixers (Hyena, MultiHyena, Mamba-2, discrete Mamba-2, Mamba). Everything else (embeddings, MLPs, norms, LM
head, tied weights) is exactly the teacher's, so a student runs, trains, saves and generates like the teacher does.

    student = build_student(teacher_model, "mamba2", keep_attention=[5, 11])   # layers 5 and 11 stay attention
    student.save_pretrained(path)
    student = load_student(path)                                                # same structure, same weights
    student = AutoModelForCausalLM.from_pretrained(path)                        # the same, once workbench is imported

The swap itself is ``workbench.students.adapter.MixerAttention``; the mixer names are
``workbench.students.registry``; which layers are swapped is ``workbench.students.spec.split_layers``; loading a
saved student is ``workbench.students.io.load_student``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TypeAlias

import torch
from torch import nn
from transformers import PreTrainedModel

from workbench.students.adapter import MixerAttention, student_mixers
from workbench.students.calibrate import calibrate_output_scale
from workbench.students.hf import as_student_config
from workbench.students.registry import mixer_class, resolve_config
from workbench.students.spec import INITS, SPEC_KEY, StudentSpec, check_layers, split_layers
from workbench.teachers import anatomy
from workbench.teachers.anatomy import AttentionWeights
from workbench.teachers.wrapper import Teacher

Student: TypeAlias = PreTrainedModel  # the teacher's own *ForCausalLM class, some attention modules swapped for mixers


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


def install(model: nn.Module, spec: StudentSpec, overrides: dict) -> StudentSpec:
    """Swap the attention of ``spec.layers`` in ``model`` (in place) for mixers; returns the spec with the
    resolved mixer config, also stored in ``model.config``, which becomes a student config (saved with the student
    model type, ``workbench.students.hf``)."""
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
    spec = dataclasses.replace(spec, mixer_config=resolved)
    setattr(as_student_config(model.config), SPEC_KEY, spec.to_dict())
    return spec


def build_student(teacher_model: nn.Module, mixer: str = "mamba2", keep_attention: Sequence[int] | None = None,
                  init: str = "attention", calibration_ids: torch.Tensor | None = None,
                  replace: Sequence[int] | None = None, source_layers: Sequence[int] | None = None,
                  **mixer_config) -> Student:
    """A student: a deep copy of the teacher (a Hugging Face causal LM, or a workbench Teacher) whose attention is
    replaced by ``mixer`` in every layer not listed in ``keep_attention`` or, given ``replace`` instead, in the
    layers it lists (``workbench.students.spec.split_layers``; neither: every layer).

    ``init="attention"`` initialises each mixer from its layer's attention projections (``from_attention``);
    ``init="random"`` builds the same mixers from random projections. ``mixer_config`` sets fields of the mixer's
    config dataclass (e.g. ``d_conv=4`` for Mamba-2). The student's parameters are all trainable; the teacher's
    weights are left untouched.

    ``calibration_ids`` (B, L) token ids: after the swap, rescale each mixer's output per head to the RMS of the
    attention head it replaces, measured on the teacher's activations for these tokens
    (``workbench.students.calibrate``; a few hundred tokens suffice). Recommended with ``init="attention"``.

    ``source_layers``: a shallow student (a draft model for speculative decoding) keeps only these teacher layers
    (``spread_layers`` spreads a depth over the teacher) and drops the rest (``anatomy.keep_layers``); its layers are
    numbered 0..len(source_layers) - 1, while ``keep_attention`` and ``replace`` still name teacher layers.
    """
    if isinstance(teacher_model, Teacher):
        teacher_model = teacher_model.model
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    mixer_class(mixer)  # unknown names fail before the copy
    n = len(anatomy.decoder_layers(teacher_model))
    replaced, _ = split_layers(n, keep_attention=keep_attention, replace=replace)
    source = list(range(n)) if source_layers is None else check_layers("source_layers", source_layers, n)
    dropped = sorted((set(keep_attention or []) | set(replace or [])) - set(source))
    if dropped:
        raise ValueError(f"layers {dropped} are dropped from the student (its source layers are {source}): name only "
                         f"source layers in keep_attention or replace")
    layers = [j for j, i in enumerate(source) if i in replaced]               # the student's own numbering
    spec = StudentSpec(mixer=mixer, mixer_config={}, layers=layers, init=init, num_layers=len(source),
                       source_layers=None if source_layers is None else source)
    student = copy.deepcopy(teacher_model)
    if source_layers is not None:
        anatomy.keep_layers(student, source)
    install(student, spec, mixer_config)
    if calibration_ids is not None:  # each mixer scaled against the teacher layer it was copied from
        mixers = {source[j]: mixer for j, mixer in student_mixers(student).items()}
        calibrate_output_scale(student, teacher_model, calibration_ids, mixers=mixers)
    return student.requires_grad_(True)


