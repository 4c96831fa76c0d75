"""Our Triton kernels on a machine without a GPU: Triton's interpreter runs them on the CPU. It is switched on by an
environment variable read when a kernel is made, so the check runs in a fresh Python process."""

from __future__ import annotations

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
