"""The thread lane: calls on the lane's own threads (:mod:`autopar.backends.threadpool`:
``Workers``, and ``LanePool`` for a map from execute() on the same threads); a running call
stopped by the deadline watcher's exception raised into its thread
(:func:`autopar.backends.worker.stop_thread`), or let go when it is stuck in one C call."""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..backends.threadpool import LanePool, Workers
from ..backends.worker import stop_thread, unwatch_item, watch_item
from .calls import GRACE, Call, Outcome, Stopped, run_here

__all__ = ["LanePool", "ThreadLane", "Workers"]


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
