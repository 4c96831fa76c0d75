"""Heavy operations, each with a fast path and a pure-PyTorch ``*_ref`` twin of the same signature.

``workbench.ops.backend`` decides which path an op takes on a given device and lets tests and benchmarks force one.
"""


def load_ops() -> None:
    """Import every op module, so that all register their backends with ``workbench.ops.backend`` (``workbench
    doctor`` lists them)."""
    from workbench.ops import (  # noqa: F401  (imported for their registrations)
        decode_attention,
        fftconv,
        fused_kl,
        gated_mlp,
        linear_residual,
        mamba2_step,
        norm_linear,
        selective_scan,
        ssd,
    )
