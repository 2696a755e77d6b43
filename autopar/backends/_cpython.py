"""CPython's ``concurrent.futures`` internals: the one module of autopar that reads them.

What the standard library gives no public way to do: tell a pool's size (a pool the caller
made), list a process pool's worker processes (to tell later how one ended), see that a pool
is broken before a submit says so, and take down a killed pool's manager thread, queue feeder
thread and pipes before returning (``shutdown(wait=False)`` leaves them to the garbage
collector). Where a public path exists it is taken: ``terminate_workers()`` (3.14 on).

Each use names the versions whose source it was checked against: ``concurrent/futures``
(``process.py``, ``thread.py``) of 3.10.13, 3.11.7, 3.12.1 and 3.13.0, and of 3.14 as
CPython's main branch has it (the stored copy carries 3.14's ``terminate_workers()`` /
``kill_workers()``; the attributes read here are set and dropped where 3.13 sets and drops
them); ``multiprocessing/queues.py`` of 3.10.13-3.13.0 (3.14's was not at hand: marked so).

Only reads, and ``shutdown()``: nothing here feeds a pool's queue or writes a Future's state.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["PoolInternals", "is_broken", "max_workers", "pool_internals", "release_queues", "spare_reader", "stop_workers", "worker_processes"]


def max_workers(pool: Executor) -> int:
    """The worker count of a pool the caller made (autopar keeps its own record for the pools
    it makes); 1 for an executor without one."""
    # ThreadPoolExecutor._max_workers and ProcessPoolExecutor._max_workers: set in __init__,
    # never changed after (3.10-3.14). No public reader.
    return int(getattr(pool, "_max_workers", 1) or 1)


def worker_processes(pool: Executor) -> dict[int, Any]:
    """The process pool's pid -> Process map as it is now (empty for other executors)."""
    # ProcessPoolExecutor._processes: a dict pid -> Process, empty until the first submit
    # starts workers, set to None by shutdown() (3.10-3.14).
    procs = getattr(pool, "_processes", None)
    return dict(procs) if isinstance(procs, dict) else {}


def is_broken(pool: Executor) -> bool:
    """The pool's manager thread found a worker dead and marked the pool broken."""
    # ProcessPoolExecutor._broken: False, or the message the manager thread sets in
    # terminate_broken() (3.10-3.14); submit() raises BrokenProcessPool with it.
    return bool(getattr(pool, "_broken", False))


@dataclass(frozen=True)
class PoolInternals:
    """What a process pool's ``shutdown()`` lets go of: taken first, so that they are joined
    and closed by :func:`autopar.backends.process.terminate` rather than left to the garbage
    collector. All None for other executors, and for a pool shut down already."""

    manager: Any  # threading.Thread | None
    call_queue: Any  # multiprocessing.Queue | None
    result_queue: Any  # multiprocessing.SimpleQueue | None


def pool_internals(pool: Executor) -> PoolInternals:
    # ProcessPoolExecutor._executor_manager_thread (None until the first submit),
    # ._call_queue (a multiprocessing.Queue subclass) and ._result_queue (a SimpleQueue):
    # set in __init__, each set to None by shutdown() (3.10-3.14).
    return PoolInternals(
        getattr(pool, "_executor_manager_thread", None),
        getattr(pool, "_call_queue", None),
        getattr(pool, "_result_queue", None),
    )


def stop_workers(pool: Executor, processes: list[Any]) -> None:
    """Shut the pool down without waiting, its queued work cancelled, and send SIGTERM to each
    of ``processes`` (its workers, listed before: shutdown() lets go of them) still alive."""
    if isinstance(pool, ProcessPoolExecutor):
        terminate = getattr(pool, "terminate_workers", None)
        if terminate is not None:
            # 3.14 on, public: shutdown(wait=False, cancel_futures=True), then terminate() on
            # each worker still alive, the ones in _processes before the shutdown: the same
            # processes as ``processes`` (read just before, as 3.14 reads them).
            terminate()
            return
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()


def spare_reader(call_queue: Any) -> int | None:
    """A descriptor of the call queue's pipe of the caller's own, to read from (no other
    thread closes it), or None."""
    # multiprocessing.Queue._reader: the read end of the queue's pipe, set in __init__ and
    # __setstate__ (3.10-3.13; 3.14 not checked). No public reader.
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
    """Close what a killed pool's queues still hold open (its manager thread has ended, and
    with it every other user of them)."""
    if call_queue is not None:
        call_queue.close()  # (no more puts; its feeder thread ends after what it holds)
        # multiprocessing.Queue._thread: the feeder thread, None until the first put; ._reader
        # and ._writer: the pipe's ends (3.10-3.13; 3.14 not checked). close() only asks the
        # feeder to close them once its buffer is written, which a feeder blocked writing to
        # workers that are gone never is.
        feeder = getattr(call_queue, "_thread", None)
        if feeder is not None:
            feeder.join(timeout=5)
        if feeder is None or not feeder.is_alive():
            _close(getattr(call_queue, "_reader", None))
            _close(getattr(call_queue, "_writer", None))
    if result_queue is not None:
        result_queue.close()
