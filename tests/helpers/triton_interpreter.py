"""Our Triton kernels on a machine without a GPU: Triton's interpreter runs them on the CPU. It is switched on by an
environment variable read when a kernel is made, so the check runs in a fresh Python process."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def in_interpreter(lines: str, timeout: int = 600) -> str:
    """Run ``lines`` (Python, from the project root, with TRITON_INTERPRET=1) in a new process; its output, which must
    end with "ok" (AssertionError with its output and errors otherwise)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", lines + "\nprint('ok')\n"], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout[-2000:] + \
        result.stderr[-3000:]
    return result.stdout


def relative_error(out, ref) -> float:
    """The largest difference between ``out`` (any device and dtype) and the float32 CPU ``ref``, over ref's largest
    magnitude."""
    return ((out.float().cpu() - ref).abs().max() / ref.abs().max()).item()


@contextlib.contextmanager
def dependent_launch(on: bool):
    """The decode kernels launched with programmatic dependent launch (``workbench.ops.dependent_launch.ENABLED``,
    where the GPU supports it) inside the block, or without."""
    from workbench.ops import dependent_launch as module

    before, module.ENABLED = module.ENABLED, int(on)
    try:
        yield
    finally:
        module.ENABLED = before


def errors_on_cuda(errors, dtype, pdl: bool = False) -> dict[str, float]:
    """``errors`` (a function of (device, dtype) returning a dict of errors) on CUDA in ``dtype``, the kernels
    launched with programmatic dependent launch if ``pdl``."""
    with dependent_launch(pdl):
        return errors("cuda", dtype)


def errors_within_in_interpreter(errors: str, limit: float = 1e-5) -> None:
    """``errors`` ("tests.ops.test_x.kernel_errors", a function of (device, dtype) returning a dict of errors) run
    in float32 on the CPU through Triton's interpreter: every error below ``limit`` (1e-5: float32 rounding, the same
    arithmetic in another order)."""
    module, function = errors.rsplit(".", 1)
    in_interpreter(f"import torch\nfrom {module} import {function}\n"
                   f"errors = {function}('cpu', torch.float32)\nprint(errors)\n"
                   f"assert all(e < {limit} for e in errors.values()), errors")
