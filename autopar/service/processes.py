"""The process lane: calls in the worker processes of a tracked pool
(:func:`autopar.backends.process.make_process_pool`), run by
:func:`autopar.backends.worker.run_call`, a call's time limit kept in its worker (SIGALRM). A
running call is stopped by killing its worker (one stuck in C past its limit + GRACE too); the
pool is then replaced and the other calls in it run again, a crash blamed on its own call only.

Start method: the manager's, but forkserver for a pool made while this process runs other
threads (a fork copies their locks as they are): a manager that would fork forks its first
pool's workers as it is made, before any thread of its own starts (``prestart``); a pool
replacing a broken one is made by forkserver.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from .._serialize import loads
from ..backends.process import how_it_ended, make_process_pool, terminate, worker_processes
from ..backends.slots import Slots
from ..backends.worker import run_call
from ..errors import WorkerDied
from ..tune.costs import pool_costs
from .calls import GRACE, Call, NoProcesses, Outcome, name_of

__all__ = ["ProcessLane"]

MAX_REPLAYS = 3  # times a call runs again because a pool broke under it (not by its own doing)


class _Pool:
    """One generation of the lane's process pool (tracked: its slots say which call each worker
    runs), and the calls running in it."""

    def __init__(self, workers: int, start_method: str, blas_threads: int) -> None:
        self.method = start_method
        self.executor = make_process_pool(workers, start_method, blas_threads, tracked=True)
        self.slots: Slots = self.executor.slots  # type: ignore[assignment]
        self.calls: dict[int, Call] = {}  # running in this generation, by id
        self.broken = False
        self.killed = False  # broken by the lane itself, to stop a call
        self.culprits: set[int] = set()  # calls whose worker died under them
        self.processes: dict[int, Any] = {}  # its workers, as they were when it broke
        self.ended: dict[int, str] = {}  # call id -> how the worker that died under it ended


def _noop() -> None:
    return None


class ProcessLane:
    """Calls on a process pool that can stop one running call, and outlives a broken pool."""

    kind = "process"

    def __init__(self, workers: int, start_method: str, blas_threads: int, finish: Callable[[Call, Outcome], None], timer: Any) -> None:
        self.workers, self.start_method, self.blas_threads = workers, start_method, blas_threads
        self.finish, self.timer = finish, timer
        self._lock = threading.RLock()
        self._pool: _Pool | None = None
        self.replaced = 0  # pools replaced after a kill or a crash
        self.closed = False
        self.served = False  # a worker process has answered a call
        self.unusable: str | None = None  # why processes cannot be had here

    def _current(self) -> _Pool:
        with self._lock:
            if self.closed:
                raise RuntimeError("the manager is shut down")
            if self._pool is None or self._pool.broken:
                self._pool = _Pool(self.workers, self._next_method(), self.blas_threads)
            return self._pool

    def _next_method(self) -> str:
        """The manager's start method, but forkserver for fork while this process runs another thread."""
        if self.start_method == "fork" and threading.active_count() > 1:
            return "forkserver"
        return self.start_method

    def method(self) -> str:
        """The start method of the pool calls run in: the current one's, or the next one's."""
        pool = self._pool
        return pool.method if pool is not None and not pool.broken else self._next_method()

    def executor(self) -> ProcessPoolExecutor:
        """The current pool (made if there is none): a map from ``execute()`` runs on it."""
        return self._current().executor

    def prestart(self) -> None:
        """Fork the pool's workers now if the pool would be forked (a first submit forks them all),
        before the manager starts a thread; the fork pool costs a map's optimize() reads are
        measured first (measuring forks pools too). Where that fails, the first call says why."""
        if self._pool is not None or self._next_method() != "fork":
            return
        try:
            pool_costs("fork")
        except Exception:
            pass
        if self._next_method() != "fork":  # a thread the measuring left running
            return
        try:
            self._current().executor.submit(_noop)
        except Exception:
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                terminate(pool.executor)

    def pids(self) -> list[int]:
        """The current pool's worker processes."""
        pool = self._pool
        return [] if pool is None else pool.slots.pids()

    def warm(self) -> None:
        """Start every worker now (the first call would otherwise pay for it)."""
        pool = self._current()
        for f in [pool.executor.submit(_noop) for _ in range(self.workers)]:
            f.result()

    def send(self, call: Call, payload: bytes) -> None:
        """Submit the call; :class:`NoProcesses` if no worker process can be started here."""
        key, blob = call.route.blob()
        attempt = call.attempt
        # from now, waiting or not (as on threads): one deadline for the alarm and the kill
        deadline = None if call.timeout is None else time.monotonic() + call.timeout
        with self._lock:
            if self.unusable:
                raise NoProcesses(self.unusable)
            for _ in range(2):  # a pool found broken at submit (a worker died just now): a new one
                pool = None
                try:
                    pool = self._current()
                    fut = pool.executor.submit(run_call, call.id, key, blob, payload, deadline)
                    break
                except BrokenProcessPool:
                    if pool is not None:
                        self._pool_broke(pool)
                except (OSError, ImportError, NotImplementedError) as exc:
                    if pool is not None:
                        self._pool_broke(pool)
                    if self.served:
                        raise  # they worked before: this call fails, the lane stays
                    self.unusable = f"process workers cannot be started here ({type(exc).__name__}: {exc})"
                    raise NoProcesses(self.unusable) from exc
            else:
                raise WorkerDied(f"{name_of(call)}: the process pool broke as the call was sent, twice")
            pool.calls[call.id] = call
            call.where = pool
        if call.timeout is not None:
            self.timer.call_later(call.timeout + GRACE, lambda: self.stop(call, "timeout", now=True))
        fut.add_done_callback(lambda f: self._done(call, pool, payload, attempt, f))

    def _done(self, call: Call, pool: _Pool, payload: bytes, attempt: int, fut: Future) -> None:
        with self._lock:
            pool.calls.pop(call.id, None)
            if call.where is pool:
                call.where = None
        exc = fut.exception()
        if exc is None:
            self.served = True
            status, a, b, c = fut.result()
            if status == "ok":
                return self.finish(call, Outcome(loads(a), wall=b, cpu=c).of(attempt))
            if status == "expired":
                if call.stop_reason is None:
                    call.stop_reason = "timeout"
                return self.finish(call, Outcome(stopped=True, wall=b, cpu=c).of(attempt))
            a.__cause__ = _RemoteText(b)
            return self.finish(call, Outcome(exc=a, wall=c).of(attempt))
        if not isinstance(exc, BrokenProcessPool):
            return self.finish(call, Outcome(exc=exc).of(attempt))
        self._pool_broke(pool)
        if call.stop_reason is not None:
            return self.finish(call, Outcome(stopped=True).of(attempt))
        culprit = call.id in pool.culprits
        if not culprit and not self.served and self.replaced >= 2 and not pool.killed:
            self.unusable = f"worker processes die before serving a call ({how_it_ended(pool.processes)})"
            return self.finish(call, Outcome(exc=NoProcesses(self.unusable)).of(attempt))
        if culprit or call.replays >= MAX_REPLAYS or self.closed:
            why = "its worker process died while running it" if culprit else "the process pool broke under it"
            ended = pool.ended.get(call.id) or how_it_ended(pool.processes)
            return self.finish(call, Outcome(exc=WorkerDied(f"{name_of(call)}: {why} ({ended})")).of(attempt))
        call.replays += not pool.killed  # (a pool the lane killed to stop a call is no fault of this one)
        try:
            self.send(call, payload)
        except Exception as e:  # closed, no processes to be had (the manager moves it to threads), broken again
            self.finish(call, Outcome(exc=e).of(attempt))

    def _pool_broke(self, pool: _Pool) -> None:
        """The pool broke: which call each dead worker ran (read before the pool kills the rest);
        the pool is reaped in the background and the next call starts a new one."""
        with self._lock:
            if pool.broken:
                return
            pool.broken = True
            dead = pool.slots.dead(worker_processes(pool.executor))
            pool.culprits = {c for c in dead.values() if c}
            pool.processes = worker_processes(pool.executor)
            pool.ended = {c: how_it_ended({pid: pool.processes[pid]}) for pid, c in dead.items() if c and pid in pool.processes}
            self.replaced += 1
        threading.Thread(target=terminate, args=(pool.executor,), name="autopar-reap", daemon=True).start()

    def stop(self, call: Call, reason: str, now: bool = False) -> None:
        """Stop the call where it runs: its worker is killed (the pool breaks and is replaced). A
        call sent but not started is looked for again shortly (``now``: its worker finds it expired)."""
        with self._lock:
            pool = call.where
            if not isinstance(pool, _Pool) or call.id not in pool.calls:
                return
            if call.stop_reason is None:
                call.stop_reason = reason
            if pool.slots.kill(call.id):
                pool.killed = True
                return
        if not now:
            self.timer.call_later(0.05, lambda: self.stop(call, reason))

    def close(self, wait: bool) -> None:
        with self._lock:
            self.closed = True
            pool, self._pool = self._pool, None
        if pool is None:
            return
        if wait and not pool.broken:
            pool.executor.shutdown(wait=True)
        terminate(pool.executor)


class _RemoteText(Exception):
    """The worker's traceback text, chained to an exception raised in a process."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])

