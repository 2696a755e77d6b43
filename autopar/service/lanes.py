"""Where a manager's call runs: a thread lane, a process lane, or inline; and the call itself.

```
Manager.submit ─► Call (a Future) ─► Gate (admitted, or waits its turn) ─► Lane.start(call)
                                                                            │
   ThreadLane: ThreadPoolExecutor ─ _ThreadRun: func(*args) in a worker thread ──────┐
   ProcessLane: ProcessPoolExecutor ─ _serve(call id, function blob, argument bytes) ─┤ lane.finish(call, outcome)
   inline (tiny functions): in the caller's thread, no gate                          ▼
                                                                  Manager._attempt_done: retry, breaker, stats
```

Stopping one running call, which a plain pool cannot do:
- on a thread: an exception raised into its thread at its next bytecode (a call stuck in
  one C call is let go at the deadline: its result, when it comes, is dropped);
- in a process: every worker has a slot in a shared table (pid, call running, call to stop);
  the lane marks the call to stop and sends SIGUSR1, whose handler raises in the call;
  a worker still on that call a grace period later (stuck in C) is killed, and the pool is
  replaced: the other calls that were in it run again in the new pool (the table says which
  call each dead worker ran, so a crash is blamed on its own call only).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED
from typing import Any, Callable

from .._serialize import CLOUDPICKLE, dumps, loads
from ..backends.process import _init_process_worker, how_it_ended, terminate, worker_processes
from ..backends.worker import _async_raise, _get_func, _portable
from ..errors import ItemTimeout, WorkerDied

__all__ = ["Call", "ProcessLane", "ThreadLane", "Outcome"]

GRACE = 1.0  # seconds a call past its time limit (or asked to stop) gets before it is let go or killed
MAX_REPLAYS = 3  # times a call runs again because a pool broke under it (not by its own doing)

_ids = itertools.count(1)


class NoProcesses(Exception):
    """Process workers cannot be had here (they cannot start, or die before serving a call)."""


class _Stopped(BaseException):
    """Raised into a call to stop it (cancelled, or past its time limit)."""


class Call(Future):
    """One call to the manager: a Future whose ``cancel()`` also stops it while it runs."""

    def __init__(self, manager: Any, func: Callable[..., Any], args: tuple, kwargs: dict, lane: str, **opts: Any) -> None:
        super().__init__()
        self.id = next(_ids)
        self.manager, self.func, self.args, self.kwargs, self.lane = manager, func, args, kwargs, lane
        self.timeout: float | None = opts.get("timeout")
        self.retry = opts.get("retry")
        self.breaker = opts.get("breaker")
        self.route = opts.get("route")
        self.attempt = 0
        self.replays = 0
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self.where: Any = None  # the lane's handle of the running attempt (thread id, process run)
        self.stop_reason: str | None = None  # "cancel" or "timeout" once asked to stop
        self.asked: str | None = None  # "cpu" (run_cpu), "io" (run_io) or None (routed)
        self.probe = False  # the first call of a new function: it measures the function
        self.closed_attempt = 0  # the attempt whose end was taken (a later end of it is dropped)
        self.trial = False  # its breaker let it through as the half-open trial
        self.recorded = False  # its outcome went to its breaker

    def cancel(self) -> bool:
        """A waiting call never starts; a running one is stopped (its result, if it comes, dropped)."""
        if super().cancel():
            self.set_running_or_notify_cancel()  # wakes wait()/as_completed() on it
            self.manager._cancelled(self, running=False)
            return True
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state == CANCELLED_AND_NOTIFIED:
                return True
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()
        self.manager._cancelled(self, running=True)
        return True

    def settle(self, value: Any = None, exc: BaseException | None = None) -> bool:
        """Finish the call unless it is finished (or cancelled) already."""
        try:
            if exc is None:
                self.set_result(value)
            else:
                self.set_exception(exc)
            return True
        except cf.InvalidStateError:
            return False

    def __repr__(self) -> str:
        name = getattr(self.func, "__qualname__", repr(self.func))
        return f"<Call {self.id} {name} on {self.lane}: {self._state}>"


class Outcome:
    """What one attempt gave: a value or an exception, and its time in the worker."""

    __slots__ = ("value", "exc", "wall", "cpu", "stopped", "attempt", "alone")

    def __init__(self, value: Any = None, exc: BaseException | None = None, wall: float = 0.0, cpu: float = 0.0, stopped: bool = False) -> None:
        self.value, self.exc, self.wall, self.cpu, self.stopped = value, exc, wall, cpu, stopped
        self.attempt = 0  # the attempt it belongs to (a late one, let go before, is dropped)
        self.alone = True  # no other call ran beside it on the lane's threads (its CPU share is its own)

    def of(self, attempt: int) -> "Outcome":
        self.attempt = attempt
        return self


def run_here(call: Call) -> Outcome:
    """Run one attempt in this thread (inline, or a thread lane's worker)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    try:
        value = call.func(*call.args, **call.kwargs)
    except BaseException as exc:
        return Outcome(exc=exc, wall=time.perf_counter() - t0, cpu=time.thread_time() - c0)
    return Outcome(value, wall=time.perf_counter() - t0, cpu=time.thread_time() - c0)


class _Post:
    """A work item for the thread pool without a Future of its own (the call is one): the
    pool's workers call ``run()``; its shutdown cancels ``future``."""

    __slots__ = ("fn", "call", "attempt", "future")

    def __init__(self, fn: Callable[[Call, int], None], call: Call, attempt: int) -> None:
        self.fn, self.call, self.attempt, self.future = fn, call, attempt, call

    def run(self) -> None:
        self.fn(self.call, self.attempt)


class _Threads(ThreadPoolExecutor):
    """A ThreadPoolExecutor (``execute()`` runs on it as on any) that also takes ``post()``:
    a call handed to a worker without a second Future, 5-10 us less a call."""

    def post(self, item: _Post) -> None:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("the manager is shut down")
            self._work_queue.put(item)
            self._adjust_thread_count()


class ThreadLane:
    """Calls on a thread pool; a running call stopped by an exception raised into its thread."""

    kind = "thread"

    def __init__(self, workers: int, finish: Callable[[Call, Outcome], None], timer: Any, name: str = "autopar-io") -> None:
        self.pool = _Threads(max_workers=workers, thread_name_prefix=name)
        self.finish, self.timer = finish, timer
        self._lock = threading.Lock()
        self._active: dict[int, list[bool]] = {}  # call id -> [ran alone so far]
        self._queued: set[tuple[int, int]] = set()  # (call id, attempt) posted, no thread on it yet
        self.let_go = 0  # calls stuck in C that were let go (their threads still run)

    def start(self, call: Call) -> None:
        """Post the call; its time limit counts from now, whether a thread has it yet or not."""
        attempt = call.attempt
        with self._lock:
            self._queued.add((call.id, attempt))
        try:
            self.pool.post(_Post(self._run, call, attempt))
        except BaseException:
            with self._lock:
                self._queued.discard((call.id, attempt))
            raise
        if call.timeout is not None:
            self.timer.call_later(call.timeout, lambda: self.stop(call, "timeout", attempt))

    def _run(self, call: Call, attempt: int) -> None:
        with self._lock:
            if (call.id, attempt) not in self._queued:
                return  # its time limit passed while it waited: it ended then
            self._queued.discard((call.id, attempt))
            cancelled = call.done()
            if not cancelled:
                call.where = threading.get_ident()
        if cancelled:
            return self.finish(call, Outcome(stopped=True).of(attempt))
        active = self._active
        alone = [not active]
        if active:
            for other in list(active.values()):
                other[0] = False
        active[call.id] = alone
        try:
            try:
                out = run_here(call)
            finally:
                with self._lock:
                    call.where = None
                active.pop(call.id, None)
        except _Stopped:
            out = Outcome(stopped=True)
        if isinstance(out.exc, _Stopped):
            out = Outcome(stopped=True, wall=out.wall, cpu=out.cpu)
        out.alone = alone[0]
        self.finish(call, out.of(attempt))

    def stop(self, call: Call, reason: str, attempt: int | None = None) -> None:
        """Raise into the call's thread; past the grace period, let it go. A call no thread
        has taken yet ends now, and never starts."""
        with self._lock:
            if call.stop_reason is not None or attempt not in (None, call.attempt):
                return
            attempt = call.attempt
            waiting = call.where is None
            if waiting and (call.id, attempt) not in self._queued:
                return  # not on this lane now (ended, or between attempts)
            call.stop_reason = reason
            if waiting:
                self._queued.discard((call.id, attempt))
            else:
                _async_raise(call.where, _Stopped)
        if waiting:
            return self.finish(call, Outcome(stopped=True).of(attempt))
        self.timer.call_later(GRACE, lambda: self._let_go(call, attempt))

    def _let_go(self, call: Call, attempt: int) -> None:
        with self._lock:
            stuck = call.where is not None and call.attempt == attempt
        if stuck:  # one long call into C: the thread goes on, the call ends now
            self.let_go += 1
            self.finish(call, Outcome(stopped=True).of(attempt))

    def close(self, wait: bool) -> None:
        """Shut the pool; a thread let go (stuck in C) is not waited for: it ends when its call
        returns, and nothing uses its result."""
        self.pool.shutdown(wait=wait and not self.let_go, cancel_futures=True)


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
        raise _Stopped()


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
    except (_Stopped, _TimeUp) as stop:
        status = "stopped" if isinstance(stop, _Stopped) else "expired"
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
            if self._pool is None or self._pool.broken or getattr(self._pool.executor, "_broken", False):
                self._pool = _Pool(self.workers, self.start_method, self.blas_threads)
            return self._pool

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
                except cf.process.BrokenProcessPool:
                    if pool is not None:
                        self._broken(pool)
                except (OSError, ImportError, NotImplementedError) as exc:
                    if pool is not None:
                        self._broken(pool)
                    if self.served:
                        raise  # they worked before: this call fails, the lane stays
                    self.unusable = f"process workers cannot be started here ({type(exc).__name__}: {exc})"
                    raise NoProcesses(self.unusable) from exc
            else:
                raise WorkerDied(f"{_name(call)}: the process pool broke as the call was sent, twice")
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
        if not isinstance(exc, cf.process.BrokenProcessPool):
            return self.finish(call, Outcome(exc=exc).of(attempt))
        self._broken(pool)
        if call.stop_reason is not None:
            return self.finish(call, Outcome(stopped=True).of(attempt))
        culprit = call.id in pool.culprits
        if not culprit and not self.served and self.replaced >= 2:
            self.unusable = f"worker processes die before serving a call ({how_it_ended(pool.processes)})"
            return self.finish(call, Outcome(exc=NoProcesses(self.unusable)).of(attempt))
        if culprit or call.replays >= MAX_REPLAYS or self.closed:
            why = "its worker process died while running it" if culprit else "the process pool broke under it"
            ended = pool.ended.get(call.id) or how_it_ended(pool.processes)
            return self.finish(call, Outcome(exc=WorkerDied(f"{_name(call)}: {why} ({ended})")).of(attempt))
        call.replays += 1
        try:
            self.send(call, payload)
        except Exception as e:  # closed, no processes to be had (the manager moves it to threads), broken again
            self.finish(call, Outcome(exc=e).of(attempt))

    def _broken(self, pool: _Pool) -> None:
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


def _name(call: Call) -> str:
    return getattr(call.func, "__qualname__", None) or repr(call.func)


def timed_out(call: Call) -> ItemTimeout:
    return ItemTimeout(f"{_name(call)} ran longer than its {call.timeout:g} s timeout")
