"""CPython's ``concurrent.futures`` internals: the one module of autopar that reads them, for what
the standard library gives no public way to do (a caller's pool's size, a process pool's
workers, a pool found broken before a submit says so, a killed pool's manager thread, feeder
thread and pipes taken down before returning). Where a public path exists it is taken:
``terminate_workers()`` (3.14 on).

Each use names the versions whose source it was checked against: ``concurrent/futures`` of
3.10.13, 3.11.7, 3.12.1, 3.13.0 and 3.14 (CPython's main branch); ``multiprocessing/queues.py``
of 3.10.13-3.13.0 (3.14 not checked: marked so). Only reads, and ``shutdown()``: nothing here
feeds a pool's queue or writes a Future's state.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["PoolInternals", "is_broken", "launch_workers", "max_workers", "pool_internals", "release_queues", "spare_reader", "stop_workers", "worker_processes"]


def max_workers(pool: Executor) -> int:
    """The worker count of a pool the caller made; 1 for an executor without one."""
    # Thread/ProcessPoolExecutor._max_workers: set in __init__, never changed (3.10-3.14).
    return int(getattr(pool, "_max_workers", 1) or 1)


def worker_processes(pool: Executor) -> dict[int, Any]:
    """The process pool's pid -> Process map as it is now (empty for other executors)."""
    # ProcessPoolExecutor._processes: pid -> Process, empty until the first submit, None
    # after shutdown() (3.10-3.14).
    procs = getattr(pool, "_processes", None)
    return dict(procs) if isinstance(procs, dict) else {}


def launch_workers(pool: Executor) -> bool:
    """Fork every worker of a ``fork`` process pool now, without the manager thread its first
    submit starts: pools made one after another then fork beside no thread of theirs. False
    where nothing was forked (not such a pool, or its manager thread runs already)."""
    # ProcessPoolExecutor._launch_processes(): forks workers up to _max_workers and asserts no
    # _executor_manager_thread yet; the first submit's _start_executor_manager_thread() calls
    # it again (nothing left to fork) and starts the thread (3.10.13-3.13.0 and 3.14, CPython's
    # main branch; without the method the first submit forks them, as before).
    launch = getattr(pool, "_launch_processes", None)
    if launch is None or getattr(pool, "_safe_to_dynamically_spawn_children", True):
        return False
    if getattr(pool, "_executor_manager_thread", None) is not None:
        return False
    launch()
    return True


def is_broken(pool: Executor) -> bool:
    """The pool's manager thread found a worker dead and marked the pool broken."""
    # ProcessPoolExecutor._broken: False, or the message terminate_broken() sets (3.10-3.14).
    return bool(getattr(pool, "_broken", False))


@dataclass(frozen=True)
class PoolInternals:
    """What a process pool's ``shutdown()`` lets go of, taken first to be joined and closed by
    :func:`autopar.backends.process.terminate` (all None for other executors, or once shut down)."""

    manager: Any  # threading.Thread | None
    call_queue: Any  # multiprocessing.Queue | None
    result_queue: Any  # multiprocessing.SimpleQueue | None


def pool_internals(pool: Executor) -> PoolInternals:
    # ProcessPoolExecutor._executor_manager_thread (None until the first submit), ._call_queue,
    # ._result_queue: set in __init__, each set to None by shutdown() (3.10-3.14).
    return PoolInternals(
        getattr(pool, "_executor_manager_thread", None),
        getattr(pool, "_call_queue", None),
        getattr(pool, "_result_queue", None),
    )


def stop_workers(pool: Executor, processes: list[Any]) -> None:
    """Shut the pool down now, queued work cancelled; SIGTERM to each of ``processes`` (its
    workers, listed before: shutdown() lets go of them) still alive."""
    if isinstance(pool, ProcessPoolExecutor):
        terminate = getattr(pool, "terminate_workers", None)
        if terminate is not None:
            # 3.14 on, public: shutdown(wait=False, cancel_futures=True), then terminate() on
            # each worker still alive: the same ones as ``processes`` (3.14).
            terminate()
            return
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()


def spare_reader(call_queue: Any) -> int | None:
    """A descriptor of the call queue's pipe of the caller's own to read from, or None."""
    # multiprocessing.Queue._reader: the pipe's read end (3.10-3.13; 3.14 not checked).
    reader = getattr(call_queue, "_reader", None)
    try:
        return os.dup(reader.fileno()) if reader is not None and not reader.closed else None
    except (OSError, ValueError):
        return None


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except OSError:
            pass


def release_queues(call_queue: Any, result_queue: Any) -> None:
    """Close what a killed pool's queues hold open (its manager thread, their last user, has ended)."""
    if call_queue is not None:
        call_queue.close()
        # multiprocessing.Queue._thread (the feeder, None until the first put), ._reader and
        # ._writer (3.10-3.13; 3.14 not checked): a feeder blocked on dead workers never closes them.
        feeder = getattr(call_queue, "_thread", None)
        if feeder is not None:
            feeder.join(timeout=5)
        if feeder is None or not feeder.is_alive():
            _close(getattr(call_queue, "_reader", None))
            _close(getattr(call_queue, "_writer", None))
    if result_queue is not None:
        result_queue.close()
