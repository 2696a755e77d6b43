"""The process lane: calls in worker processes, and one running call stopped where it runs.

Every worker has a slot in a shared table (pid, call running, call to stop); the lane marks
the call to stop and sends SIGUSR1, whose handler raises in the call; a worker still on that
call a grace period later (stuck in C) is killed, and the pool is replaced: the other calls
that were in it run again in the new pool (the table says which call each dead worker ran,
so a crash is blamed on its own call only).

Start method: the manager's, except that a pool is never forked while this process runs
other threads (a fork copies their locks as they are; 3.12+ warns of it, and 3.14 made
forkserver the default on Linux for it): then the pool is made by forkserver. A manager that
would fork forks its first pool's workers as it is made, before any thread of its own starts
(``prestart``). Measured (medians of 5 runs, Manager(cpu_workers=2), 2 busy cores, 3.11):
``Manager()`` 24-32 ms, then the first CPU call 3.5-7 ms; by forkserver the first call took
563 ms (518-1188: the server's start, and each worker importing autopar); a fork at the
first call, as before, 28 ms (beside the manager's throttle thread). Before forking,
``prestart`` also makes sure the fork pool costs that map()'s optimize() reads are measured
(measuring forks pools): a file read where they are cached, 2.8 s the first time on a machine.
A pool replacing a broken one is made while the manager's threads run, so by forkserver.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from .._serialize import CLOUDPICKLE, dumps, loads
from ..backends.process import _init_process_worker, how_it_ended, terminate, worker_processes
from ..backends.worker import _get_func, _portable
from ..errors import WorkerDied
from ..tune.costs import pool_costs
from .calls import GRACE, Call, NoProcesses, Outcome, Stopped, name_of

__all__ = ["ProcessLane"]

MAX_REPLAYS = 3  # times a call runs again because a pool broke under it (not by its own doing)


# ---- the process lane: worker side ----------------------------------------------------------

_TABLE: Any = None  # (pid, call running, call to stop) per worker, shared with the manager
_SLOT = -1


def _worker_init(table: Any, lock: Any, blas_threads: int, cap_loaded: bool) -> None:
    global _TABLE, _SLOT
    _init_process_worker(blas_threads, cap_loaded)
    _TABLE = table
    with lock:
        for s in range(0, len(table), 3):
            if table[s] == 0:
                table[s] = os.getpid()
                _SLOT = s
                break
    signal.signal(signal.SIGUSR1, _on_stop)


def _on_stop(signum: int, frame: Any) -> None:
    if _SLOT >= 0 and _TABLE[_SLOT + 1] != 0 and _TABLE[_SLOT + 1] == _TABLE[_SLOT + 2]:
        raise Stopped()


class _TimeUp(BaseException):
    """Raised in a call by its time limit's alarm (not an Exception: the call's own
    ``except Exception`` does not swallow it)."""


def _time_up(signum: int, frame: Any) -> None:
    raise _TimeUp()


def _serve(call_id: int, key: str, blob: bytes, payload: bytes, deadline: float | None) -> tuple[str, Any, float, float]:
    """One call in a worker process: ("ok", result bytes, wall, CPU), ("raised", exception,
    traceback text, wall), ("stopped", None, wall, CPU), or ("expired", None, wall, CPU): its
    time limit (``deadline``, on the machine-wide monotonic clock, set when the manager sent
    it) passed while it ran, by SIGALRM, or before it started, and then it never did."""
    import traceback

    func = _get_func(key, blob)
    args, kwargs = loads(payload)
    c0, t0 = time.thread_time(), time.perf_counter()
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        return "expired", None, 0.0, 0.0
    previous = signal.signal(signal.SIGALRM, _time_up) if left is not None else None
    if _SLOT >= 0:
        _TABLE[_SLOT + 1] = call_id
    try:
        try:
            if left is not None:
                signal.setitimer(signal.ITIMER_REAL, left)
            value = func(*args, **kwargs)
        finally:
            if left is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            if _SLOT >= 0:
                _TABLE[_SLOT + 1] = 0
    except (Stopped, _TimeUp) as stop:
        status = "stopped" if isinstance(stop, Stopped) else "expired"
        return status, None, time.perf_counter() - t0, time.thread_time() - c0
    except BaseException as exc:
        return "raised", _portable(exc), traceback.format_exc(), time.perf_counter() - t0
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    try:
        data = dumps(value, CLOUDPICKLE)
    except Exception as exc:
        return "raised", _portable(exc), f"the result could not be pickled: {exc!r}", wall
    return "ok", data, wall, cpu


def _noop() -> None:
    return None


# ---- the process lane: manager side ---------------------------------------------------------


class _Pool:
    """One generation of the lane's process pool, with its slot table."""

    def __init__(self, workers: int, start_method: str, blas_threads: int) -> None:
        ctx = mp.get_context(start_method)
        self.method = start_method
        self.table = ctx.RawArray("q", 3 * workers)
        self.executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(self.table, ctx.Lock(), blas_threads, start_method != "fork"),
        )
        self.calls: dict[int, Call] = {}  # running in this generation, by id
        self.broken = False
        self.culprits: set[int] = set()  # calls whose worker died under them
        self.processes: dict[int, Any] = {}  # its workers, as they were when it broke
        self.ended: dict[int, str] = {}  # call id -> how the worker that died under it ended

    def pid_of(self, call_id: int) -> int | None:
        t = self.table
        for s in range(0, len(t), 3):
            if t[s + 1] == call_id:
                return int(t[s])
        return None

    def blame(self) -> dict[int, int]:
        """Dead workers' pids -> the call each was running (0: none). A worker counts as dead
        once its sentinel is ready: a process closes its files as it exits, before it is a
        zombie, and the pool breaks on the sentinel, so at that moment a liveness check by
        pid can still read the dying worker as running."""
        from multiprocessing.connection import wait as wait_sentinels

        procs = worker_processes(self.executor)
        t = self.table
        out = {}
        for s in range(0, len(t), 3):
            pid = int(t[s])
            if not pid:
                continue
            proc = procs.get(pid)
            dead = bool(wait_sentinels([proc.sentinel], 0)) if proc is not None else not _alive(pid)
            if dead:
                out[pid] = int(t[s + 1])
        return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
            # A pool broken with no call of the lane's in it is found at submit (send() makes
            # a new one then): the stdlib says so only through BrokenProcessPool.
            if self._pool is None or self._pool.broken:
                self._pool = _Pool(self.workers, self._next_method(), self.blas_threads)
            return self._pool

    def _next_method(self) -> str:
        """The manager's start method, but forkserver for fork while this process runs
        another thread (the manager's own, once it started them)."""
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
        """Fork the pool's workers now if the pool would be forked: before the manager starts
        a thread, the one time no thread of its own runs. (A first submit forks every worker
        of a forking pool; the pool starts its own threads after that.) Where that fails,
        the first call finds out and says why. The fork pool costs a map's optimize() reads
        are measured first where they are not cached: measuring forks pools too."""
        if self._pool is not None or self._next_method() != "fork":
            return
        try:  # what map()'s optimize() reads: measured once a machine (forking pools), cached
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
        return [] if pool is None else [int(p) for p in pool.table[0::3] if p]

    def warm(self) -> None:
        """Start every worker now (the first call would otherwise pay for it)."""
        pool = self._current()
        for f in [pool.executor.submit(_noop) for _ in range(self.workers)]:
            f.result()

    def send(self, call: Call, payload: bytes) -> None:
        """Submit the call; :class:`NoProcesses` if no worker process can be started here."""
        key, blob = call.route.blob()
        attempt = call.attempt
        # The limit counts from now, whether a worker has the call yet or not (as on threads):
        # the worker's alarm and the kill at the limit + GRACE keep to one deadline.
        deadline = None if call.timeout is None else time.monotonic() + call.timeout
        with self._lock:
            if self.unusable:
                raise NoProcesses(self.unusable)
            for _ in range(2):  # a pool found broken at submit (a worker died just now): a new one
                pool = None
                try:
                    pool = self._current()
                    fut = pool.executor.submit(_serve, call.id, key, blob, payload, deadline)
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
            if status in ("stopped", "expired"):
                if status == "expired" and call.stop_reason is None:
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
        if not culprit and not self.served and self.replaced >= 2:
            self.unusable = f"worker processes die before serving a call ({how_it_ended(pool.processes)})"
            return self.finish(call, Outcome(exc=NoProcesses(self.unusable)).of(attempt))
        if culprit or call.replays >= MAX_REPLAYS or self.closed:
            why = "its worker process died while running it" if culprit else "the process pool broke under it"
            ended = pool.ended.get(call.id) or how_it_ended(pool.processes)
            return self.finish(call, Outcome(exc=WorkerDied(f"{name_of(call)}: {why} ({ended})")).of(attempt))
        call.replays += 1
        try:
            self.send(call, payload)
        except Exception as e:  # closed, no processes to be had (the manager moves it to threads), broken again
            self.finish(call, Outcome(exc=e).of(attempt))

    def _pool_broke(self, pool: _Pool) -> None:
        """The pool broke: who was running what in the workers that died (before the pool
        kills the rest: the futures fail first, then the others are terminated), then the
        pool is reaped in the background and the next call starts a new one."""
        with self._lock:
            if pool.broken:
                return
            pool.broken = True
            dead = pool.blame()
            pool.culprits = {c for c in dead.values() if c}
            pool.processes = worker_processes(pool.executor)
            # as execute() says it: "worker 1234 exited with status 3", "... was killed by SIGKILL"
            pool.ended = {c: how_it_ended({pid: pool.processes[pid]}) for pid, c in dead.items() if c and pid in pool.processes}
            self.replaced += 1
        threading.Thread(target=terminate, args=(pool.executor,), name="autopar-reap", daemon=True).start()

    def stop(self, call: Call, reason: str, now: bool = False) -> None:
        """Ask the call's worker to stop it; kill the worker if it is still on it after GRACE
        (at once with ``now``: the time limit's own alarm already had its chance)."""
        with self._lock:
            pool = call.where
            if not isinstance(pool, _Pool) or call.id not in pool.calls:
                return
            if call.stop_reason is None:
                call.stop_reason = reason
            pid = pool.pid_of(call.id)
        if pid is None:  # sent, not started: it stops as it starts
            if not now:
                self.timer.call_later(0.05, lambda: self.stop(call, reason))
            return
        if now:
            return _kill(pid)
        slot = [s for s in range(0, len(pool.table), 3) if pool.table[s] == pid]
        if slot:
            pool.table[slot[0] + 2] = call.id
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                return
        self.timer.call_later(GRACE, lambda: self._kill_if_still(pool, call, pid))

    def _kill_if_still(self, pool: _Pool, call: Call, pid: int) -> None:
        if pool.pid_of(call.id) == pid:
            _kill(pid)

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

