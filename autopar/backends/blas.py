"""BLAS threads: how many a worker of a pool gets, and capping them while work runs.

Every pool of n workers gives each ``cores // n`` BLAS threads (at least one) so that
workers x BLAS threads fit the cores: forked process workers inherit the cap from the caller
(:func:`hold_cap` while they are forked, lifted when the pool shuts down), spawned ones cap
themselves at start, thread pools and serial runs cap for as long as the run lasts, and the
sample's probe as the pool it stands for would.
"""

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
    (once). Holds nest: the settings from before the first are put back when the last ends.

    Putting them back restarts an OpenBLAS pool a fork has stopped, whose threads then spin
    for about 0.1 s; a pool of forked workers holds its cap until it shuts down, so that
    happens after its run, not while its workers compute."""
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
