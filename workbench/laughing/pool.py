"""A thread pool over channel chunks for the CPU linear algebra of the distillery (``workbench.laughing.fit`` and
``workbench.laughing.hankel``).

torch's CPU kernels (LAPACK eigh / SVD / QR / eig through MKL or OpenBLAS, elementwise ops) release the GIL, so
chunks of channels fitted in Python threads run in parallel. Each task runs with ONE intra-op thread (the pool is
the parallelism; several multi-threaded LAPACK calls at once would oversubscribe the cores), and every chunk is
computed by the same single-threaded code whatever the number of workers: the results do not depend on ``workers``.
The caller's intra-op thread count is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def default_workers(workers: int | None = None) -> int:
    """``workers`` if given (at least 1), else the caller's intra-op thread count (``torch.get_num_threads()``)."""
    return max(1, int(workers) if workers is not None else torch.get_num_threads())


def chunk_slices(total: int, chunk: int) -> list[slice]:
    """[0:chunk], [chunk:2 chunk], ... covering range(total)."""
    chunk = max(1, int(chunk))
    return [slice(start, min(start + chunk, total)) for start in range(0, total, chunk)]


def map_chunks(fn: Callable[[slice], T], total: int, chunk: int, workers: int | None = None) -> list[T]:
    """[fn(s) for s in chunk_slices(total, chunk)], in that order, on a pool of ``workers`` threads (default
    ``default_workers()``), each task with one intra-op torch thread and gradients off."""
    slices = chunk_slices(total, chunk)
    threads = torch.get_num_threads()

    def task(part: slice) -> T:
        torch.set_num_threads(1)
        with torch.no_grad():
            return fn(part)

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(default_workers(workers), len(slices)))) as pool:
            return list(pool.map(task, slices))
    finally:
        torch.set_num_threads(threads)
