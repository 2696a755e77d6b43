"""What the service does around a call: retries with backoff (the one policy,
:class:`~autopar.backends.retry.Retry`), a circuit breaker, and the timer that schedules both.

Retries are event-driven: a failed attempt is submitted again from the manager's timer after its
backoff, so no thread or task is held while a call waits for its next attempt. Both take their
clock from outside (``clock=``), so tests drive them with a fake one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import threading
import time
from typing import Any, Awaitable, Callable, TypeVar

from ..backends.retry import Retry
from ..errors import AutoparError

__all__ = ["CircuitBreaker", "CircuitOpen", "Retry", "Timer"]

T = TypeVar("T")

# Never counted by a breaker: a cancelled call, a circuit that is open.
_NEVER = (asyncio.CancelledError, concurrent.futures.CancelledError)


class CircuitOpen(AutoparError):
    """A call refused at once: its circuit breaker is open after repeated failures."""

    retryable = False  # Retry never tries it again

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name!r} is open after repeated failures; next trial in {retry_in:.1f} s")
        self.name = name
        self.retry_in = retry_in

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (CircuitOpen, (self.name, self.retry_in))


class CircuitBreaker:
    """Closed (calls go through) → open after ``failure_threshold`` failures in a row (calls
    refused at once with :class:`CircuitOpen`) → half-open after ``recovery_timeout`` seconds
    (one trial call goes through; its success closes the circuit, its failure opens it again).

    Thread-safe; usable from sync and async code: ``breaker.call(f, *a)``, ``await
    breaker.call_async(coro_fn, *a)``, as a decorator, or by hand (``check()`` before a call,
    ``record(ok)`` after). Exceptions not in ``on`` (and cancellation) do not count."""

    def __init__(
        self, failure_threshold: int = 5, recovery_timeout: float = 60.0, *, name: str = "breaker",
        on: tuple[type[BaseException], ...] = (Exception,), clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        if isinstance(recovery_timeout, bool) or not isinstance(recovery_timeout, (int, float)) or not recovery_timeout >= 0:
            raise ValueError(f"recovery_timeout must be a number of seconds >= 0, got {recovery_timeout!r}")
        self.failure_threshold, self.recovery_timeout = failure_threshold, recovery_timeout
        self.name, self.on, self.clock = name, on, clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is out

    def copy(self, name: str) -> "CircuitBreaker":
        """A fresh breaker with the same settings (the manager keeps one per function)."""
        return CircuitBreaker(self.failure_threshold, self.recovery_timeout, name=name, on=self.on, clock=self.clock)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state_now()

    def _state_now(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self._opened_at >= self.recovery_timeout else "open"

    def check(self) -> bool:
        """Raise :class:`CircuitOpen` unless a call may go now (in half-open state, one may:
        True for that trial call, whose ``record()`` decides; a cancelled trial is recorded
        as cancelled, which lets the next call be the trial)."""
        with self._lock:
            state = self._state_now()
            if state == "closed":
                return False
            if state == "half-open" and not self._trial:
                self._trial = True
                return True
            assert self._opened_at is not None
            raise CircuitOpen(self.name, max(0.0, self._opened_at + self.recovery_timeout - self.clock()))

    def record(self, exc: BaseException | None) -> None:
        """A call that passed check() ended: ``exc`` None for success."""
        with self._lock:
            self._trial = False
            if exc is None:
                self._failures, self._opened_at = 0, None
                return
            if isinstance(exc, _NEVER + (CircuitOpen,)) or not isinstance(exc, self.on):
                return
            self._failures += 1
            if self._opened_at is not None or self._failures >= self.failure_threshold:
                self._opened_at = self.clock()  # a failed trial opens it for another timeout

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.check()
        try:
            out = func(*args, **kwargs)
        except BaseException as exc:
            self.record(exc)
            raise
        self.record(None)
        return out

    async def call_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        self.check()
        try:
            out = await func(*args, **kwargs)
        except BaseException as exc:
            self.record(exc)
            raise
        self.record(None)
        return out

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        import functools
        import inspect

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(func, *args, **kwargs)

            return guarded_async

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.call(func, *args, **kwargs)

        return guarded

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self.state}, failures={self._failures})"


class Timer:
    """One thread running callbacks at their time (retries' next attempts, time limits);
    started at the first ``call_later``, ended by ``close()``. A callback that raises is
    dropped (the call it serves records its own failure)."""

    def __init__(self, name: str = "autopar-timer", clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.clock = name, clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the timer is closed")
            heapq.heappush(self._heap, (self.clock() + max(delay, 0.0), next(self._seq), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > self.clock()):
                    # (at most TIMEOUT_MAX: a longer wait raises OverflowError and would end the thread)
                    self._cond.wait(None if not self._heap else min(max(self._heap[0][0] - self.clock(), 0.0), threading.TIMEOUT_MAX))
                if self._closed:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # pragma: no cover - a callback's own failure is its call's
                pass

    def close(self) -> list[Callable[[], None]]:
        """Stop the thread; the callbacks not run yet are returned (to be settled by the caller)."""
        with self._cond:
            self._closed = True
            left = [cb for _, _, cb in sorted(self._heap)]
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        return left
