"""Process pools: the one place they are made (:func:`make_process_pool`: BLAS threads capped in
each worker; ``tracked``: :mod:`.slots`), stopped (:func:`terminate`: workers killed, no
feeder thread left behind) and asked how a worker ended (:func:`how_it_ended`); and
:class:`ProcessBackend`, how a run sends chunks (items pickled in the caller, the function as
cloudpickle bytes under a key).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator

from .. import _serialize
from ..tune.system import threaded_blas_loaded
from . import _cpython
from ._cpython import worker_processes
from .base import CAPABILITIES
from .blas import hold_cap
from .slots import Slots, kill_worker, take_slot
from .worker import run_remote

__all__ = ["ProcessBackend", "ProcessPool", "Unsendable", "forks_first", "how_it_ended", "kill_worker", "make_process_pool",
           "terminate", "worker_processes"]

MANAGER_GRACE = 10.0  # seconds a killed pool's manager thread gets to clean up
TERM_WAIT = 1.0  # seconds a stopped pool's workers get to end on SIGTERM before SIGKILL

_BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS")


def _init_process_worker(blas_threads: int, cap_loaded: bool, table: Any = None, lock: Any = None) -> None:
    """Process worker start: BLAS threads capped (``cap_loaded``: libraries loaded already too,
    never in a forked worker), the garbage collector kept off the heap a forked worker
    inherits, and a slot taken in a tracked pool's ``table``."""
    gc.freeze()
    if table is not None:
        take_slot(table, lock)
    for name in _BLAS_ENV:
        os.environ[name] = str(blas_threads)  # libraries loaded later read these
    if cap_loaded:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=blas_threads)


def _nothing() -> None:
    return None


class ProcessPool(ProcessPoolExecutor):
    """A process pool made here: it can put the caller's BLAS setting back when it shuts
    down; ``slots`` (a tracked pool): which item each worker runs."""

    _release: Callable[[], None] | None = None
    slots: Slots | None = None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            super().shutdown(wait=wait, cancel_futures=cancel_futures)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def make_process_pool(n_jobs: int, start_method: str, blas_threads: int, hold: bool = False, tracked: bool = False) -> ProcessPool:
    """A process pool whose workers run at most ``blas_threads`` BLAS threads each. Forked ones
    inherit the cap from the caller, which holds it while it forks them all (``hold``: until the
    pool shuts down); others cap themselves. ``tracked``: ``pool.slots`` (:mod:`.slots`)."""
    ctx = mp.get_context(start_method)
    forked = start_method == "fork"
    slots = Slots(ctx, n_jobs) if tracked else None
    shared = (slots.table, slots.lock) if slots is not None else ()
    pool = ProcessPool(
        max_workers=n_jobs, mp_context=ctx, initializer=_init_process_worker, initargs=(blas_threads, not forked, *shared)
    )
    pool.slots = slots
    deferred = getattr(_forks, "pools", None)
    blas = forked and threaded_blas_loaded()
    if blas or (forked and deferred is not None):
        release = hold_cap(blas_threads) if blas else None
        try:
            if deferred is not None and _cpython.launch_workers(pool):
                deferred.append(pool)  # its manager thread starts when the block ends
            else:
                pool.submit(_nothing)  # with fork, the first submit starts every worker
        except BaseException:
            if release is not None:
                release()
            raise
        if release is not None and hold:
            pool._release = release
        elif release is not None:
            release()
    return pool


_forks = threading.local()


@contextmanager
def forks_first() -> Iterator[None]:
    """Within the block, each ``fork`` process pool made forks all its workers at once and
    starts no thread (its manager thread starts when the block ends): several pools made in
    the block fork beside none of each other's threads (Python 3.12 on warns of a fork in a
    process with threads: the child may inherit a lock some thread held)."""
    if getattr(_forks, "pools", None) is not None:  # (nested: the outer block starts them)
        yield
        return
    _forks.pools = pools = []
    try:
        yield
    finally:
        _forks.pools = None
        for pool in pools:
            try:
                pool.submit(_nothing)
            except Exception:  # (a worker died meanwhile: the pool's user finds it broken, and stops it)
                pass


def terminate(pool: Executor) -> None:
    """Stop a pool now: cancel queued work and, for a process pool, kill its workers; when it
    returns, the pool's manager thread, feeder thread and pipes are gone. A thread pool is shut
    down without waiting."""
    processes = list(worker_processes(pool).values())
    inner = _cpython.pool_internals(pool)  # before the shutdown lets go of them
    manager = inner.manager
    own = manager is not None and manager is not threading.current_thread()
    # (The manager thread of a pool already broken closes the pipe's read end itself, except
    # on Python 3.10: a duplicate taken meanwhile could be of another file's descriptor.)
    calm = not _cpython.is_broken(pool) or sys.version_info < (3, 11)
    spare = _cpython.spare_reader(inner.call_queue) if processes and own and calm else None
    try:
        _cpython.stop_workers(pool, processes)
        if not processes:
            return  # a thread pool: a running call cannot be stopped, and is not waited for
        # SIGTERM gets TERM_WAIT seconds in all, then SIGKILL (a worker whose item blocks or
        # ignores SIGTERM held a stuck run 5 s a worker when each had a wait of its own).
        deadline = time.monotonic() + TERM_WAIT
        for proc in processes:
            proc.join(timeout=max(deadline - time.monotonic(), 0.0))
        for proc in processes:
            if proc.is_alive():  # (3.14's kill_workers() cannot follow: the shutdown let go of them)
                proc.kill()
                proc.join(timeout=5)
        if own:
            _wait_for_manager(manager, spare)
    finally:
        if spare is not None:
            os.close(spare)
    if manager is None or not manager.is_alive():
        _cpython.release_queues(inner.call_queue, inner.result_queue)


def _wait_for_manager(manager: threading.Thread, spare: int | None) -> None:
    """Until the killed pool's manager thread ends, what its feeder thread writes to the workers
    that are gone read here (``spare``) and dropped, so that it cannot block."""
    deadline = time.monotonic() + MANAGER_GRACE
    while manager.is_alive() and time.monotonic() < deadline:
        manager.join(timeout=0.005)
        while spare is not None and select.select([spare], [], [], 0)[0]:
            if not os.read(spare, 1 << 16):
                spare = None  # no writer left


def how_it_ended(processes: dict[int, Any]) -> str:
    """What became of the workers that did not end by the pool's own terminate()."""
    from multiprocessing.connection import wait as wait_sentinels

    # (The pool's manager thread reaps dead workers too: then the exit code shows a moment later.)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        dead = [p for p in processes.values() if wait_sentinels([p.sentinel], 0)]
        if all(p.exitcode is not None for p in dead):
            break
        time.sleep(0.02)
    ends = []
    for pid, proc in processes.items():
        code = proc.exitcode
        if code is None or code == -signal.SIGTERM or code == 0:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            ends.append(f"worker {pid} was killed by {name}")
        else:
            ends.append(f"worker {pid} exited with status {code}")
    return "; ".join(ends) or "a worker process ended abruptly"


class Unsendable(Exception):
    """A chunk that cannot be pickled: ``index`` is the first item that cannot, ``error`` a
    TypeError naming it."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index, self.error = index, error


class ProcessBackend:
    """Chunks to a process pool and back (a :class:`~.base.Backend`); a given pool is borrowed."""

    kind = "process"
    caps = CAPABILITIES["process"]

    def __init__(self, func: Callable[[Any], Any], make_pool: Callable[[], Executor], pool: Executor | None, transport: str,
                 collect: bool, timeout: float | None) -> None:
        try:
            self.blob = _serialize.dumps(func, _serialize.CLOUDPICKLE)
        except Exception as exc:
            raise TypeError(
                f"the function cannot be sent to a process worker ({type(exc).__name__}: {exc}); "
                "use executor_type='thread' or 'serial', or optimize(), which rules processes out"
            ) from exc
        self._make, self.owned = make_pool, pool is None
        self.ex = pool if pool is not None else make_pool()
        self.transport, self.collect, self.timeout = transport, collect, timeout
        self.key = uuid.uuid4().hex
        share = getattr(self.ex, "share", None)  # a Dask cluster: a large function goes there once
        self.sent_blob = share(self.blob) if share is not None else self.blob
        self.processes: dict[int, Any] = {}
        self.warm = False  # a chunk came back from this pool: its workers are up (see recovery.WORKER_STARTUP)

    def encode(self, start: int, items: list[Any]) -> bytes:
        try:
            return _serialize.dumps(items, self.transport)
        except Exception as exc:
            raise self._unsendable(start, items, exc) from None

    def _unsendable(self, start: int, items: list[Any], exc: Exception) -> Unsendable:
        for i, item in enumerate(items):
            try:
                _serialize.dumps(item, self.transport)
            except Exception as item_exc:
                error = TypeError(
                    f"item {start + i} cannot be sent to a process worker ({type(item_exc).__name__}: {item_exc})"
                )
                error.__cause__ = item_exc
                return Unsendable(start + i, error)
        # each item pickles alone, the chunk does not (shared state): name the chunk
        error = TypeError(f"items {start}-{start + len(items) - 1} cannot be sent to a process worker ({exc})")
        error.__cause__ = exc
        return Unsendable(start, error)

    def submit(self, start: int, items: list[Any]) -> Future:
        """Send a chunk; raises :class:`Unsendable` when its items do not pickle."""
        payload = self.encode(start, items)
        fut = self.ex.submit(run_remote, self.key, self.sent_blob, start, payload, self.transport, self.collect, self.timeout)
        procs = worker_processes(self.ex)
        if len(procs) != len(self.processes):
            self.processes.update(procs)  # kept to tell how a worker ended if the pool breaks
        return fut

    def decode(self, values: Any) -> list[Any]:
        self.warm = True
        return _serialize.loads(values) if self.transport == _serialize.CLOUDPICKLE else values

    @staticmethod
    def is_broken(exc: BaseException | None) -> bool:
        return isinstance(exc, BrokenProcessPool)

    def pool_broken(self) -> bool:
        """The pool broke (a worker died), as its manager thread marks it before failing the futures."""
        return _cpython.is_broken(self.ex)

    def how_it_ended(self) -> str:
        # A broken pool's manager thread terminates and joins every worker: a forkserver
        # worker's exit status read from two threads at once reads 255 in one of them, and
        # may be kept so (3.13: "exited with status 255" for a worker killed by SIGKILL, one
        # run of the suite). Its end first, for a moment at most.
        manager = _cpython.pool_internals(self.ex).manager if self.ex is not None else None
        if manager is not None and manager is not threading.current_thread() and _cpython.is_broken(self.ex):
            manager.join(timeout=1.0)
        return how_it_ended(self.processes)

    def stop(self, where: Any) -> bool:
        """Kill the worker ``where`` (a pid) of this pool: it breaks, and the run replaces it."""
        if where not in self.processes and where not in worker_processes(self.ex):
            return False
        kill_worker(where)
        return True

    def replace(self) -> None:
        """Kill this pool and start a fresh one (a new key: the workers are new)."""
        terminate(self.ex)
        self.ex = self._make()
        self.processes = {}
        self.key = uuid.uuid4().hex
        self.warm = False

    def close(self, clean: bool) -> None:
        if self.owned:
            if clean:
                self.ex.shutdown(wait=True)
            else:
                terminate(self.ex)
        self.processes = {}  # (their pipe ends go now, not with a failed run's traceback)
