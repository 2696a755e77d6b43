"""The manager's engine: a call's way from submit to its result (routing, admission, attempts,
retries, the breaker, the counts). The public API on top of it is in ``manager.py``."""

from __future__ import annotations

import concurrent.futures as cf
import pickle
import threading
import time
import warnings
from typing import Any, Callable

from ..errors import ItemTimeout
from ..options import NO_LIMIT
from ..tune.system import default_start_method, usable_cores
from .lanes import Call, NoProcesses, Outcome, ProcessLane, ThreadLane, run_here, timed_out
from .policy import CircuitBreaker, CircuitOpen, Retry, Timer
from .routes import Route, Routes
from .throttle import Gate, Throttle

LANES = {"thread": "io", "process": "cpu", "inline": "inline"}  # lane -> its name in stats()


class LaneStats:
    """Counts for one lane; exact (each under the manager's lock)."""

    def __init__(self) -> None:
        self.submitted = self.completed = self.failed = self.cancelled = self.retried = self.timed_out = 0
        self.run_time = 0.0  # seconds in workers, calls that completed
        self.first: float | None = None
        self.last: float | None = None

    def to_dict(self, gate: Gate | None) -> dict[str, Any]:
        ended = self.completed + self.failed
        span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "retried": self.retried,
            "timed_out": self.timed_out,
            "success_rate": self.completed / ended if ended else None,
            "avg_time": self.run_time / self.completed if self.completed else None,
            "max_concurrent": gate.max_running if gate is not None else min(self.submitted, 1),
            "running": gate.running if gate is not None else 0,
            "waiting": gate.waiting if gate is not None else 0,
            "limit": gate.limit if gate is not None else None,
            "items_per_s": self.completed / span if span > 0 else None,
        }


class _Routing:
    """Which lane a call goes to: asked for (run_cpu, run_io), or from its function's route;
    a new function's first call measures it while its other calls wait."""

    lanes: dict[str, Any]

    def _lane_for(self, call: Call) -> tuple[str, str]:
        route = call.route
        if call.asked == "io":
            return "thread", "run_io()"
        unusable = self.lanes["process"].unusable
        if call.asked == "cpu":
            if unusable:
                self._warn_threads(route, unusable)
                return "thread", "run_cpu(), no processes here"
            if route.can_ship():
                return "process", "run_cpu()"
            self._warn_threads(route)
            return "thread", "run_cpu(), cannot be pickled"
        with route.lock:
            if route.calls == 0 or route.cpu_ratio is None:
                if route.probing:  # its first call measures it: wait for that
                    route.waiting.append(call)
                    return "probe", ""
                route.probing = True
                call.probe = True
                return "thread", "the first call measures it"
        lane, why = route.choose()
        if lane == "inline" and call.timeout is not None:
            return "thread", "a time limit needs a thread"
        if lane == "process" and unusable:
            return "thread", unusable
        return lane, why

    def _warn_threads(self, route: Route, why: str | None = None) -> None:
        warnings.warn(f"autopar: {route.name} runs on threads, not in a process: {why or route.why_not}",
                      RuntimeWarning, stacklevel=4)

    def _probed(self, call: Call, out: Outcome | None) -> None:
        """The function's first call ended (``out``), or was cancelled before it could end
        (None): the calls waiting for it go on, the next one measuring if this one told
        nothing. Once per probe, whichever way comes first."""
        route = call.route
        with route.lock:
            if not call.probe:
                return
            call.probe = False
        if out is not None and not out.stopped:  # a failure measures it too (see Route.failed_only)
            route.observe(out.wall, out.cpu, True, ok=out.exc is None)
        with route.lock:
            waiting = [c for c in route.waiting if not c.done()]
            route.waiting = []
            # the probe told nothing (cancelled, stopped, failed at once): the next one measures
            nxt = waiting[0] if route.cpu_ratio is None and waiting else None
            route.probing = nxt is not None
            if nxt is not None:
                nxt.probe = True
        for other in waiting:
            self._place(other) if other is not nxt else self._admit_probe(other)

    def _admit_probe(self, call: Call) -> None:
        self._count_in(call, "thread")
        if self.gates["thread"].offer(call):
            self._start(call)

    def _count_in(self, call: Call, lane: str) -> None:
        """The call's lane; the first one it gets counts it as submitted there."""
        with self._lock:
            if not call.lane:
                stats = self.stats_[LANES[lane]]
                stats.submitted += 1
                stats.first = stats.first if stats.first is not None else time.perf_counter()
            call.lane = lane


class Core(_Routing):
    """Routing, admission and attempts; see Manager for the public side."""

    def __init__(self, cpu_workers: int | None, io_workers: int | None, throttle: bool, cpu_threshold: float | None,
                 memory_threshold: float | None, retry: Retry | None, breaker: CircuitBreaker | None, timeout: float | None,
                 start_method: str | None, timer: Any) -> None:
        cores = usable_cores()
        self.cpu_workers = _count(cpu_workers, cores, "cpu_workers")
        self.io_workers = _count(io_workers, min(32, 4 * cores + 4), "io_workers")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry= takes autopar.Retry, got {type(retry).__name__}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker= takes autopar.CircuitBreaker, got {type(breaker).__name__}")
        self.retry, self.breaker, self.timeout = retry, breaker, _seconds(timeout)
        self.start_method = start_method or default_start_method()
        self.timer = timer if timer is not None else Timer()
        self._lock = threading.RLock()
        self._closing = False
        self._live: set[Call] = set()
        self._idle = threading.Condition(self._lock)
        self.routes = Routes()
        self.gates = {"thread": Gate(self.io_workers), "process": Gate(self.cpu_workers)}
        self.stats_ = {name: LaneStats() for name in LANES.values()}
        self.lanes: dict[str, Any] = {
            "thread": ThreadLane(self.io_workers, self._attempt_done, self.timer),
            "process": ProcessLane(self.cpu_workers, self.start_method, max(1, cores // self.cpu_workers), self._attempt_done, self.timer),
        }
        self.throttle = Throttle(cpu_threshold, memory_threshold, listener=self._throttled, workers=self.lanes["process"].pids)
        # A forking pool's workers start now, before the manager's first thread (see processes.py).
        self.lanes["process"].prestart()
        if throttle:
            self.throttle.start()

    # ---- a call's way -------------------------------------------------------------------

    def _submit(self, func: Callable[..., Any], args: tuple, kwargs: dict, asked: str | None, timeout: Any, retry: Any, breaker: Any) -> Call:
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        if self._closing:
            raise RuntimeError("the manager is shut down: no new calls")
        route = self.routes.get(func)
        call = Call(
            self, func, args, kwargs, lane="",
            timeout=self.timeout if timeout is _UNSET else _seconds(timeout),
            retry=self.retry if retry is _UNSET else retry,
            breaker=self._breaker_of(route) if breaker is _UNSET else breaker,
            route=route,
        )
        call.asked = asked
        if call.breaker is not None:
            try:
                call.trial = call.breaker.check()
            except CircuitOpen as exc:
                call.settle(exc=exc)
                return call
        with self._lock:
            self._live.add(call)
        self._attempt(call)
        return call

    def _breaker_of(self, route: Route) -> CircuitBreaker | None:
        """The function's own breaker, made from the manager's template (kept on its route)."""
        if self.breaker is None:
            return None
        with route.lock:
            if route.breaker is None:
                route.breaker = self.breaker.copy(route.name)
            return route.breaker

    def _attempt(self, call: Call) -> None:
        if call.done():
            return self._forget(call)
        call.attempt += 1
        call.stop_reason = None
        self._place(call)

    def _place(self, call: Call) -> None:
        """Choose the call's lane and admit it (or queue it behind the gate or the probe)."""
        lane, _ = self._lane_for(call)
        if lane == "probe":
            if call.timeout is not None and call.waited != call.attempt:  # its limit counts from now, as on a lane's queue
                call.waited = attempt = call.attempt
                try:
                    self.timer.call_later(call.timeout, lambda: self._waited_out(call, attempt))
                except RuntimeError:
                    pass  # closing: the close settles it
            return
        self._count_in(call, lane)
        if lane == "inline":
            if call.done() or not call.begin():
                return self._forget(call)
            out = run_here(call)
            return self._attempt_done(call, out.of(call.attempt))
        if self.gates[lane].offer(call):
            self._start(call)

    def _waited_out(self, call: Call, attempt: int) -> None:
        """The time limit of a call still waiting for its function's first call passed: it
        ends now and never starts (a first call stuck for long held every other call back)."""
        route = call.route
        with route.lock:
            if call.attempt != attempt or call not in route.waiting:
                return
            route.waiting.remove(call)
            call.stop_reason = "timeout"
        self._count_in(call, "thread")
        self._settle(call, Outcome(stopped=True).of(attempt))

    def _start(self, call: Call) -> None:
        """An admitted call goes to its lane; whatever goes wrong on the way ends the call,
        never the caller's submit() (nor a pool thread's callback)."""
        if call.done() or not call.begin():  # cancelled on its way here
            self._release(call)
            return self._probed(call, None)
        try:
            if call.lane != "process":
                return self.lanes[call.lane].start(call)
            t0 = time.perf_counter()
            try:
                payload = pickle.dumps((call.args, call.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # its arguments cannot go to a process: a thread runs it
                return self._to_threads(call, f"its arguments cannot be pickled ({type(exc).__name__}: {exc})")
            call.route.shipped(time.perf_counter() - t0)
            self.lanes["process"].send(call, payload)
        except NoProcesses as exc:
            self._to_threads(call, str(exc))
        except Exception as exc:  # the manager closed meanwhile, or a pool refused the call
            self._attempt_done(call, Outcome(exc=exc).of(call.attempt))  # gives its slot back

    def _to_threads(self, call: Call, why: str) -> None:
        """No process can run this call: it runs on a thread (the same attempt), with a warning."""
        self._warn_threads(call.route, why)
        if call.lane == "process":
            self._release(call, lane="process")
            with self._lock:
                self.stats_["cpu"].submitted -= 1
                self.stats_["io"].submitted += 1
        call.lane = "thread"
        call.closed_attempt = 0
        if self.gates["thread"].offer(call):
            self._start(call)

    def _release(self, call: Call, lane: str | None = None) -> None:
        lane = lane or call.lane
        if lane in self.gates:
            for nxt in self.gates[lane].done():
                self._start(nxt)

    def _attempt_done(self, call: Call, out: Outcome) -> None:
        """One attempt ended (from a lane's thread, or inline)."""
        with self._lock:
            if out.attempt != call.attempt or call.closed_attempt == out.attempt:
                return  # a late end of an attempt already let go
            call.closed_attempt = out.attempt
        if isinstance(out.exc, NoProcesses):
            return self._to_threads(call, str(out.exc))
        self._release(call)
        if call.probe:
            self._probed(call, out)
        elif not out.stopped and out.exc is None:
            call.route.observe(out.wall, out.cpu, out.alone or call.lane == "process")
        self._settle(call, out)

    def _settle(self, call: Call, out: Outcome) -> None:
        stats = self.stats_[LANES[call.lane or "thread"]]
        exc = out.exc
        if out.stopped:
            exc = timed_out(call) if call.stop_reason == "timeout" else cf.CancelledError()
        if call.done():  # cancelled: counted when it was
            return self._forget(call)
        if exc is None:
            self._record(call, None)
            with self._lock:
                stats.completed += 1
                stats.run_time += out.wall
                stats.last = time.perf_counter()
            call.settle(out.value)
            return self._forget(call)
        if call.retry is not None and not self._closing and call.retry.retries(exc, call.attempt):
            with self._lock:
                stats.retried += 1
            try:
                self.timer.call_later(call.retry.delay(call.attempt), lambda: self._attempt(call))
                return
            except RuntimeError:
                pass  # closing: the failure stands
        self._record(call, exc)
        with self._lock:
            stats.failed += 1
            stats.timed_out += isinstance(exc, ItemTimeout)
            stats.last = time.perf_counter()
        call.settle(exc=exc)
        self._forget(call)

    def _record(self, call: Call, exc: BaseException | None) -> None:
        """The call's final outcome to its breaker, once."""
        with self._lock:
            if call.breaker is None or call.recorded:
                return
            call.recorded = True
        call.breaker.record(exc)

    def _forget(self, call: Call) -> None:
        with self._lock:
            self._live.discard(call)
            if not self._live:
                self._idle.notify_all()

    def _cancelled(self, call: Call, running: bool) -> None:
        """Call.cancel() came: take it out of any queue, or stop it where it runs. A call
        still waiting for its function's first call counts on the thread lane it waited for;
        a cancelled first call hands the measuring on; a cancelled half-open trial lets the
        breaker take another."""
        with call.route.lock:
            if call in call.route.waiting:
                call.route.waiting.remove(call)
        self._count_in(call, call.lane or "thread")
        with self._lock:
            self.stats_[LANES[call.lane]].cancelled += 1
        gate = self.gates.get(call.lane)
        if (gate is None or not gate.remove(call)) and running and call.where is not None:
            self.lanes[call.lane].stop(call, "cancel")
        if call.trial:
            self._record(call, cf.CancelledError())
        self._probed(call, None)
        self._forget(call)

    def _throttled(self, factor: float) -> None:
        for gate in self.gates.values():
            for call in gate.set_factor(factor):
                self._start(call)


class _Unset:
    def __repr__(self) -> str:
        return "<the manager's default>"


_UNSET: Any = _Unset()


def _count(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {value!r}")
    return None if value >= NO_LIMIT else float(value)  # infinity (or decades): no limit
