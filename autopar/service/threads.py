"""The thread lane: calls on threads of the lane's own; a running call stopped by an exception
raised into its thread, or let go when it is stuck in one C call.

```
ThreadLane.start(call) ─► Workers.put(job) ─► one FIFO queue ─► a lane thread: ThreadLane._run
LanePool.submit(fn)    ─┘   (a map from execute() runs on the same threads)
```

The threads are the lane's own (at most ``limit``; a new one only when no thread is free),
taking jobs in the order they came from one ``queue.SimpleQueue``. No stdlib worker loop or
work item is in the way: the Call is the only Future a call has (no second one a call, as a
``ThreadPoolExecutor.submit`` would make), and nothing depends on how a Python version's
ThreadPoolExecutor runs its work items (3.14's workers call ``work_item.run(ctx)``).
``execute()`` tells a thread pool by its class, so the lane hands it ``LanePool``: a
ThreadPoolExecutor whose ``submit()`` and ``shutdown()`` are overridden to use the lane's
threads (the base class's own queue and threads are never used).
"""

from __future__ import annotations

import queue
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from ..backends.worker import stop_thread, unwatch_item, watch_item
from .calls import GRACE, Call, Outcome, Stopped, run_here

__all__ = ["LanePool", "ThreadLane", "Workers"]


class Workers:
    """Threads taking jobs ``fn(a, b)`` from one FIFO queue. A job put while no thread is free
    starts one, up to ``limit``; the threads live until :meth:`close` (daemon threads: one
    stuck in C, let go by the lane, does not hold the interpreter at exit)."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit, self.name = limit, name
        self.threads: list[threading.Thread] = []
        self.closed = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Threads done with their last job and about to wait for the next, not yet promised
        # one: each job put either takes one of them or starts a thread (or, at the limit,
        # waits for the first thread to finish).
        self._free = 0

    def put(self, fn: Callable[[Any, Any], None], a: Any, b: Any, future: Future) -> None:
        """Queue ``fn(a, b)``; ``future`` is cancelled if the job is dropped by :meth:`close`."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the manager is shut down")
            if self._free:
                self._free -= 1
            elif len(self.threads) < self.limit:  # (a thread that cannot start: the job fails, not queued)
                t = threading.Thread(target=self._loop, name=f"{self.name}_{len(self.threads)}", daemon=True)
                t.start()
                self.threads.append(t)
            self._jobs.put((fn, a, b, future))

    def _loop(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:  # closed: the next thread is told too
                jobs.put(None)
                return
            fn, a, b, _ = job
            job = None
            try:
                fn(a, b)
            except Stopped:  # raised as the call ended: its outcome is in already
                pass
            except BaseException:  # a fault of the lane's own: shown, and the thread serves on
                traceback.print_exc()
            fn = a = b = None
            with self._lock:
                self._free += 1

    def close(self, wait: bool, cancel: bool) -> None:
        """No more jobs; ``cancel``: the queued ones are dropped and their futures cancelled.
        The threads end after their current job; ``wait``: joined."""
        dropped = []
        with self._lock:
            self.closed = True
            while cancel:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    dropped.append(job[3])
            self._jobs.put(None)
        for future in dropped:
            future.cancel()
        if wait:
            for t in self.threads:
                if t is not threading.current_thread():
                    t.join()


def _run_future(future: Future, work: tuple) -> None:
    """A job from ``LanePool.submit``: ``fn(*args, **kwargs)`` into its Future."""
    if not future.set_running_or_notify_cancel():
        return
    fn, args, kwargs = work
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


class LanePool(ThreadPoolExecutor):
    """The lane's threads as ``execute()`` takes a pool: a ThreadPoolExecutor (its class is
    how a thread pool is told; the base ``__init__`` only records the size) whose
    ``submit()`` and ``shutdown()`` go to :class:`Workers`."""

    def __init__(self, workers: Workers) -> None:
        super().__init__(max_workers=workers.limit, thread_name_prefix=workers.name)
        self.workers = workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self.workers.put(_run_future, future, (fn, args, kwargs), future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.workers.close(wait, cancel_futures)


class ThreadLane:
    """Calls on the lane's threads; a running call stopped by an exception raised into its thread."""

    kind = "thread"

    def __init__(self, workers: int, finish: Callable[[Call, Outcome], None], timer: Any, name: str = "autopar-io") -> None:
        self.threads = Workers(workers, name)
        self.pool = LanePool(self.threads)
        self.finish, self.timer = finish, timer
        self._lock = threading.Lock()
        self._active: dict[int, list[bool]] = {}  # call id -> [ran alone so far]
        self._queued: set[tuple[int, int]] = set()  # (call id, attempt) put, no thread on it yet
        self.let_go = 0  # calls stuck in C that were let go (their threads still run)

    def start(self, call: Call) -> None:
        """Queue the call; its time limit counts from now, whether a thread has it yet or not.
        The lane's close cancels it if no thread took it."""
        attempt = call.attempt
        with self._lock:
            self._queued.add((call.id, attempt))
        try:
            self.threads.put(self._run, call, attempt, call)
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
                watch_item(self)  # from here stop() stops it, by the deadline watcher's way
        if cancelled:
            return self.finish(call, Outcome(stopped=True).of(attempt))
        alone = [True]
        try:
            out = self._attempt(call, alone)
        except Stopped:  # (delivered as the call ended: one stop an attempt, so no second comes)
            out = Outcome(stopped=True)
        self._unwatch(call)
        if isinstance(out.exc, Stopped):
            out = Outcome(stopped=True, wall=out.wall, cpu=out.cpu)
        out.alone = alone[0]
        self.finish(call, out.of(attempt))

    def _attempt(self, call: Call, alone: list[bool]) -> Outcome:
        active = self._active
        try:
            alone[0] = not active
            for other in list(active.values()):
                other[0] = False
            active[call.id] = alone
            return run_here(call)
        finally:
            self._unwatch(call)
            active.pop(call.id, None)

    def _unwatch(self, call: Call) -> None:
        """The call's thread is no longer stoppable; a stop not delivered yet is withdrawn."""
        with self._lock:
            if call.where == threading.get_ident():
                call.where = None
            unwatch_item()

    def stop(self, call: Call, reason: str, attempt: int | None = None) -> None:
        """Stop the call where it runs (:func:`~autopar.backends.worker.stop_thread`: the
        one way for threads); past the grace period, let it go. A call no thread has taken
        yet ends now, and never starts."""
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
                stop_thread(call.where, Stopped)
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
        """No more calls; the queued ones are cancelled. ``wait``: the threads are joined,
        except where one was let go (stuck in C): it ends when its call returns, and nothing
        uses its result."""
        self.threads.close(wait=wait and not self.let_go, cancel=True)
