"""A thread pool over channel chunks for the CPU linear algebra of the distillery (``workbench.laughing.fit`` and
``workbench.laughing.hankel``).

torch's CPU kernels (LAPACK eigh / SVD / QR / eig through MKL or OpenBLAS, elementwise ops) release the GIL, so
chunks of channels fitted in Python threads run in parallel. Each task runs with ONE intra-op thread (the pool is
the parallelism; several multi-threaded LAPACK calls at once would oversubscribe the cores), and every chunk is
computed by the same single-threaded code whatever the number of workers: the results do not depend on ``workers``.
The caller's intra-op thread count is restored afterwards.

How many workers. torch's intra-op thread count comes from the CPUs the machine shows, which in a container can be
far more than the process may use: a CPU quota (cgroup ``cpu.max``, or ``cpu.cfs_quota_us`` in cgroup v1) does not
shrink the CPU list, so torch may start one thread per host core on a 16-core allowance. ``usable_cpus`` counts the
CPUs this process may run on (its affinity mask) capped by that quota, and ``default_workers`` never exceeds it.
``capped_threads(workers)`` caps torch's own intra-op threads around a whole fit, so the work done outside the pool
(the errors, a batched CPU refinement) does not oversubscribe either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")                  # cgroup v2: "QUOTA PERIOD" (microseconds) or "max PERIOD"
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")   # cgroup v1: QUOTA (-1: none), PERIOD in cpu.cfs_period_us


def cgroup_cpu_limit(cpu_max: Path | None = None, cfs_quota: Path | None = None) -> int | None:
    """The CPUs the process's cgroup quota allows, ceil(QUOTA / PERIOD): from cgroup v2's ``cpu.max`` (default
    CPU_MAX), else cgroup v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (default CFS_QUOTA). None when
    neither file exists (no quota visible, or the root cgroup) or the quota is unlimited ("max", -1)."""
    cpu_max = CPU_MAX if cpu_max is None else Path(cpu_max)
    cfs_quota = CFS_QUOTA if cfs_quota is None else Path(cfs_quota)
    if cpu_max.is_file():
        quota, period = cpu_max.read_text().split()
    elif cfs_quota.is_file():
        quota, period = cfs_quota.read_text().strip(), (cfs_quota.parent / "cpu.cfs_period_us").read_text().strip()
    else:
        return None
    if quota == "max" or int(quota) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def usable_cpus() -> int:
    """The CPUs this process may keep busy: its affinity mask (``os.sched_getaffinity``; ``os.cpu_count()`` where
    the platform has none), capped by the cgroup CPU quota (``cgroup_cpu_limit``)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, cpus if quota is None else min(cpus, quota))


def default_workers(workers: int | None = None) -> int:
    """``workers`` if given (at least 1), else the caller's intra-op thread count (``torch.get_num_threads()``)
    capped by ``usable_cpus()``."""
    if workers is not None:
        return max(1, int(workers))
    return max(1, min(torch.get_num_threads(), usable_cpus()))


@contextmanager
def capped_threads(limit: int) -> Iterator[int]:
    """Within the block, torch's intra-op thread count is at most ``limit``; the count in force is yielded and the
    caller's restored afterwards."""
    threads = torch.get_num_threads()
    capped = max(1, min(threads, int(limit)))
    torch.set_num_threads(capped)
    try:
        yield capped
    finally:
        torch.set_num_threads(threads)


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
