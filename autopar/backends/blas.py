"""BLAS threads: how many a worker of a pool gets, and capping them while work runs.

Every pool of n workers gives each ``cores // n`` BLAS threads (at least one) so that
workers x BLAS threads fit the cores: process workers for good in their initializer, thread
pools and serial runs for as long as the run lasts, and the sample's probe as the pool it
stands for would.
"""

from __future__ import annotations

from typing import Any, ContextManager

from ..tune.system import usable_cores


def blas_share(n_workers: int, cores: int | None = None) -> int:
    """BLAS threads for each of ``n_workers`` workers."""
    return max(1, (cores if cores is not None else usable_cores()) // max(n_workers, 1))


def capped_blas(threads: int) -> ContextManager[Any]:
    """BLAS pools (OpenBLAS, MKL, ...) capped at ``threads`` until the block ends."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)
