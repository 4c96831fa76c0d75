"""torch.compile of the decode step (``generate(..., compile=True)``).

After the prefill, every mixer's ``step`` and every decoder layer's other parameterised children (MLP, norms; the
attention is left as it is; a gated MLP's first half as one op, ``workbench.ops.gated_mlp``) are wrapped in
``torch.compile`` (inductor, static shapes, fullgraph), so each runs as a few fused kernels instead of dozens of small
ones. They compile in the first decode step, which runs eagerly (before the CUDA graph's capture, if any) and is
reported as ``compile_seconds``, kept out of the decode time; later steps (the capture included) must reuse that code,
and a recompilation raises ``CompileError``. The layers share code: one compilation serves all layers of one shape. A
mixer whose step changes its state's shapes (Hyena) keeps an eager step (``compile_note`` says why). The model's
modules are restored on exit.

With ``fold_norms`` (the default), a layer's two RMS pre-norms (``anatomy.pre_norms``) become part of the
projections that read them, a Mamba-2 mixer's in_proj (``workbench.ops.norm_linear``) and the gated MLP's first
half, and the norm modules pass their input through: two kernels fewer per layer, in a step whose time is mostly the
count of its small kernels (on an H200, 3-24% more tokens/s: docs/results.md, "Folded norms").

With ``fold_residuals`` too (the default; it needs the folded norms and does nothing without them), a Mamba-2 layer
whose forward is exactly x + mixer(norm(x)), then h + mlp(norm(h)) (``_is_pre_norm_layer``) adds each residual
inside the projection that ends its branch (``workbench.ops.linear_residual``: out_proj and the MLP's down projection
start from the residual), and the layer's forward becomes those two calls (``ResidualLayerForward``, not compiled: it
only calls the compiled parts): two kernels fewer per layer. On an H200 an addmm did not do it (an out-of-place addmm
copies the residual first); the op's Triton kernel, which adds the residual in its epilogue, took 60 kernels and 8%
of the replay out of an all-Mamba-2 student's step, and over four processes of each setting the end-to-end bench
was level at batch 1 and 2% faster at batch 16 (docs/results.md, "Residual adds in a GEMV's epilogue" and "The GEMV
form measured").

    with compiled_decoding(compile_targets(model)):
        with step_context(compile=True, first=True):   # the compiling step
            ...
        with step_context(compile=True, first=False):  # every later step: no recompilation
            ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from workbench.generation.session import unwrap
from workbench.ops.gated_mlp import gated_mlp_up
from workbench.ops.linear_residual import linear_residual
from workbench.ops.norm_linear import rms_norm_linear, rms_norm_ref
from workbench.students import student_mixers
from workbench.students.mamba2 import Mamba2
from workbench.teachers import anatomy


class CompileError(RuntimeError):
    """torch.compile could not compile the decode step, or would recompile it after the first step."""


class GatedMLPStep(nn.Module):
    """A gated MLP's forward with its first half as one op (``workbench.ops.gated_mlp``: on CUDA one Triton kernel,
    elsewhere the same PyTorch ops as the family's module), the layer's pre-MLP RMSNorm folded into it where
    ``norm`` is given. It holds the MLP's own projections (no copy); as a module, all layers' instances share one
    compilation."""

    def __init__(self, mlp: anatomy.GatedMLP, norm: nn.Module | None = None, eps: float = 1e-6):
        super().__init__()
        self.gate, self.up, self.down, self.act = mlp.gate, mlp.up, mlp.down, mlp.act
        self.norm, self.eps = norm, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm_weight = None if self.norm is None else self.norm.weight
        return self.project_down(x, gated_mlp_up(x, self.gate.weight, self.up.weight, self.act, norm_weight, self.eps))

    def project_down(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The MLP's output from its first half's h."""
        return self.down(h)


class NormedMamba2Step(nn.Module):
    """A Mamba-2 mixer's ``step`` on the layer's input before its pre-norm: the norm and the in_proj as one op
    (``workbench.ops.norm_linear``), the mixer's ``step_between_projections``, then out_proj."""

    def __init__(self, mixer: Mamba2, norm: nn.Module, eps: float):
        super().__init__()
        self.mixer, self.norm, self.eps = mixer, norm, eps

    def forward(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        m = self.mixer
        zxbcdt = rms_norm_linear(x_t, self.norm.weight, self.eps, m.in_proj.weight, m.in_proj.bias)
        return self.project_out(x_t, m.step_between_projections(zxbcdt, state)), state

    def project_out(self, x_t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The mixer's output from its gated output g."""
        return self.mixer.out_proj(g)


class ResidualMamba2Step(NormedMamba2Step):
    """``NormedMamba2Step`` that returns x_t + the mixer's output (the layer's first residual inside out_proj)."""

    def project_out(self, x_t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return linear_residual(x_t, g, self.mixer.out_proj.weight)


class ResidualGatedMLPStep(GatedMLPStep):
    """``GatedMLPStep`` (with its norm) that returns x + the MLP's output (the layer's second residual inside
    down)."""

    def project_down(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return linear_residual(x, h, self.down.weight)


class ResidualLayerForward:
    """A decoder layer's forward while decoding with its residuals folded: the attention module (a
    ``MixerAttention``, whose mixer step is a ``ResidualMamba2Step``) returns x + mixer(norm(x)), the MLP module (a
    ``ResidualGatedMLPStep``) h + mlp(norm(h)). ``compiled_decoding`` installs it as it is (it calls the compiled
    parts; the attention module's cache bookkeeping stays eager, as in the layer's own forward)."""

    def __init__(self, attention: nn.Module, mlp: nn.Module):
        self.attention, self.mlp = attention, mlp

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.mlp(_attention_output(self.attention, self.attention(hidden_states, *args, **kwargs)))


def _attention_output(attention: nn.Module, out) -> torch.Tensor:
    """The hidden states a ``MixerAttention`` call returned (alone, or first of ``attention.outputs`` values)."""
    return out[0] if attention.outputs else out


def _probe_input(weight: torch.Tensor, *shape: int) -> torch.Tensor:
    """A seeded random input of ``shape`` (then the width of ``weight``), on its device and in its dtype."""
    x = torch.randn(*shape, weight.shape[0], generator=torch.Generator().manual_seed(0))
    return x.to(weight.device, weight.dtype)


def _is_pre_norm_layer(layer: nn.Module, attention: nn.Module, norms: anatomy.PreNorms, mlp: nn.Module) -> bool:
    """Whether the layer's own forward (its mixer without a cache) computes exactly h = x + attention(norm_a(x)), then
    h + mlp(norm_m(h)) from its modules, on one random input (no multiplier on a branch, no norm after one)."""
    x = _probe_input(norms.attention.weight, 1, 3)
    with torch.no_grad():
        out = layer(x)
        if not isinstance(out, torch.Tensor):      # a layer returning a tuple: its model reads it otherwise
            return False
        h = x + _attention_output(attention, attention(norms.attention(x)))
        return torch.equal(out, h + mlp(norms.mlp(h)))


def _passed_through(x: torch.Tensor) -> torch.Tensor:
    """A folded norm's forward: the projection that reads its output normalises its input itself."""
    return x


def _is_rms_norm(norm: nn.Module, eps: float) -> bool:
    """Whether ``norm`` computes ``rms_norm_ref`` with its weight and ``eps``, bit for bit, on three random rows."""
    x = _probe_input(norm.weight, 3)
    with torch.no_grad():
        return torch.equal(norm(x), rms_norm_ref(x, norm.weight, eps))


def compile_targets(model: nn.Module, mixer_steps: bool = True, fold_norms: bool = True,
                    fold_residuals: bool = True) -> list[tuple[nn.Module, str, Callable]]:
    """(module, method name, function) triples ``compiled_decoding`` compiles in place of the method: each mixer's
    ``step`` (if ``mixer_steps``), and the ``forward`` of the MLP and norms of every decoder layer
    (``anatomy.around_attention``), a gated MLP's as ``GatedMLPStep``'s. With ``fold_norms``, where a layer's
    pre-norms are transformers' RMSNorm (``anatomy.pre_norms``, checked by ``_is_rms_norm``), the one before a
    Mamba-2 mixer (with ``mixer_steps``) goes into its in_proj (``NormedMamba2Step``), the one before a gated MLP into
    ``GatedMLPStep``, and each folded norm passes its input through. With ``fold_residuals`` as well, a Mamba-2 layer
    whose forward passes ``_is_pre_norm_layer`` takes ``ResidualMamba2Step``, ``ResidualGatedMLPStep`` and
    ``ResidualLayerForward`` (installed uncompiled) instead; without ``fold_norms``, ``fold_residuals`` does
    nothing."""
    model = unwrap(model)
    mixers = student_mixers(model)
    targets = []
    for index, layer in enumerate(anatomy.decoder_layers(model)):
        gated = anatomy.gated_mlp(model, layer)
        norms = anatomy.pre_norms(model, layer) if fold_norms else None
        if norms is not None and not (_is_rms_norm(norms.attention, norms.eps) and _is_rms_norm(norms.mlp, norms.eps)):
            norms = None
        mixer = mixers.get(index) if mixer_steps else None
        folded = {}
        attention = anatomy.attention_of(layer)[1]
        residual = (fold_residuals and norms is not None and isinstance(mixer, Mamba2) and gated is not None
                    and mixer.out_proj.bias is None
                    and _is_pre_norm_layer(layer, attention, norms, gated.module))
        if residual:
            folded[norms.attention] = (mixer, ResidualMamba2Step(mixer, norms.attention, norms.eps).forward)
            folded[norms.mlp] = (gated.module, ResidualGatedMLPStep(gated, norms.mlp, norms.eps).forward)
            targets.append((layer, "forward", ResidualLayerForward(attention, gated.module)))
        elif norms is not None and isinstance(mixer, Mamba2):
            folded[norms.attention] = (mixer, NormedMamba2Step(mixer, norms.attention, norms.eps).forward)
        elif mixer is not None:
            targets.append((mixer, "step", mixer.step))
        if norms is not None and gated is not None and not residual:
            folded[norms.mlp] = (gated.module, GatedMLPStep(gated, norms.mlp, norms.eps).forward)
        for module, function in folded.values():
            targets.append((module, "step" if module is mixer else "forward", function))
        for _, child in anatomy.around_attention(layer):
            if child in folded:
                use = _passed_through
            elif any(child is module for module, _ in folded.values()):
                continue
            else:
                use = GatedMLPStep(gated).forward if gated and child is gated.module else child.forward
            targets.append((child, "forward", use))
    return targets


@contextlib.contextmanager
def compiled_decoding(targets: Sequence[tuple[nn.Module, str, Callable]]) -> Iterator[None]:
    """Within the context, each (module, method, function) of ``targets`` has the method replaced on its instance
    by ``torch.compile(function, dynamic=False, fullgraph=True)`` (compiled lazily, at its first call), or by the
    function itself where it is a ``ResidualLayerForward`` (which only calls compiled parts); the instances are left
    as they were on exit."""
    saved = [(module, name, module.__dict__.get(name)) for module, name, _ in targets]
    try:
        for module, name, function in targets:
            eager = isinstance(function, ResidualLayerForward)
            setattr(module, name, function if eager else torch.compile(function, dynamic=False, fullgraph=True))
        yield
    finally:
        for module, name, previous in saved:
            if previous is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, previous)


@contextlib.contextmanager
def compile_errors(what: str) -> Iterator[None]:
    """Re-raise torch.compile's errors in the context as a ``CompileError`` that says what failed and what to do."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CompileError(f"torch.compile failed {what} ({type(err).__name__}: {first}); decode without it "
                           f"(generate(..., compile=False), or leave out --compile)") from err


@contextlib.contextmanager
def first_compile() -> Iterator[None]:
    """The compiling step: errors as ``CompileError``, and one that would run uncompiled (dynamo's recompile
    limit reached) fails rather than falling back to eager."""
    with compile_errors("in the first decode step"), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@contextlib.contextmanager
def no_recompile() -> Iterator[None]:
    """After the compiling step: a step that would recompile raises ``CompileError`` instead (so nothing compiles
    inside a CUDA-graph capture)."""
    with compile_errors("after the first decode step: a later step would recompile"), \
            torch.compiler.set_stance("fail_on_recompile"):
        yield


def step_context(compile: bool, first: bool) -> contextlib.AbstractContextManager:
    """What a decode step runs in: ``first_compile`` for the first step with compile, ``no_recompile`` after it."""
    if not compile:
        return contextlib.nullcontext()
    return first_compile() if first else no_recompile()
