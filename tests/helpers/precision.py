"""Tolerances from an error analysis, for comparing a fast path that rounds (float32, TF32) with a float64 reference.

The rule. A sum of products Σ_k t_k, computed with a relative rounding error of a few units u on each term, is off by
about u · sqrt(Σ_k t_k²) when the rounding errors are independent: they add up as a random walk (Higham & Mary,
"A New Approach to Probabilistic Rounding Error Analysis", SIAM J. Sci. Comput. 41(5), 2019). So each result is
compared in units of u times the root-sum-square of its own summands, never in units of the result itself: a
gradient that sums B·L·P terms of both signs (an SSD's d_A) can be far smaller than its summands, and its rounding
error follows the summands. An error in the code (a wrong sign, a missed term, a chunk boundary off by one) moves a
result by the order of the result, about the root-sum-square, so it is caught by a margin of 1 / (factor · u).

Units: TF32 keeps 10 of float32's 23 mantissa bits (Tensor Core products of float32 inputs in Triton's ``tl.dot``
and in cuBLAS when allowed), u = 2^-11; float32 u = 2^-24.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

TF32_UNIT = 2.0 ** -11       # unit roundoff of TF32: 10 explicit mantissa bits
FP32_UNIT = 2.0 ** -24       # unit roundoff of float32: 23 explicit mantissa bits

# Two float32 computations of the same sums in different orders (a chunked scan, a compiled kernel, the sequential
# reference) have rounding errors of the same size; the ratio of their largest errors over a small tensor (a d_A of
# E·N = 12 entries) varies by a few (up to 4 over the selective scan's cases on CPU). 16 allows that; a wrong term
# is 1e5 times larger.
SAME_PRECISION_FACTOR = 16


def assert_error_within(actual: torch.Tensor, expected: torch.Tensor, rss: torch.Tensor, unit: float, factor: float,
                        name: str, floor: float = 0.0) -> None:
    """max |actual - expected| <= factor · (unit · max(rss) + floor), with ``expected`` from a float64 reference,
    ``rss`` the root-sum-square of the summands of each element of ``expected`` (same shape) and ``floor`` an absolute
    error the analysis adds (a cancellation outside the summands). The message gives the error in units of that
    bound over the factor, so a failure says how far past the analysis it went."""
    assert actual.shape == expected.shape == rss.shape, f"{name}: shapes {actual.shape}, {expected.shape}, {rss.shape}"
    assert torch.isfinite(actual).all(), f"{name}: not finite"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = unit * rss.double().max().item() + floor
    assert err <= factor * scale, (f"{name}: max error {err:.3g} = {err / scale if scale else float('inf'):.3g} "
                                   f"units of u·max rss + floor ({scale:.3g}), more than the {factor} allowed")


def assert_error_like(actual: torch.Tensor, same_precision: torch.Tensor, expected: torch.Tensor, unit: float,
                      factor: float, name: str) -> None:
    """max |actual - expected| <= factor · max(max |same_precision - expected|, unit · max |expected|): ``actual`` is
    about as accurate as ``same_precision``, a reference run in the same precision, against the float64 ``expected``.
    The second term (one rounding of the largest result) keeps an exact float32 reference from demanding exactness."""
    err = (actual.double() - expected.double()).abs().max().item()
    ref_err = (same_precision.double() - expected.double()).abs().max().item()
    floor = unit * expected.double().abs().max().item()
    assert torch.isfinite(actual).all(), f"{name}: not finite"
    assert err <= factor * max(ref_err, floor), (f"{name}: max error {err:.3g}, more than {factor} x the "
                                                 f"same-precision reference's {ref_err:.3g} (floor {floor:.3g})")


@contextlib.contextmanager
def float32_matmul() -> Iterator[None]:
    """Inside the block, float32 matrix products in PyTorch (cuBLAS, cuDNN) round in float32, not TF32, whatever the
    process set before; the settings are put back afterwards. (``torch.get/set_float32_matmul_precision`` read and
    write cuBLAS's flag through both of PyTorch's APIs, so a caller that used either keeps working.)"""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn
