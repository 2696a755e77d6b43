"""Where a function's calls go, from what its calls measured (kept per function).

A function the manager has not seen runs its first call on a thread, alone (its other calls
wait for it): a thread needs nothing pickled, and the call's CPU time against its wall time
says whether it computes or waits. From then on (each call updates running averages):

| measured                                              | lane     |
|-------------------------------------------------------|----------|
| under ``INLINE_LIMIT`` a call                          | inline (cheaper than any hop) |
| CPU under ``WAITS`` of its wall time                   | threads (it waits) |
| computes, releases the GIL (``map``'s probe said so)   | threads |
| computes, cannot be pickled                            | threads, with a warning |
| computes, pickling its arguments costs >= ``SHIP_SHARE``| threads |
| computes, under ``PROCESS_MIN`` a call                 | threads (a process round trip costs more) |
| computes, holding the GIL                              | processes |

Only calls that ran alone on the lane's threads update the CPU share (beside others, a call
waiting for the GIL reads as waiting); calls in processes always do.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from typing import Any, Callable

from .._serialize import CLOUDPICKLE, dumps

__all__ = ["Route", "Routes"]

INLINE_LIMIT = 20e-6  # seconds: a call this short runs in the caller's thread
WAITS = 0.5  # CPU/wall under this: the function waits (I/O, sleeps, locks)
SHIP_SHARE = 0.25  # pickling arguments costing this share of a call: keep it on threads
PROCESS_MIN = 1e-3  # seconds: a computing call shorter than this stays on threads
ALPHA = 0.2  # weight of a new call in the running averages
MAX_ROUTES = 512

_keys = itertools.count(1)


class Route:
    """What the manager knows of one function."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.name = getattr(func, "__qualname__", None) or type(func).__name__
        self.lock = threading.Lock()
        self.calls = 0  # calls measured
        self.failed_only = False  # every call measured so far failed: the first success restarts
        self.wall = 0.0  # seconds a call, in its worker
        self.cpu_ratio: float | None = None  # CPU / wall, from calls that ran alone
        self.ship_time: float | None = None  # seconds to pickle a call's arguments
        self.gil_free: bool | None = None  # threads ran it in parallel (map's probe)
        self.picklable: bool | None = None
        self.why_not = ""  # why it cannot go to a process
        self.probing = False  # its first call is out; the others wait for it
        self.waiting: list[Any] = []
        self.breaker: Any = None  # its CircuitBreaker, where the manager has a template
        self._blob: tuple[str, bytes] | None = None

    def blob(self) -> tuple[str, bytes]:
        """The function as cloudpickle bytes under a key (made once; raises if it cannot be)."""
        if self._blob is None:
            data = dumps(self.func, CLOUDPICKLE)
            self._blob = (f"svc-{next(_keys)}-{hashlib.blake2b(data, digest_size=8).hexdigest()}", data)
        return self._blob

    def can_ship(self) -> bool:
        if self.picklable is None:
            try:
                self.blob()
                self.picklable = True
            except Exception as exc:
                self.picklable, self.why_not = False, f"{type(exc).__name__}: {exc}"
        return self.picklable

    def observe(self, wall: float, cpu: float, alone: bool, ok: bool = True) -> None:
        """A call's time in its worker (``ok``: it returned). A second call under half the
        first restarts the averages: the first paid a one-time cost (an import, a cache
        filled, the first call in a freshly forked process), not the function's; so does the
        first call that returned after failed ones (a failure's path is not the function's)."""
        with self.lock:
            self.calls += 1
            restart = self.calls == 1 or (self.calls == 2 and wall < 0.5 * self.wall) or (ok and self.failed_only)
            self.failed_only = not ok and (restart or self.failed_only)
            self.wall = wall if restart else (1 - ALPHA) * self.wall + ALPHA * wall
            if alone and wall > 0:
                ratio = min(cpu / wall, 1.0)
                keep = self.cpu_ratio is not None and not restart
                self.cpu_ratio = (1 - ALPHA) * self.cpu_ratio + ALPHA * ratio if keep else ratio  # type: ignore[operator]

    def shipped(self, seconds: float) -> None:
        with self.lock:
            self.ship_time = seconds if self.ship_time is None else (1 - ALPHA) * self.ship_time + ALPHA * seconds

    def choose(self) -> tuple[str, str]:
        """(lane, why): "inline", "thread" or "process"."""
        if self.calls == 0 or self.cpu_ratio is None:
            return "thread", "not measured yet: a thread measures it without pickling anything"
        if self.failed_only:  # a failure's time is not a call's: neither inline nor a process on it
            return "thread", f"every call measured failed ({self.wall * 1e3:.3f} ms): a thread until one returns"
        ms = self.wall * 1e3
        if self.wall < INLINE_LIMIT:
            return "inline", f"{self.wall * 1e6:.0f} us a call: less than a hop to a thread"
        if self.cpu_ratio < WAITS:
            return "thread", f"waits: CPU {self.cpu_ratio:.0%} of its {ms:.2f} ms"
        if self.gil_free:
            return "thread", "computes without holding the GIL (threads ran it in parallel)"
        if not self.can_ship():
            return "thread", f"computes, but cannot be pickled for a process ({self.why_not})"
        if self.ship_time is not None and self.ship_time >= SHIP_SHARE * self.wall:
            return "thread", f"pickling its arguments ({self.ship_time * 1e3:.2f} ms) costs too much of a {ms:.2f} ms call"
        if self.wall < PROCESS_MIN:
            return "thread", f"computes for {ms:.3f} ms a call: a process round trip costs more"
        return "process", f"computes (CPU {self.cpu_ratio:.0%} of {ms:.2f} ms) holding the GIL"

    def to_dict(self) -> dict[str, Any]:
        lane, why = self.choose()
        return {
            "calls": self.calls, "ms_per_call": round(self.wall * 1e3, 4),
            "cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 3),
            "lane": lane, "why": why,
        }


def _key(func: Callable[..., Any]) -> Any:
    """The function itself (bound methods of one object are equal), or its id if unhashable."""
    try:
        hash(func)
        return func
    except TypeError:
        return ("id", id(func))


class Routes:
    """Routes by function, the least recently used dropped past MAX_ROUTES."""

    def __init__(self) -> None:
        self._routes: "OrderedDict[Any, Route]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, func: Callable[..., Any]) -> Route:
        key = _key(func)
        with self._lock:
            route = self._routes.get(key)
            if route is None or (isinstance(key, tuple) and route.func is not func):  # an id used again
                route = self._routes[key] = Route(func)
                while len(self._routes) > MAX_ROUTES:
                    self._routes.popitem(last=False)
            else:
                self._routes.move_to_end(key)
            return route

    def all(self) -> list[Route]:
        with self._lock:
            return list(self._routes.values())
