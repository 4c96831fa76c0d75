"""Programmatic dependent launch (PDL, compute capability 9.0 and later) for the decode step's Triton kernels
(``norm_linear_kernel``, ``gated_mlp_kernel``, ``linear_residual_kernel``, ``mamba2_step_kernel``, and the kept
attention's ``decode_attention_kernel``, which has nothing to load early). Imported only where Triton is installed.

A decode step at batch 1 is a chain of a few hundred small kernels, each a few microseconds of memory round trips
(docs/results.md, "Kernels per decode step"). Launched with PDL, a kernel may start while the kernel before it is
still running, and spend that time on loads that do not depend on it. Each kernel here:
  1. loads what the kernel before it does not write (its weights, a layer's own state), before waiting;
  2. ``wait_for_inputs``: waits until the grid before it has finished and its writes are visible (``gdc_wait``),
     then lets the next kernel launch (``gdc_launch_dependents``);
  3. reads its inputs and computes as before.
Because step 2 lets the next kernel launch only after the wait, when a kernel's step 1 runs every kernel but the one
just before it has finished: that is what makes step 1's loads safe (the rule for anything added to step 1: nothing
the kernel before may have written). The same holds after a kernel launched without PDL (it started after the one
before it had finished); it would not after a kernel that lets the next launch before its own wait, which is why
step 2 waits first. Without PDL (``ENABLED`` 0, a GPU before Hopper, Triton's interpreter) step 2 is
compiled out and the kernels are what they were.

``ENABLED`` is 1: on an H200, PDL with the kernels' measured block sizes made the all-Mamba-2 student's batch-1 step
replay 19% shorter (docs/results.md, "Programmatic dependent launch and the swept block sizes");
``benchmarks/decode_profile.py --kernel-setting dependent_launch.ENABLED=0`` measures the step without it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ENABLED = 1                 # 1: launch the decode kernels with PDL where the GPU supports it (docs/results.md)


@functools.cache
def _supported(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def launch_pdl(device: torch.device) -> bool:
    """Whether a decode kernel on ``device`` is launched with PDL: ``ENABLED`` and a CUDA GPU of compute capability
    9.0 or later."""
    return bool(ENABLED) and device.type == "cuda" and _supported(
        torch.cuda.current_device() if device.index is None else device.index)


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Step 2 (a no-op without PDL): wait for the grid before, then let the next one launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
