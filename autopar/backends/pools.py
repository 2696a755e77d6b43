"""Pools and backends: building them (:func:`make_executor`, :func:`make_backend`; the public
:func:`autopar.get_executor` makes its pool here), their kind and size, and shutting them down."""

from __future__ import annotations

import signal
import threading
import weakref
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Callable

from ..tune.system import default_start_method
from . import _cpython
from .base import Backend
from .blas import blas_share
from .dask import DaskBackend, DaskExecutor
from .local import InlineBackend, SerialExecutor, ThreadBackend
from .process import ProcessBackend, make_process_pool, terminate
from .worker import limited

__all__ = ["SerialExecutor", "executor_kind", "make_backend", "make_executor", "pool_size", "sigint_deferred", "terminate"]


class sigint_deferred:
    """Ctrl-C held back until the block ends, then raised as KeyboardInterrupt: for calls into a
    pool's own locking code (``submit``), which an interrupt there can leave locked. Only in the
    main thread, where Python's own handler is in place; a handler of the caller's is left alone."""

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


_sizes: "weakref.WeakKeyDictionary[Executor, int]" = weakref.WeakKeyDictionary()


def pool_size(pool: Executor) -> int:
    """Workers of ``pool``: autopar's own record for a pool it made (no attribute of a pool is set
    or read), the pool's own figure (read by :mod:`._cpython`) for one the caller made."""
    if isinstance(pool, (SerialExecutor, DaskExecutor)):
        return pool.n_workers
    made = _sizes.get(pool)
    return made if made is not None else _cpython.max_workers(pool)


def make_executor(
    kind: str, n_jobs: int, *, start_method: str | None = None, blas_threads: int | None = None, one_run: bool = False
) -> Executor:
    """A pool of ``kind``; ``one_run``: it lives for one run, and a process pool holds the
    caller's BLAS cap until it shuts down (see :func:`make_process_pool`)."""
    pool: Executor
    if kind == "serial":
        return SerialExecutor()
    if kind == "thread":
        pool = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="autopar")
    elif kind == "process":
        blas = blas_threads if blas_threads is not None else blas_share(n_jobs)
        pool = make_process_pool(n_jobs, start_method or default_start_method(), blas, hold=one_run)
    else:
        raise ValueError(f"executor kind must be 'serial', 'thread' or 'process', got {kind!r}")
    _sizes[pool] = n_jobs
    return pool


def make_backend(
    kind: str, func: Callable[[Any], Any], n_jobs: int, *, pool: Executor | None = None, start_method: str | None = None,
    transport: str = "pickle", collect: bool = False, timeout: float | None = None, blas_threads: int | None = None,
    one_run: bool = True,
) -> Backend:
    """The backend of ``kind`` running ``func`` (under a per-item ``timeout`` where given):
    on ``pool`` (borrowed), or on a pool of ``n_jobs`` it makes (:func:`make_executor`:
    ``blas_threads`` each, its share by default; ``one_run``: it lives for one run)."""
    if kind == "serial":
        return InlineBackend(limited(func, timeout), collect)

    def make() -> Executor:
        return make_executor(kind, n_jobs, start_method=start_method, blas_threads=blas_threads, one_run=one_run)

    if kind == "thread":
        return ThreadBackend(limited(func, timeout), make, pool, collect)
    backend = DaskBackend if kind == "dask" else ProcessBackend
    return backend(func, make, pool, transport, collect, timeout)
