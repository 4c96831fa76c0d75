"""One training step's pieces: which parameters a stage trains, the loss terms of a stage on one batch, the hooks
that feed each student block the teacher's input, and the compilation of the layers around attention.

The terms (``workbench.distill.losses``), computed for the student against the frozen teacher:
  kl / ce      - the student's logits (end-to-end); computed by the fused LM head + losses (``workbench.ops.fused_kl``,
                 from both models' last hidden states, chunk by chunk, never a (B, L, V) logits tensor) when
                 ``workbench.teachers.wrapper.fusable`` says they reproduce both models' logits, else from the
                 logits themselves (a family whose logit transform is unknown, an FSDP-sharded teacher or head);
  matrix       - MOHAWK stage 1: each chosen mixer's mixing matrix on the teacher's attention input vs the teacher's
                 attention probabilities (each layer's term under activation checkpointing: its (B, H, L, L)
                 matrices are made again in the backward, one layer at a time, instead of kept for every layer);
  attn_mse     - each chosen mixer's output on the teacher's attention input vs the teacher's attention output;
  hidden       - MOHAWK stage 2: each chosen block fed the teacher's block input vs the teacher's block output (each
                 chosen block runs alone; the rest of the student does not run).
The chosen layers are the stage's (``StageConfig.layers_of``): all replaced layers unless the stage names some.

Work a step leaves out, for the same terms and gradients:
  - a stage without "kl" reads the teacher only up to its last chosen layer, so the teacher's forward stops there
    (``Teacher.capture(stop_after=...)``: no later layer, final norm or LM head);
  - the student's first ``prefix`` decoder layers, when they are the teacher's own (``shared_prefix``: same values,
    nothing in them or before them trained, no dropout, no autocast), do not run for the kl / ce terms: they hand on
    the output the teacher's layer ``prefix - 1`` returned in the same step (``teacher_prefix``), which is what they
    would compute.
Shapes: B batch, L length, H heads.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from workbench.distill import losses as L
from workbench.distill.config import LAYERWISE_TERMS, StageConfig
from workbench.ops.fused_kl import logit_losses
from workbench.students.adapter import student_mixers
from workbench.students.base import Mixer
from workbench.teachers import anatomy
from workbench.teachers.wrapper import first_output, fusable, logit_transform, output_head

LAYERWISE = LAYERWISE_TERMS  # these terms also leave parts of the student outside the loss graph


def trainable_parameters(student: torch.nn.Module, blocks: list[torch.nn.Module], mixers: dict[int, Mixer],
                         train: str) -> list[torch.nn.Parameter]:
    """The parameters ``train`` names; ``blocks`` are the student's decoder layers (anatomy.decoder_layers, found
    once: FSDP renames the classes of the layers it shards)."""
    if train == "all":
        return list(student.parameters())
    params = [p for m in mixers.values() for p in m.parameters()]
    if train == "mixers+mlps":
        for layer in blocks:
            for child in layer.children():
                if type(child).__name__.endswith("MLP"):
                    params += list(child.parameters())
    return params


def trained_names(student: torch.nn.Module, blocks: list[torch.nn.Module], mixers: dict[int, Mixer],
                  stages: list[StageConfig]) -> list[str]:
    """Names of the parameters any of ``stages`` trains: what a run's checkpoints hold (the rest is the teacher's,
    unchanged)."""
    ids = {id(p): n for n, p in student.named_parameters()}
    names = set()
    for stage in stages:
        names |= {ids[id(p)] for p in trainable_parameters(student, blocks, mixers, stage.train)}
    return sorted(names)


def compile_layers(model: torch.nn.Module) -> list[str]:
    """``torch.compile`` (inductor, in place: parameter names unchanged) the MLP and the norms of every decoder layer
    of ``model`` (``anatomy.around_attention``) and the ``forward`` of every student mixer: the element-wise chains
    around their matmuls (a mixer's projections, short conv, gate, norm and dtype casts) become a few fused kernels;
    a scan kernel inside a mixer (mamba-ssm's Triton SSD) is left out of the graph (``torch.compiler.disable``). The
    layers themselves and the teacher's attention stay eager, so the forward hooks of the layer-wise losses
    (``teacher_inputs``, the teacher's captures) keep working; a mixer's other methods (``mixing_matrix``, ``step``)
    stay eager too. Returns the names of the compiled modules."""
    names = []
    mixers = student_mixers(model)
    for i, layer in enumerate(anatomy.decoder_layers(model)):
        for name, child in anatomy.around_attention(layer):
            child.compile(dynamic=False)
            names.append(f"{i}.{name}")
        if i in mixers:
            mixers[i].compile(dynamic=False)
            names.append(f"{i}.mixer")
    return names


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and torch.equal(a, b)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


DROPOUTS = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout,
            torch.nn.FeatureAlphaDropout)


def _draws(module: torch.nn.Module) -> bool:
    """Whether ``module`` itself draws at random in training mode, where the teacher (eval mode) does not: an
    ``nn.Dropout`` with p > 0, or a float attribute named like "drop" above 0 (attention dropout, layer drop)."""
    if not module.training:
        return False
    if isinstance(module, DROPOUTS):
        return module.p > 0
    return any("drop" in name.lower() and isinstance(value, float) and value > 0
               for name, value in vars(module).items())


def shared_prefix(teacher_model: torch.nn.Module, student: torch.nn.Module, blocks: list[torch.nn.Module],
                  trained: list[torch.nn.Parameter]) -> int:
    """How many leading decoder layers of ``student`` (``blocks``) are the teacher's own in a stage that trains
    ``trained``: then the input of the student's layer ``prefix`` equals the input of the teacher's on the same ids
    (without autocast), and ``stage_losses`` reads it off the teacher's forward. The count stops at the first layer
    that is replaced, holds a trained parameter, has a parameter or buffer unlike the teacher's (value, dtype,
    device) or draws dropout (``_draws``: the student trains in training mode, the teacher runs in eval mode); it is
    0 when anything outside the decoder layers (embeddings, final norm, head) does one of these. Compares values: a
    layer trained in an earlier stage no longer counts."""
    trained_ids = {id(p) for p in trained}
    teacher_layers = anatomy.decoder_layers(teacher_model)
    inside = {id(t) for layer in blocks for t in _tensors(layer).values()}
    inside_modules = {id(m) for layer in blocks for m in layer.modules()}
    teacher_all = _tensors(teacher_model)

    def own(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], modules) -> bool:
        return (mine.keys() == theirs.keys() and not any(_draws(m) for m in modules)
                and all(id(t) not in trained_ids and _same(t, theirs[n]) for n, t in mine.items()))

    outside = {n: t for n, t in _tensors(student).items() if id(t) not in inside}
    if not own(outside, {n: teacher_all[n] for n in outside if n in teacher_all},
               [m for m in student.modules() if id(m) not in inside_modules]):
        return 0
    for i, (layer, teacher_layer) in enumerate(zip(blocks, teacher_layers)):
        if not own(_tensors(layer), _tensors(teacher_layer), layer.modules()):
            return i
    return len(blocks)


@contextlib.contextmanager
def teacher_prefix(layers: list[torch.nn.Module], output):
    """While active, the decoder layers ``layers`` (the student's first ones, ``shared_prefix``) do not run: each
    returns ``output``, the teacher's last prefix layer's return value (``Capture.layer_output``). Only the last of
    them hands its value on to a layer that runs; the ones before it are skipped over."""
    for layer in layers:
        layer.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _autocasts(autocast, device: torch.device) -> bool:
    """Whether ``autocast()`` turns autocast on for ``device``."""
    with autocast():
        return torch.is_autocast_enabled(device.type)


@contextlib.contextmanager
def teacher_inputs(layers: list[torch.nn.Module], inputs: dict[int, torch.Tensor], outputs: dict[int, torch.Tensor]):
    """While active, block i of ``layers`` reads ``inputs[i]`` instead of the previous block's output, and its output
    is stored in ``outputs[i]`` (MOHAWK stage 2: every block trained on the teacher's input, layers independent)."""
    handles = []
    for i, x in inputs.items():
        def pre(module, args, kwargs, x=x):
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        def post(module, args, kwargs, output, i=i):
            outputs[i] = first_output(output)

        handles.append(layers[i].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layers[i].register_forward_hook(post, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def matrix_term(mixer: Mixer, attn_in: torch.Tensor, probs: torch.Tensor, layer: int) -> torch.Tensor:
    """MOHAWK stage 1 for one layer: the mixer's mixing matrix on the teacher's attention input (B, L, D) against the
    teacher's attention probabilities (B, H, L, L) (``losses.matrix_orientation``)."""
    m = mixer.mixing_matrix(attn_in)                                                   # (B, H, L, L)
    if m.shape != probs.shape:
        raise ValueError(f"layer {layer}: mixing matrix {tuple(m.shape)} cannot be compared with attention "
                         f"{tuple(probs.shape)}: the mixer needs one head per attention head")
    return L.matrix_orientation(m, probs)


def stage_losses(stage: StageConfig, teacher, student, blocks: list[torch.nn.Module], mixers: dict[int, Mixer],
                 batch: torch.Tensor, autocast, prefix: int = 0) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of ``stage`` on one batch (B, L + 1); ``blocks``: the student's decoder layers;
    ``prefix``: how many of them are the teacher's own in this stage (``shared_prefix``; 0: none taken as such)."""
    x, y = batch[:, :-1], batch[:, 1:]
    terms = set(stage.losses)
    layerwise = bool(terms & LAYERWISE)
    layers = stage.layers_of(sorted(mixers))
    missing = [i for i in layers if i not in mixers]
    if missing and layerwise:
        raise ValueError(f"stage {stage.name!r}: layers {missing} are not replaced by mixers "
                         f"(replaced: {sorted(mixers)})")
    fused = bool(terms & {"kl", "ce"}) and fusable(teacher, student)  # logit terms without (B, L, V) logits
    # the teacher computes the student's prefix only where the student runs as the teacher does: without autocast
    skip = prefix if terms & {"kl", "ce"} and not _autocasts(autocast, x.device) else 0
    read = [*(layers if layerwise else []), *([skip - 1] if skip else [])]  # teacher layers read
    cap = teacher.capture(x, layers=layers if layerwise else [], blocks="hidden" in terms,
                          attention=bool(terms & {"matrix", "attn_mse"}), attn_probs="matrix" in terms,
                          logits="kl" in terms and not fused, final_hidden="kl" in terms and fused,
                          outputs=[skip - 1] if skip else [],
                          stop_after=max(read) if read and "kl" not in terms else None)
    student_prefix = teacher_prefix(blocks[:skip], cap.layer_output[skip - 1]) if skip else contextlib.nullcontext()
    out: dict[str, torch.Tensor] = {}
    with autocast():
        if terms & {"kl", "ce"} and fused:
            # Fused LM head + losses (workbench.ops.fused_kl), chunked over tokens: neither the student's nor the
            # teacher's (B·L, V) logits are ever built; the same values and gradients as the logits path below.
            # Under FSDP2 this runs inside the sharded root's forward, where the student's head weight is whole
            # (``fusable`` sends a sharded one, a DTensor, to the logits path).
            with student_prefix:
                hidden = student.base_model(input_ids=x, use_cache=False).last_hidden_state    # (B, L, D)
            scale, softcap = logit_transform(student)
            out.update(logit_losses(
                hidden.flatten(0, 1), output_head(student),
                cap.final_hidden.flatten(0, 1) if "kl" in terms else None, output_head(teacher.model),
                y.flatten(), temperature=stage.temperature, terms=[t for t in ("kl", "ce") if t in terms],
                logit_scale=scale, softcap=softcap))
        elif terms & {"kl", "ce"}:
            # The logits path: for models whose logits the fused losses cannot reproduce (``fusable``: a family
            # without a row in LOGIT_TRANSFORMS, a sharded teacher or head).
            with student_prefix:
                logits = student(input_ids=x, use_cache=False).logits
            if "kl" in terms:
                out["kl"] = L.kl_divergence(logits, cap.logits, temperature=stage.temperature)
            if "ce" in terms:
                out["ce"] = L.cross_entropy(logits, y)
        if "matrix" in terms:
            out["matrix"] = torch.stack([checkpoint(matrix_term, mixers[i], cap.attn_in[i].float(),
                                                    cap.attn_probs[i], i, use_reentrant=False)
                                         for i in layers]).mean()
        if "attn_mse" in terms:
            out["attn_mse"] = torch.stack([L.attention_output_mse(mixers[i](cap.attn_in[i].float()), cap.attn_out[i])
                                           for i in layers]).mean()
        if "hidden" in terms:
            # Each chosen block alone on the teacher's input to it: the term reads nothing else of the student, so
            # its other layers and its LM head do not run (a whole forward under ``teacher_inputs`` gives the same
            # term at the cost of the whole student). A replaced block reads only its hidden states: the mixer
            # takes no mask or positions, and the MLP and norms around it none either.
            out["hidden"] = torch.stack([L.hidden_alignment(first_output(blocks[i](cap.block_in[i].float())),
                                                            cap.block_out[i]) for i in layers]).mean()
    return out
