"""``Manager``: one long-lived manager of a process pool (CPU work) and a thread pool (I/O),
for sync and asyncio code, routing each function by what its calls measured. A call's way is
in ``core.py``; how a running call is stopped, ``lanes.py``; the routing table, ``routes.py``;
admission under load, ``throttle.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import threading
import time
import weakref
from typing import Any, AsyncIterator, Callable, Iterable

from ..errors import ItemFailed, ItemTimeout
from ..run.execute import execute_iter
from ..tune.optimize import optimize
from .core import _UNSET, LANES, Core
from .policy import CircuitBreaker, Retry

__all__ = ["Manager", "get_manager"]

_CANCELLED = (cf.CancelledError, asyncio.CancelledError)  # a map stopped by its caller: its items are cancelled


class Manager(Core):
    """A process pool for CPU work and a thread pool for I/O behind one object.

    ``cpu_workers`` (default: the usable cores) and ``io_workers`` (default: min(32, 4 x
    cores + 4)) bound the calls running at once in each; ``throttle`` admits fewer while other
    processes load the machine past ``cpu_threshold`` percent of its CPU (the cgroup quota
    where there is one) or memory past ``memory_threshold`` (defaults 85 and 80, or
    ``AUTOPAR_CPU_THRESHOLD`` / ``AUTOPAR_MEMORY_THRESHOLD``). ``retry``, ``breaker`` (a
    template: each function gets its own breaker with these settings) and ``timeout`` are
    defaults for every call; a call's own keyword overrides them (None: none). Calls take
    ``func(*args, **kwargs)``; the keywords ``timeout``, ``retry`` and ``breaker`` are the
    manager's. Use it as a context manager (``with``, ``async with``) or call :meth:`shutdown`;
    an ``atexit`` hook stops whatever is left. ``start_method``: that of the process pool, but
    while this process runs threads a fork pool is made by forkserver (a manager that would fork
    forks its workers as it is made, before its own threads start).
    """

    def __init__(
        self, cpu_workers: int | None = None, io_workers: int | None = None, *, throttle: bool = True,
        cpu_threshold: float | None = None, memory_threshold: float | None = None, retry: Retry | None = None,
        breaker: CircuitBreaker | None = None, timeout: float | None = None, start_method: str | None = None, timer: Any = None,
    ) -> None:
        super().__init__(cpu_workers, io_workers, throttle, cpu_threshold, memory_threshold, retry, breaker, timeout, start_method, timer)
        self._drivers = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="autopar-map")
        ref = weakref.ref(self)
        self._atexit = lambda: (m := ref()) is not None and m.shutdown(wait=False)
        atexit.register(self._atexit)

    # ---- sync --------------------------------------------------------------------------------
    def submit(self, func: Callable[..., Any], /, *args: Any, timeout: Any = _UNSET, retry: Any = _UNSET, breaker: Any = _UNSET, **kwargs: Any) -> cf.Future:
        """Run ``func(*args, **kwargs)`` where its profile says; a Future (``cancel()`` also
        stops it while it runs)."""
        return self._submit(func, args, kwargs, None, timeout, retry, breaker)

    def submit_cpu(self, func: Callable[..., Any], /, *args: Any, timeout: Any = _UNSET, retry: Any = _UNSET, breaker: Any = _UNSET, **kwargs: Any) -> cf.Future:
        """On the process pool (threads, with a warning, for a function that cannot be pickled)."""
        return self._submit(func, args, kwargs, "cpu", timeout, retry, breaker)

    def submit_io(self, func: Callable[..., Any], /, *args: Any, timeout: Any = _UNSET, retry: Any = _UNSET, breaker: Any = _UNSET, **kwargs: Any) -> cf.Future:
        """On the thread pool."""
        return self._submit(func, args, kwargs, "io", timeout, retry, breaker)

    def map_sync(self, func: Callable[[Any], Any], items: Iterable[Any], *, timeout: float | None = None, errors: str = "raise", **options: Any) -> list[Any]:
        """``[func(x) for x in items]`` by ``optimize()`` + ``execute()`` on the manager's
        pools (the pick bounded by their sizes and the throttle), in order."""
        return self._map(func, items, timeout, errors, options, None)

    def _map(self, func: Callable[[Any], Any], items: Iterable[Any], timeout: float | None, errors: str, options: dict, stop: threading.Event | None) -> list[Any]:
        if self._closing:
            raise RuntimeError("the manager is shut down: no new calls")
        items = list(items)
        if not items:
            return []
        limit = max(gate.limit for gate in self.gates.values())  # the pools' sizes, throttled
        try:
            result = optimize(func, items, max_jobs=limit, errors=errors, start_method=self.lanes["process"].method(), **options)
        except BaseException as exc:  # an item failed in the sample, which runs in this thread
            with self._lock:
                self.stats_["inline"].submitted += len(items)
            self._count_map("inline", len(items), [], exc)
            raise
        kind, n, pool = result.executor_type, result.n_jobs, None
        if kind in self.gates:  # "thread" or "process": the lane's pool, no more than its gate admits
            n = min(n, self.gates[kind].limit)
            pool = self.lanes["thread"].pool if kind == "thread" else self.lanes["process"].executor()
        self._learn(func, result)
        lane = LANES.get(kind, "inline")
        with self._lock:
            self.stats_[lane].submitted += len(items)
        out: list[Any] = []
        try:
            it = execute_iter(func, items, result=result, pool=pool, n_jobs=n if pool is not None else None, timeout=timeout, errors=errors)
            try:
                for y in it:
                    out.append(y)
                    if stop is not None and stop.is_set():
                        raise cf.CancelledError()
            finally:
                it.close()
        except BaseException as exc:
            self._count_map(lane, len(items), out, exc)
            raise
        self._count_map(lane, len(items), out, None)
        return out

    def _count_map(self, lane: str, n: int, out: list[Any], exc: BaseException | None) -> None:
        """How a map's ``n`` items ended, in ``stats()``: each delivered result completed (an
        ``ItemFailed`` failed); the item that raised failed; the rest, never delivered (the map
        was cancelled, or stopped at that failure), cancelled."""
        collected = [y.exception for y in out if isinstance(y, ItemFailed)]
        failures = collected + ([exc] if exc is not None and not isinstance(exc, _CANCELLED) else [])
        with self._lock:
            stats = self.stats_[lane]
            stats.completed += len(out) - len(collected)
            stats.failed += len(failures)
            stats.timed_out += sum(isinstance(e, ItemTimeout) for e in failures)
            stats.cancelled += n - len(out) - (len(failures) - len(collected))
            now = time.perf_counter()
            stats.first = stats.first if stats.first is not None else now
            stats.last = now

    def _learn(self, func: Callable[..., Any], result: Any) -> None:
        """What map's sample measured becomes the function's route."""
        p = result.profile
        route = self.routes.get(func)
        if p.item_time_mean > 0:
            route.observe(p.item_time_mean, p.item_time_mean * min(p.cpu_ratio, 1.0), True)
        if p.thread_scaling is not None and p.probe_threads >= 2:
            route.gil_free = p.thread_scaling >= 0.8 * p.probe_threads

    # ---- asyncio -----------------------------------------------------------------------------
    async def run(self, func: Callable[..., Any], /, *args: Any, timeout: Any = _UNSET, retry: Any = _UNSET, breaker: Any = _UNSET, **kwargs: Any) -> Any:
        """``await`` a call routed by the function's measured profile. Cancelling the awaiting
        task cancels the call: a waiting one never starts, a running one is stopped."""
        return await asyncio.wrap_future(self._submit(func, args, kwargs, None, timeout, retry, breaker))

    async def run_cpu(self, func: Callable[..., Any], /, *args: Any, timeout: Any = _UNSET, retry: Any = _UNSET, breaker: Any = _UNSET, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self._submit(func, args, kwargs, "cpu", timeout, retry, breaker))

    async def run_io(self, func: Callable[..., Any], /, *args: Any, timeout: Any = _UNSET, retry: Any = _UNSET, breaker: Any = _UNSET, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self._submit(func, args, kwargs, "io", timeout, retry, breaker))

    async def map(self, func: Callable[[Any], Any], items: Iterable[Any], *, timeout: float | None = None, errors: str = "raise", **options: Any) -> list[Any]:
        """:meth:`map_sync` from asyncio, on a driver thread; cancelling stops the run."""
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._drivers, self._map, func, items, timeout, errors, options, stop)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            stop.set()
            try:
                await fut
            except BaseException:
                pass
            raise

    async def as_completed(self, func: Callable[[Any], Any], items: Iterable[Any], *, timeout: Any = _UNSET, retry: Any = _UNSET) -> AsyncIterator[tuple[int, Any]]:
        """``(index, result)`` as each call ends; a failure raises (its index on the exception
        as ``autopar_item_index``). At most twice the lanes' limits are out at once; leaving
        the loop early cancels the rest."""
        source = enumerate(items)
        window = 2 * (self.gates["thread"].limit + self.gates["process"].limit)
        out: dict[asyncio.Future, int] = {}

        def top_up() -> None:
            for i, x in source:
                out[asyncio.wrap_future(self._submit(func, (x,), {}, None, timeout, retry, _UNSET))] = i
                if len(out) >= window:
                    return

        try:
            top_up()
            while out:
                done, _ = await asyncio.wait(out, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    i = out.pop(fut)
                    exc = fut.exception()
                    if exc is not None:
                        try:
                            exc.autopar_item_index = i  # type: ignore[attr-defined]
                        except AttributeError:
                            pass
                        raise exc
                    yield i, fut.result()
                top_up()
        finally:
            for fut in out:
                fut.cancel()

    # ---- state -------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per lane ("cpu": the process pool, "io": the thread pool, "inline"): counts, success
        rate, mean seconds a call in its worker, the most running at once, calls a second."""
        gates = {"cpu": self.gates["process"], "io": self.gates["thread"], "inline": None}
        with self._lock:
            return {name: s.to_dict(gates[name]) for name, s in self.stats_.items()}

    def routes_info(self) -> dict[str, dict[str, Any]]:
        """Each function seen: calls measured, ms a call, CPU share, its lane and why."""
        return {r.name: r.to_dict() for r in self.routes.all()}

    def warm(self) -> "Manager":
        """Start the process pool's workers now (the first CPU call would pay for it)."""
        self.lanes["process"].warm()
        return self

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """``wait``: let running calls end (and, unless ``cancel_pending``, waiting ones run),
        then close the pools. Without ``wait``: everything not finished is cancelled and
        stopped now. Either way no worker thread or process is left. Idempotent."""
        with self._lock:
            first = not self._closing
            self._closing = True
        if first:
            atexit.unregister(self._atexit)
        self.throttle.close()
        if cancel_pending or not wait:
            for gate in self.gates.values():
                for call in gate.drain():
                    call.cancel()
            for route in self.routes.all():
                for call in list(route.waiting):
                    call.cancel()
        if not wait:
            for call in list(self._live):
                call.cancel()
        with self._lock:
            while wait and self._live:
                self._idle.wait(0.1)
        for call in self.timer.close():  # retries not due yet
            call()
        self._drivers.shutdown(wait=wait, cancel_futures=not wait)
        self.lanes["thread"].close(wait=wait)
        self.lanes["process"].close(wait=wait)

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.shutdown(wait=exc_type is None)

    async def __aenter__(self) -> "Manager":
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.shutdown(wait=exc_type is None))

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"Manager(cpu_workers={self.cpu_workers}, io_workers={self.io_workers}, {state}, throttle={self.throttle.factor:.2f})"


_GLOBAL: Manager | None = None
_GLOBAL_LOCK = threading.Lock()


def get_manager() -> Manager:
    """The process-wide manager (made at the first call, closed at exit)."""
    global _GLOBAL
    with _GLOBAL_LOCK:
        if _GLOBAL is None or _GLOBAL.closed:
            _GLOBAL = Manager()
        return _GLOBAL
