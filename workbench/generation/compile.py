"""torch.compile of the decode step (``generate(..., compile=True)``).

After the prefill, every mixer's ``step`` and every decoder layer's other parameterised children (MLP, norms; the
attention is left as it is; a gated MLP's first half as one op, ``workbench.ops.gated_mlp``) are wrapped in
``torch.compile`` (inductor, static shapes, fullgraph), so each runs as a
few fused kernels instead of dozens of small ones. They compile in the first decode step, which runs eagerly (before
the CUDA graph's capture, if any) and is reported as ``compile_seconds``, kept out of the decode time; later steps
(the capture included) must reuse that code, and a recompilation raises ``CompileError``. The layers share code: one
compilation serves all layers of one shape. A mixer whose step changes its state's shapes (Hyena) keeps an eager step
(``compile_note`` says why). The model's modules are restored on exit.

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
from workbench.students import student_mixers
from workbench.teachers import anatomy


class CompileError(RuntimeError):
    """torch.compile could not compile the decode step, or would recompile it after the first step."""


class GatedMLPStep(nn.Module):
    """A gated MLP's forward with its first half as one op (``workbench.ops.gated_mlp``: on CUDA one Triton kernel,
    elsewhere the same PyTorch ops as the family's module). It holds the MLP's own projections (no copy);
    as a module, all layers' instances share one compilation."""

    def __init__(self, mlp: anatomy.GatedMLP):
        super().__init__()
        self.gate, self.up, self.down, self.act = mlp.gate, mlp.up, mlp.down, mlp.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(gated_mlp_up(x, self.gate.weight, self.up.weight, self.act))


def compile_targets(model: nn.Module, mixer_steps: bool = True) -> list[tuple[nn.Module, str, Callable]]:
    """(module, method name, function) triples ``compiled_decoding`` compiles in place of the method: each mixer's
    ``step`` (if ``mixer_steps``), and the ``forward`` of the MLP and norms of every decoder layer
    (``anatomy.around_attention``), a gated MLP's as ``GatedMLPStep``'s."""
    model = unwrap(model)
    targets = [(m, "step", m.step) for m in student_mixers(model).values()] if mixer_steps else []
    for layer in anatomy.decoder_layers(model):
        gated = anatomy.gated_mlp(model, layer)
        for _, child in anatomy.around_attention(layer):
            use = GatedMLPStep(gated).forward if gated and child is gated.module else child.forward
            targets.append((child, "forward", use))
    return targets


@contextlib.contextmanager
def compiled_decoding(targets: Sequence[tuple[nn.Module, str, Callable]]) -> Iterator[None]:
    """Within the context, each (module, method, function) of ``targets`` has the method replaced on its instance
    by ``torch.compile(function, dynamic=False, fullgraph=True)`` (compiled lazily, at its first call); the
    instances are left as they were on exit."""
    saved = [(module, name, module.__dict__.get(name)) for module, name, _ in targets]
    try:
        for module, name, function in targets:
            setattr(module, name, torch.compile(function, dynamic=False, fullgraph=True))
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
