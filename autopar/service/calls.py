"""A manager's call (a Future whose ``cancel()`` also stops it while it runs) and what one
attempt of it gave.

``Call`` uses only the public Future API. A Future cannot be cancelled once RUNNING, and a
manager's call can: so a Call stays pending while it runs (``begin()`` marks it started,
``running()`` says so) and goes straight to finished (allowed on a pending Future, 3.10-3.14).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from ..backends.base import Stopped  # raised into a call on a thread to stop it (cancelled, or past its time limit)
from ..errors import ItemTimeout

__all__ = ["Call", "NoProcesses", "Outcome", "Stopped", "run_here", "timed_out"]

GRACE = 1.0  # seconds a call past its time limit (or asked to stop) gets before it is let go or killed

_ids = itertools.count(1)


class NoProcesses(Exception):
    """Process workers cannot be had here (they cannot start, or die before serving a call)."""


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
        self.waited = 0  # the attempt whose wait for its function's first call has a time limit running
        self.closed_attempt = 0  # the attempt whose end was taken (a later end of it is dropped)
        self.trial = False  # its breaker let it through as the half-open trial
        self.recorded = False  # its outcome went to its breaker
        self.begun = False  # a lane has it (it runs, or waits for a worker): cancel() stops it there
        # Orders begin() against cancel(); reentrant: a done callback run by cancel() may cancel again.
        self._turn = threading.RLock()

    def begin(self) -> bool:
        """Mark the call started (once; again for a retry); False if it was cancelled."""
        with self._turn:
            if self.done():
                return False
            self.begun = True
            return True

    def running(self) -> bool:
        with self._turn:
            return self.begun and not self.done()

    def cancel(self) -> bool:
        """A waiting call never starts; a running one is stopped (its result, if it comes, dropped)."""
        with self._turn:
            if self.cancelled():
                return True
            if not super().cancel():  # finished (a Call is never RUNNING to the base class)
                return False
            self.set_running_or_notify_cancel()  # wakes wait()/as_completed() on it
            running = self.begun
        self.manager._cancelled(self, running=running)
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
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "running" if self.running() else "pending"
        return f"<Call {self.id} {name_of(self)} on {self.lane}: {state}>"


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


def name_of(call: Call) -> str:
    return getattr(call.func, "__qualname__", None) or repr(call.func)


def timed_out(call: Call) -> ItemTimeout:
    return ItemTimeout(f"{name_of(call)} ran longer than its {call.timeout:g} s timeout")
