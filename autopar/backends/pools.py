"""Pools: building them, limiting BLAS threads in process workers, and shutting them down.

:func:`get_executor` is the public door: a context manager that yields a real
``concurrent.futures`` executor (thread or process pool, or an inline serial one) and leaves no
thread or process behind when the block ends, whatever way it ends.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..tune.system import default_start_method, usable_cores

if TYPE_CHECKING:
    from ..tune.result import OptimizationResult

__all__ = ["SerialExecutor", "get_executor", "executor_kind", "terminate"]

_BLAS_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class SerialExecutor(Executor):
    """Runs each task in the caller's thread when it is submitted."""

    _max_workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _init_process_worker(blas_threads: int) -> None:
    """Process worker start: cap BLAS threads so workers x BLAS threads fit the cores."""
    for name in _BLAS_ENV:
        os.environ[name] = str(blas_threads)  # libraries loaded later read these
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=blas_threads)  # libraries already loaded (fork)


def executor_kind(pool: Executor) -> str:
    if isinstance(pool, SerialExecutor):
        return "serial"
    if isinstance(pool, ThreadPoolExecutor):
        return "thread"
    return "process"  # ProcessPoolExecutor, or any other executor that needs pickled work


def pool_size(pool: Executor) -> int:
    return int(getattr(pool, "_max_workers", 1) or 1)


def make_executor(
    kind: str, n_jobs: int, *, start_method: str | None = None, blas_threads: int | None = None
) -> Executor:
    if kind == "serial":
        return SerialExecutor()
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="autopar")
    if kind == "process":
        ctx = mp.get_context(start_method or default_start_method())
        blas = blas_threads if blas_threads is not None else max(1, usable_cores() // n_jobs)
        return ProcessPoolExecutor(
            max_workers=n_jobs, mp_context=ctx, initializer=_init_process_worker, initargs=(blas,)
        )
    raise ValueError(f"executor kind must be 'serial', 'thread' or 'process', got {kind!r}")


def terminate(pool: Executor) -> None:
    """Stop a pool now: cancel queued work and, for a process pool, kill its workers.

    A thread pool is shut down without waiting: its threads end when their current call
    returns."""
    procs = getattr(pool, "_processes", None)  # ProcessPoolExecutor's pid -> Process map
    processes = list(procs.values()) if isinstance(procs, dict) else []
    pool.shutdown(wait=False, cancel_futures=True)
    if not processes:
        return  # a thread pool: a running call cannot be stopped, and is not waited for
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    pool.shutdown(wait=True)
    # The pool's call queue may still have its feeder thread waiting to write to workers that
    # are gone: with no reader left a write fails instead of blocking, and the thread ends.
    queue = getattr(pool, "_call_queue", None)
    if queue is not None:
        try:
            queue._reader.close()
        except (OSError, AttributeError):
            pass
        queue.close()
        feeder = getattr(queue, "_thread", None)
        if feeder is not None:
            feeder.join(timeout=5)


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
    from ..tune.optimize import check_pool_args
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
