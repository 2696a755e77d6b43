"""Pools: building them, limiting BLAS threads in process workers, and shutting them down.

:func:`get_executor` is the public door: a context manager that yields a real
``concurrent.futures`` executor (thread or process pool, or an inline serial one) and leaves no
thread or process behind when the block ends, whatever way it ends.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ..tune.system import default_start_method, usable_cores
from .blas import blas_share
from .dask import DaskExecutor
from .local import SerialExecutor
from .process import make_process_pool, terminate

if TYPE_CHECKING:
    from ..tune.result import OptimizationResult

__all__ = ["SerialExecutor", "get_executor", "executor_kind", "sigint_deferred", "terminate"]


class sigint_deferred:
    """Ctrl-C held back until the block ends, then raised as KeyboardInterrupt.

    For calls into a pool's own locking code (``submit``): KeyboardInterrupt raised inside a
    Python-level ``__enter__``/``__exit__`` (``threading.Condition``, so ``queue.Queue`` and
    ``Semaphore``) leaves the lock taken. ProcessPoolExecutor.submit interrupted inside its
    work-id queue's ``put`` left that queue's mutex held; the pool's manager thread then
    waited on it forever and the interpreter hung at exit with its workers still running
    (about 1 Ctrl-C in 100 during a run of 0.2 s items). Only where Python's own handler is
    in place, in the main thread (where Python runs handlers); a handler of the caller's is
    left alone. About 5 us (two ``sigaction`` calls).
    """

    __slots__ = ("caught", "held")

    def __enter__(self) -> None:
        self.caught = self.held = False
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, self._catch)
            self.held = old is signal.default_int_handler
            if not self.held:
                signal.signal(signal.SIGINT, old)
                if self.caught:  # arrived between the two calls: the caller's handler gets it
                    signal.raise_signal(signal.SIGINT)

    def _catch(self, signum: int, frame: Any) -> None:
        self.caught = True

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.caught:
                raise KeyboardInterrupt


def executor_kind(pool: Executor) -> str:
    if isinstance(pool, SerialExecutor):
        return "serial"
    if isinstance(pool, ThreadPoolExecutor):
        return "thread"
    if isinstance(pool, DaskExecutor):
        return "dask"
    return "process"  # ProcessPoolExecutor, or any other executor that needs pickled work


def pool_size(pool: Executor) -> int:
    return int(getattr(pool, "_max_workers", 1) or 1)


def make_executor(
    kind: str, n_jobs: int, *, start_method: str | None = None, blas_threads: int | None = None, one_run: bool = False
) -> Executor:
    """A pool of ``kind``; ``one_run``: it lives for one run, and a process pool holds the
    caller's BLAS cap until it shuts down (see :func:`make_process_pool`)."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="autopar")
    if kind == "process":
        blas = blas_threads if blas_threads is not None else blas_share(n_jobs)
        return make_process_pool(n_jobs, start_method or default_start_method(), blas, hold=one_run)
    raise ValueError(f"executor kind must be 'serial', 'thread' or 'process', got {kind!r}")


@contextmanager
def get_executor(
    kind: "str | OptimizationResult" = "auto",
    n_jobs: int | None = None,
    *,
    start_method: str | None = None,
    blas_threads: int | None = None,
) -> Iterator[Executor]:
    """A pool to use in a ``with`` block; every worker is gone when the block ends.

    Parameters
    ----------
    kind
        ``"serial"``, ``"thread"``, ``"process"``, or an :class:`OptimizationResult` whose
        choice (executor type and n_jobs) is used. ``"auto"`` needs a result: pass the one
        :func:`autopar.optimize` returned.
    n_jobs
        Workers (default: usable cores). ``-1`` also means all usable cores.
    start_method
        For process pools: ``"fork"``, ``"spawn"`` or ``"forkserver"``.
    blas_threads
        BLAS threads per process worker (default: usable cores // n_jobs, at least 1).

    The yielded executor works with :func:`autopar.execute` (``pool=``) and on its own.
    """
    from ..options import check_pool_args
    from ..tune.result import OptimizationResult

    if isinstance(kind, OptimizationResult):
        n_jobs = n_jobs or kind.n_jobs
        start_method = start_method or kind.start_method
        kind = kind.executor_type
    if kind == "auto":
        raise ValueError(
            "get_executor('auto') needs the result of optimize(): get_executor(optimize(func, data))"
        )
    _, n_jobs = check_pool_args(kind, n_jobs, start_method)
    pool = make_executor(kind, n_jobs or usable_cores(), start_method=start_method, blas_threads=blas_threads)
    ok = False
    try:
        yield pool
        ok = True
    finally:
        if ok:  # like a concurrent.futures executor: a normal exit runs what was submitted
            pool.shutdown(wait=True)
        else:  # an exception or Ctrl-C: queued work is cancelled, workers are stopped
            terminate(pool)
