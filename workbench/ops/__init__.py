"""Heavy operations, each with a fast path and a pure-PyTorch ``*_ref`` twin of the same signature.

``workbench.ops.backend`` decides which path an op takes on a given device and lets tests and benchmarks force one.
"""
