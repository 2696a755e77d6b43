"""Process pools: the one place they are made (:func:`make_process_pool`), stopped
(:func:`terminate`) and asked how a worker ended (:func:`how_it_ended`); CPython's
internals they need are read in :mod:`._cpython`, nowhere else.

What it adds to ``concurrent.futures``: BLAS threads capped in each worker (so workers x
BLAS threads fit the cores), :func:`terminate` (kill the workers now, leaving no feeder
thread behind), :func:`worker_processes` (the pool's Process objects, kept to tell later how
a worker ended), :func:`how_it_ended`, and, for a tracked pool, which item each worker runs
(:mod:`.slots`: one running item stopped by killing its worker). :class:`ProcessBackend` is
how a run (execute()'s, a pipeline's process stage) sends chunks: items pickled in the
caller (an item that cannot be sent is named before the pool sees it), the function as
cloudpickle bytes under a key, results decoded on the way back. The Manager's process lane
makes its pools here too (tracked), and runs its calls by :func:`.worker.run_call`.
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
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from .. import _serialize
from ..tune.system import threaded_blas_loaded
from . import _cpython
from ._cpython import worker_processes
from .base import CAPABILITIES
from .blas import hold_cap
from .slots import Slots, kill_worker, take_slot
from .worker import run_remote

__all__ = [
    "ProcessBackend", "ProcessPool", "Unsendable", "how_it_ended", "kill_worker", "make_process_pool", "terminate",
    "worker_processes",
]

MANAGER_GRACE = 10.0  # seconds a killed pool's manager thread gets to clean up

_BLAS_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _init_process_worker(blas_threads: int, cap_loaded: bool, table: Any = None, lock: Any = None) -> None:
    """Process worker start: cap BLAS threads so workers x BLAS threads fit the cores, and
    keep the garbage collector off the heap a forked worker inherits.

    Without ``gc.freeze()`` every full collection in the worker walks (and, by touching
    their headers, copies) all the parent's objects: JSON round trips of 100 KB dicts ran
    at half speed in forked workers while the parent held 600 of them.

    ``cap_loaded`` caps libraries already loaded here; a forked worker never does (see
    :func:`make_process_pool`): capping OpenBLAS in a child starts its threads, which spin
    for about 0.1 s, a core's worth taken from the items at every pool start. ``table``: a
    tracked pool's slots (:mod:`.slots`), where the worker takes one."""
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
    """A process pool whose workers run at most ``blas_threads`` BLAS threads each.

    Forked workers inherit the cap from the caller: with a threaded BLAS loaded, the caller
    caps its own pool and forks every worker (the first submit forks them all). Capping
    OpenBLAS in a forked child instead starts its threads there, which spin for about 0.1 s:
    a pure-Python job of 49 items of 3 ms on 2 workers took 0.14 s that way, 0.088 s as a
    bare ProcessPoolExecutor. Lifting the caller's cap restarts its pool (a fork stops it),
    and those threads spin too: with ``hold`` (a pool that lives for one run) the cap is
    held until the pool shuts down, so that happens after the run; without it (a pool the
    caller keeps) at once. Spawned and forkserver workers cap themselves at start (their
    libraries load later and read the environment). ``tracked``: the workers say which item
    each runs (:mod:`.slots`, ``pool.slots``)."""
    ctx = mp.get_context(start_method)
    forked = start_method == "fork"
    slots = Slots(ctx, n_jobs) if tracked else None
    shared = (slots.table, slots.lock) if slots is not None else ()
    pool = ProcessPool(
        max_workers=n_jobs, mp_context=ctx, initializer=_init_process_worker, initargs=(blas_threads, not forked, *shared)
    )
    pool.slots = slots
    if forked and threaded_blas_loaded():
        release = hold_cap(blas_threads)
        try:
            pool.submit(_nothing)  # with fork, the first submit starts every worker
        except BaseException:
            release()
            raise
        if hold:
            pool._release = release
        else:
            release()
    return pool


def terminate(pool: Executor) -> None:
    """Stop a pool now: cancel queued work and, for a process pool, kill its workers; when
    it returns, the pool's manager thread, its queue feeder thread and their pipes are gone.

    A thread pool is shut down without waiting: its threads end when their current call
    returns."""
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
        for proc in processes:
            proc.join(timeout=5)
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
    """Until the killed pool's manager thread ends: it fails the pool's futures, closes the
    call queue and waits for its feeder thread. That thread may be blocked writing to the
    workers that are gone (Python 3.10 never unblocks it, and the spare descriptor keeps the
    pipe readable on later versions): what it writes is read here and dropped."""
    deadline = time.monotonic() + MANAGER_GRACE
    while manager.is_alive() and time.monotonic() < deadline:
        manager.join(timeout=0.005)
        while spare is not None and select.select([spare], [], [], 0)[0]:
            if not os.read(spare, 1 << 16):
                spare = None  # no writer left


def how_it_ended(processes: dict[int, Any]) -> str:
    """What became of the workers that did not end by the pool's own terminate()."""
    from multiprocessing.connection import wait as wait_sentinels

    # The pool's manager thread reaps dead workers too; when it wins that race, the exit code
    # shows up on the Process a moment later. Give it up to a second.
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
    """Chunks to a process pool and back (a :class:`~.base.Backend`). Owns the pool it
    makes; a given pool is borrowed."""

    kind = "process"
    caps = CAPABILITIES["process"]

    def __init__(
        self,
        func: Callable[[Any], Any],
        make_pool: Callable[[], Executor],
        pool: Executor | None,
        transport: str,
        collect: bool,
        timeout: float | None,
    ) -> None:
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
        return _serialize.loads(values) if self.transport == _serialize.CLOUDPICKLE else values

    @staticmethod
    def is_broken(exc: BaseException | None) -> bool:
        return isinstance(exc, BrokenProcessPool)

    def pool_broken(self) -> bool:
        """The pool broke (a worker died), as its manager thread marks it before it fails
        the futures."""
        return _cpython.is_broken(self.ex)

    def how_it_ended(self) -> str:
        return how_it_ended(self.processes)

    def stop(self, where: Any) -> bool:
        """Kill the worker ``where`` (a pid) of this backend's pool: the pool breaks, and
        the run replaces it (:meth:`replace`)."""
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

    def close(self, clean: bool) -> None:
        if self.owned:
            if clean:
                self.ex.shutdown(wait=True)
            else:
                terminate(self.ex)
        # Each worker's Process holds two pipe ends until it goes: a failed run's traceback
        # keeps this backend, and a cycle through it would keep them until a full collection.
        self.processes = {}
