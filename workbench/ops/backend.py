"""Backend choice for the heavy ops (FFT long conv, SSD scan, selective scan).

Every op registers its implementations here under a name ("ref", "torch", "triton", "cuda", ...), each with an
availability check. ``select(op, device)`` returns the best available one, in the registered order of preference.
A backend can be forced for tests and benchmarks, either for a block of code::

    with force_backend("ssd", "ref"):
        y = mixer(x)

or for a whole process with an environment variable: ``WORKBENCH_BACKEND_SSD=ref``.
``workbench doctor`` prints ``describe()``: which path each op takes on each device.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Backend:
    name: str                                   # short id, e.g. "triton" or "ref"
    fn: Callable                                # the implementation; same signature for every backend of an op
    available: Callable[[torch.device], bool]   # can it run on this device right now?
    note: str = ""                              # one line shown by `workbench doctor`


# op name -> backends in order of preference (fastest first; the reference last)
_REGISTRY: dict[str, list[Backend]] = {}
_FORCED: dict[str, str] = {}


def register(op: str, backend: Backend) -> None:
    """Add a backend for ``op``. Call order sets preference: register the fastest first."""
    backends = _REGISTRY.setdefault(op, [])
    if any(b.name == backend.name for b in backends):
        raise ValueError(f"backend {backend.name!r} already registered for op {op!r}")
    backends.append(backend)


def backends(op: str) -> list[Backend]:
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; registered ops: {sorted(_REGISTRY)}")
    return list(_REGISTRY[op])


def _forced_name(op: str) -> str | None:
    return _FORCED.get(op) or os.environ.get(f"WORKBENCH_BACKEND_{op.upper()}") or None


def select(op: str, device: torch.device | str) -> Backend:
    """The backend ``op`` uses on ``device``: the forced one if any, else the first available."""
    device = torch.device(device)
    options = backends(op)
    forced = _forced_name(op)
    if forced is not None:
        for b in options:
            if b.name == forced:
                if not b.available(device):
                    raise RuntimeError(
                        f"backend {forced!r} for op {op!r} was forced but cannot run on {device}: {b.note}. "
                        f"Unset WORKBENCH_BACKEND_{op.upper()} or choose one of {[o.name for o in options]}."
                    )
                return b
        raise ValueError(f"backend {forced!r} forced for op {op!r} is not one of {[o.name for o in options]}")
    for b in options:
        if b.available(device):
            return b
    raise RuntimeError(f"no backend of op {op!r} can run on {device}")


@contextlib.contextmanager
def force_backend(op: str, name: str) -> Iterator[None]:
    """Force ``op`` to use backend ``name`` inside the block (tests, benchmarks)."""
    if name not in [b.name for b in backends(op)]:
        raise ValueError(f"backend {name!r} is not one of {[b.name for b in backends(op)]} for op {op!r}")
    previous = _FORCED.get(op)
    _FORCED[op] = name
    try:
        yield
    finally:
        if previous is None:
            _FORCED.pop(op, None)
        else:
            _FORCED[op] = previous


@functools.cache
def _triton_importable() -> bool:
    # apart from triton_installed: torch.compile does not take assume_constant_result on a cached function
    return importlib.util.find_spec("triton") is not None


@torch.compiler.assume_constant_result
def triton_installed() -> bool:
    """Is Triton importable (for backends whose kernels are our own Triton code)? A constant to torch.compile (ops
    pick their backend inside compiled code)."""
    return _triton_importable()


def describe(device: torch.device | str) -> dict[str, str]:
    """{op: "chosen backend (note)"} for ``device``; used by `workbench doctor`."""
    out = {}
    for op in sorted(_REGISTRY):
        try:
            b = select(op, device)
            out[op] = f"{b.name}" + (f" ({b.note})" if b.note else "")
        except RuntimeError as err:
            out[op] = f"unavailable: {err}"
    return out
