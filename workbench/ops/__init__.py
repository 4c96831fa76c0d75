"""Heavy operations, each with a fast path and a pure-PyTorch ``*_ref`` twin of the same signature.

``workbench.ops.backend`` decides which path an op takes on a given device and lets tests and benchmarks force one.
"""

import importlib

# every module that registers backends with workbench.ops.backend
OP_MODULES = ("workbench.ops.fftconv", "workbench.ops.ssd", "workbench.ops.selective_scan")


def load_ops() -> None:
    """Import all op modules so their backends are registered (``workbench doctor`` lists them)."""
    for name in OP_MODULES:
        importlib.import_module(name)
