"""Devices and dtypes in one place: what "auto" means, how to wait for a device, and what to call it in results.

    device = resolve_device("auto")           # cuda if present, else cpu; a clear error for cuda without CUDA
    dtype = resolve_dtype("auto", device)     # bf16 on CUDA, fp32 on CPU
    sync(device)                              # wait for queued kernels before reading a clock
    device_name(device)                       # "NVIDIA H200" / the CPU's name: the ``device_name`` of result files
"""

from __future__ import annotations

import platform

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / "auto": cuda when available, else cpu; anything else as ``torch.device`` reads it, with an error
    that names the fix when CUDA is asked for and absent."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available here; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` / "auto": bfloat16 on CUDA, float32 elsewhere; else a torch dtype or one of ``DTYPES``' names."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU), so wall-clock timings measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The accelerator's name on CUDA, else the processor's: what result files record as ``device_name``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
