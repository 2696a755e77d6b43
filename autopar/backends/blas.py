"""BLAS threads: how many a worker of a pool gets (``cores // n``, at least one, so that workers
x BLAS threads fit the cores), and capping them while work runs."""

from __future__ import annotations

import threading
from typing import Any, Callable, ContextManager

from ..tune.system import usable_cores

_lock = threading.Lock()
_held: list[Any] = []  # [limiter of the first hold, holds]


def blas_share(n_workers: int, cores: int | None = None) -> int:
    """BLAS threads for each of ``n_workers`` workers."""
    return max(1, (cores if cores is not None else usable_cores()) // max(n_workers, 1))


def capped_blas(threads: int) -> ContextManager[Any]:
    """BLAS pools (OpenBLAS, MKL, ...) capped at ``threads`` until the block ends."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads)


def hold_cap(threads: int) -> Callable[[], None]:
    """Cap this process's BLAS pools at ``threads`` until the returned function is called
    (once). Holds nest: the settings from before the first are put back when the last ends."""
    from threadpoolctl import threadpool_limits

    with _lock:
        limiter = threadpool_limits(limits=threads)
        if _held:
            _held[1] += 1
        else:
            _held[:] = [limiter, 1]
    done = threading.Event()

    def release() -> None:
        with _lock:
            if done.is_set():
                return
            done.set()
            _held[1] -= 1
            if _held[1] == 0:
                first = _held[0]
                _held.clear()
                first.restore_original_limits()

    return release
