"""Code that runs inside a pool worker: one chunk of items at a time (:func:`run_local`,
:func:`run_remote`), or one call of the Manager's (:func:`run_call`); per-item time limits,
and the deadline watcher, the one way an item on a thread is stopped (:func:`stop_thread`).

A chunk returns ``(results, elapsed, failures, CPU)`` and never raises for an item's sake:
each failure is ``(index, exception, traceback text)``; without ``collect`` it stops at the
first. Process workers unpickle the function sent with every chunk once per key.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import traceback
from collections import OrderedDict
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

try:
    import resource
except ImportError:  # (not on Windows)
    resource = None  # type: ignore[assignment]

from .._serialize import CLOUDPICKLE, dumps, loads
from ..errors import ItemFailed, ItemTimeout, WorkerError
from . import slots
from .base import Stopped

_FUNCS: "OrderedDict[str, Callable[..., Any]]" = OrderedDict()
_FUNC_CACHE_SIZE = 8
_RUNNING: dict[tuple[str, int], float] = {}  # (function key, chunk start) -> when it started


def running_chunks(key: str) -> dict[int, float]:
    """Seconds each chunk of the run ``key`` has been running in this process (asked of
    every Dask worker when a run looks stuck: a task waiting behind another is not)."""
    now = time.monotonic()
    return {start: now - t0 for (k, start), t0 in list(_RUNNING.items()) if k == key}

Failure = tuple[int, BaseException, str]


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives a pickle round trip, else a WorkerError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return WorkerError(type(exc).__name__, str(exc))


def map_items(func: Callable[[Any], Any], it: Iterator[Any], out: list[Any]) -> tuple[int, BaseException | None]:
    """Run ``func`` on each item of ``it``, results on the end of ``out``: (offset of the failing
    item from where ``it`` stood, or -1; the exception or None). A Python loop, not ``map``,
    which would take a StopIteration from ``func`` for the end of the items."""
    n0 = len(out)
    try:
        for x in it:
            out.append(func(x))
        return -1, None
    except BaseException as exc:
        return len(out) - n0, exc


class Span:
    """Items ``start`` to ``start + n`` of a list or tuple, read in place (no copy: for tiny
    items a copy costs as much as the loop's own overhead)."""

    __slots__ = ("seq", "start", "n")

    def __init__(self, seq: Any, start: int, n: int) -> None:
        self.seq, self.start, self.n = seq, start, max(n, 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> Any:
        if not -self.n <= j < self.n:
            raise IndexError(j)
        return self.seq[self.start + j % self.n]

    def __iter__(self) -> Iterator[Any]:
        return self.iterators()[1]

    def iterators(self) -> tuple[Iterator[Any], Iterator[Any]]:
        """(the sequence's own iterator, standing at ``start``; the iterator over the span).
        They are one where the span runs to the end of the sequence."""
        it = iter(self.seq)
        it.__setstate__(self.start)  # type: ignore[attr-defined]
        return it, (it if self.start + self.n >= len(self.seq) else islice(it, self.n))


_SEQUENCE_ITERATORS = (type(iter([])), type(iter(())))


def reads_in_place(it: Iterator[Any]) -> bool:
    """Whether :func:`take` reads ``it``'s items in place (a list's or a tuple's iterator)."""
    return type(it) in _SEQUENCE_ITERATORS


def take(it: Iterator[Any], n: int) -> "list[Any] | Span":
    """The next ``n`` items of ``it`` (fewer at its end): a Span read in place where ``it``
    is a list's or a tuple's own iterator (it is moved past them), else a new list."""
    if type(it) in _SEQUENCE_ITERATORS:
        reduced = it.__reduce__()  # (iter, (seq,), position); (iter, ((),)) once exhausted
        if len(reduced) < 3:
            return []
        seq, pos = reduced[1][0], reduced[2]  # type: ignore[index, misc]
        k = max(0, min(n, len(seq) - pos))
        it.__setstate__(pos + k)  # type: ignore[attr-defined]
        return Span(seq, pos, k)
    return list(islice(it, n))


def take_some(it: Iterator[Any], n: int) -> "tuple[list[Any] | Span, Exception | None]":
    """:func:`take`, keeping the items read before the input itself raised: (items, the
    input's exception or None). A plain loop runs those items before it meets the error."""
    if type(it) in _SEQUENCE_ITERATORS:
        return take(it, n), None
    out: list[Any] = []
    try:
        out.extend(islice(it, n))  # what was appended before an exception stays
    except Exception as exc:
        return out, exc
    return out, None


def _in_place(items: Any) -> tuple[Iterator[Any], Iterator[Any], int] | None:
    """For a list, tuple or Span: (the sequence's iterator, the iterator to run, its index at
    the first item); None for anything else."""
    if type(items) is Span:
        base, run = items.iterators()
        return base, run, items.start
    if type(items) in (list, tuple):
        it = iter(items)
        return it, it, 0
    return None


def _failure(index: int, exc: BaseException, remote: bool) -> Failure:
    if not remote:
        return index, exc, ""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return index, _portable(exc.with_traceback(None)), tb


def run_items(
    func: Callable[[Any], Any], start: int, items: Iterable[Any], collect: bool, remote: bool, out: list[Any] | None = None
) -> tuple[list[Any], list[Failure]]:
    """Run a chunk. Stops at the first failure unless ``collect``; then a failed item's place
    holds an :class:`ItemFailed` and the chunk goes on. Only ``Exception`` is collected:
    KeyboardInterrupt, SystemExit and the like always stop the run. Results go on the end of
    ``out`` where given, else a new list. ``items`` may be any iterable (a :class:`Span` reads
    a list in place). Not collecting, into a new list, a list comprehension runs a sequence
    (the fastest loop; the results before a failing item are dropped: every caller raises it).
    """
    if not collect and out is None:
        placed = _in_place(items)
        if placed is not None:
            base, run, first = placed
            try:
                return [func(x) for x in run], []
            except BaseException as exc:
                reduced = base.__reduce__()  # (iter, (seq,), index past the failing item)
                at = reduced[2] - 1 if len(reduced) > 2 else first + len(items) - 1  # type: ignore[arg-type]
                return [], [_failure(start + at - first, exc, remote)]
    out = [] if out is None else out
    failures: list[Failure] = []
    it = iter(items)
    done = 0
    while True:
        offset, exc = map_items(func, it, out)
        if exc is None:
            break
        failure = _failure(start + done + offset, exc, remote)
        failures.append(failure)
        if not collect or not isinstance(exc, Exception):
            break
        out.append(ItemFailed(*failure))
        done += offset + 1
    return out, failures


class _Alarm:
    """A per-item time limit in a process worker: SIGALRM raises ItemTimeout in the item."""

    def __init__(self, func: Callable[[Any], Any], seconds: float) -> None:
        self.func = func
        self.seconds = seconds

    def _ring(self, signum: int, frame: Any) -> None:
        raise ItemTimeout(f"the item ran longer than the {self.seconds:g} s timeout")

    def __call__(self, item: Any) -> Any:
        previous = signal.signal(signal.SIGALRM, self._ring)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            return self.func(item)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class _Expired(BaseException):
    """Raised into an item's thread by :class:`_Deadlines` (a BaseException, as :class:`Stopped`)."""


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in the thread ``thread_id`` at its next bytecode (None: withdraw one
    not delivered yet)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class _Deadlines:
    """Per-item time limits on threads other than the main one, where SIGALRM cannot reach: one
    watcher thread per process raises :class:`_Expired` in a thread whose item passed its
    deadline (at its next bytecode; a call into C when it returns), or at once by :meth:`stop`.
    The one way an item on a thread is stopped."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.due: dict[int, float] = {}  # thread id -> deadline (monotonic)
        self.owner: dict[int, object] = {}  # thread id -> what armed it (a run's time limit)
        self.fired: dict[int, tuple[float, object]] = {}  # rang, item not back yet: (deadline, owner)
        self.outer: dict[int, object] = {}  # thread id -> the owner of the item this one runs within
        self.wake = float("inf")  # when the watcher wakes next
        self.idle_since = float("inf")  # since when no deadline is set
        self.watcher: threading.Thread | None = None
        self.ending = False  # quiesce(): the watcher is to end now

    def arm(self, seconds: float | None, owner: object = None) -> None:
        """The calling thread runs an item of ``owner``, stopped ``seconds`` from now (None:
        only by :meth:`stop`) unless it comes back first (:meth:`disarm`)."""
        with self.cond:
            if threading.get_ident() in self.owner:  # an item within an item (run inline)
                self.outer[threading.get_ident()] = self.owner[threading.get_ident()]
            self.owner[threading.get_ident()] = owner
            if seconds is None:
                return
            deadline = time.monotonic() + seconds
            self.due[threading.get_ident()] = deadline
            self.ending = False
            if self.watcher is None or not self.watcher.is_alive():
                self.watcher = threading.Thread(target=self._watch, name="autopar-deadlines", daemon=True)
                self.watcher.start()
            elif deadline < self.wake:
                self.cond.notify()

    def stop(self, thread_id: int, exc: type[BaseException]) -> bool:
        """Stop the item running on ``thread_id`` now: ``exc`` is raised into it (at its next
        bytecode; a call into C when it returns). False where no item is armed there."""
        with self.cond:
            if thread_id not in self.owner:
                return False
            self.due.pop(thread_id, None)
            self.fired[thread_id] = (time.monotonic(), self.owner[thread_id])
            _async_raise(thread_id, exc)
            return True

    def disarm(self) -> None:
        """The item returned: its deadline goes; a stop that came too late is withdrawn."""
        tid = threading.get_ident()
        with self.cond:
            self._drop(tid)
            if self.due.pop(tid, None) is None:
                _async_raise(tid, None)

    def _drop(self, tid: int) -> None:
        self.owner.pop(tid, None)
        self.fired.pop(tid, None)
        if tid in self.outer:
            self.owner[tid] = self.outer.pop(tid)

    def forget(self) -> None:
        """The calling thread's item ended by its time limit: nothing of it stays watched."""
        with self.cond:
            self._drop(threading.get_ident())
            self.due.pop(threading.get_ident(), None)

    def overdue(self, owner: object) -> float:
        """Seconds the longest-overdue item of ``owner`` has been past its deadline without
        coming back (the exception raised into it waits for a call into C to return)."""
        now = time.monotonic()
        with self.cond:
            return max((now - d for d, o in self.fired.values() if o is owner), default=0.0)

    def quiesce(self) -> None:
        """Before a fork: an idle watcher (no deadline set) ends now, so that the fork copies no
        thread of autopar's. A watcher with deadlines to keep stays."""
        with self.cond:
            watcher = self.watcher
            if watcher is None or self.due or watcher is threading.current_thread():
                return
            self.ending = True
            self.cond.notify()
        end = time.monotonic() + 1.0
        while watcher.is_alive() and self.ending and time.monotonic() < end:
            watcher.join(0.01)  # (a deadline armed meanwhile keeps the watcher: stop waiting)

    def _watch(self) -> None:
        """Until no deadline is left for ``WATCHER_IDLE`` seconds."""
        with self.cond:
            while True:
                now = time.monotonic()
                for tid, deadline in list(self.due.items()):
                    if deadline <= now:
                        del self.due[tid]
                        self.fired[tid] = (deadline, self.owner.get(tid))
                        _async_raise(tid, _Expired)
                if not self.due and (self.ending or now - self.idle_since >= WATCHER_IDLE):
                    self.watcher, self.ending = None, False
                    return
                if self.due:
                    self.idle_since = float("inf")
                elif self.idle_since == float("inf"):
                    self.idle_since = now
                self.wake = min(self.due.values(), default=now + WATCHER_IDLE)
                self.cond.wait(self.wake - now)


WATCHER_IDLE = 0.5  # seconds the deadline watcher waits for another item before it ends
_DEADLINES = _Deadlines()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(before=_DEADLINES.quiesce, after_in_child=_DEADLINES.__init__)


def watch_item(owner: object = None) -> None:
    """The calling thread runs an item that :func:`stop_thread` may stop, until
    :func:`unwatch_item` (a stop that comes after is withdrawn there)."""
    _DEADLINES.arm(None, owner)


def unwatch_item() -> None:
    _DEADLINES.disarm()


def stop_thread(thread_id: int, exc: type[BaseException] = Stopped) -> bool:
    """Stop the item a thread runs (armed by :func:`watch_item` or a time limit): ``exc``
    raised into it by the deadline watcher's way. False where no item is armed there."""
    return _DEADLINES.stop(thread_id, exc)


class _ThreadAlarm(_Alarm):
    """A per-item time limit on a thread other than the main one (see :class:`_Deadlines`)."""

    def __call__(self, item: Any) -> Any:
        try:
            _DEADLINES.arm(self.seconds, self)
            try:
                return self.func(item)
            finally:
                _DEADLINES.disarm()
        except _Expired:
            _DEADLINES.forget()  # (rung as disarm() began: its entries may still stand)
            raise ItemTimeout(f"the item ran longer than the {self.seconds:g} s timeout") from None


class Limited:
    """An item's time limit wherever it runs: SIGALRM on the main thread (it interrupts a sleep
    or a blocking read), the deadline watcher on any other thread."""

    def __init__(self, func: Callable[[Any], Any], seconds: float) -> None:
        self.on_main = _Alarm(func, seconds)
        self.elsewhere = _ThreadAlarm(func, seconds)

    def __call__(self, item: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            return self.on_main(item)
        return self.elsewhere(item)

    def overdue(self) -> float:
        """Seconds an item of this time limit on a thread has been stuck past it (0: none)."""
        return _DEADLINES.overdue(self.elsewhere)


def limited(func: Callable[[Any], Any], seconds: float | None) -> Callable[[Any], Any]:
    """``func`` under a per-item time limit (:class:`Limited`), or as it is without one."""
    return func if seconds is None else Limited(func, seconds)


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None) if resource is not None else None


def user_time() -> float:
    """CPU seconds the calling thread ran outside the kernel (its CPU time where the split
    cannot be read). Time in the kernel (a file's writes) holds no GIL: pure Python ran 100%
    user time here, the suite's file writes and reads 6%."""
    if _RUSAGE_THREAD is None:
        return time.thread_time()
    return resource.getrusage(_RUSAGE_THREAD).ru_utime


def run_local(
    func: Callable[[Any], Any], start: int, items: list[Any], cancel: threading.Event | None, collect: bool = False,
    clock: Callable[[], float] = time.thread_time,
) -> tuple[list[Any], float, list[Failure], float]:
    """A chunk on a thread (or inline): no serialization, the exception object as it is.
    Returns (results, wall seconds, failures, CPU seconds of this thread by ``clock``)."""
    if cancel is not None and cancel.is_set():
        return [], 0.0, [], 0.0
    c0, t0 = clock(), time.perf_counter()
    out, failures = run_items(func, start, items, collect, remote=False)
    return out, time.perf_counter() - t0, failures, clock() - c0


def _get_func(key: str, blob: bytes) -> Callable[[Any], Any]:
    func = _FUNCS.get(key)
    if func is None:
        func = loads(blob)
        _FUNCS[key] = func
        while len(_FUNCS) > _FUNC_CACHE_SIZE:
            _FUNCS.popitem(last=False)
    else:
        _FUNCS.move_to_end(key)
    return func


def run_remote(
    key: str, blob: bytes, start: int, payload: Any, transport: str, collect: bool = False, timeout: float | None = None
) -> tuple[Any, float, list[Failure], float]:
    """A chunk in a worker process; (results, wall seconds, failures, CPU seconds). ``payload`` is the pickled list of items."""
    func = limited(_get_func(key, blob), timeout)  # (on a Dask worker's thread: the deadline watcher)
    items = loads(payload)
    c0, t0 = time.thread_time(), time.perf_counter()
    _RUNNING[key, start] = time.monotonic()
    try:
        out, failures = run_items(func, start, items, collect, remote=True)
    finally:
        _RUNNING.pop((key, start), None)
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if transport == CLOUDPICKLE:
        return dumps(out, CLOUDPICKLE), elapsed, failures, cpu
    return out, elapsed, failures, cpu


class _TimeUp(BaseException):
    """Raised in a call by its time limit's alarm (a BaseException, as :class:`Stopped`)."""


def _time_up(signum: int, frame: Any) -> None:
    raise _TimeUp()


def run_call(call_id: int, key: str, blob: bytes, payload: bytes, deadline: float | None) -> tuple[str, Any, Any, float]:
    """One call of the Manager's in a worker of a tracked pool (its slot says the call runs):
    ("ok", result bytes, wall, CPU), ("raised", exception, traceback text, wall), or ("expired",
    None, wall, CPU): ``deadline`` (the machine-wide monotonic clock) passed while it ran
    (SIGALRM), or before it started. ``payload``: the pickled (args, kwargs)."""
    func = _get_func(key, blob)
    args, kwargs = loads(payload)
    c0, t0 = time.thread_time(), time.perf_counter()
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        return "expired", None, 0.0, 0.0
    previous = signal.signal(signal.SIGALRM, _time_up) if left is not None else None
    slots.running(call_id)
    try:
        try:
            if left is not None:
                signal.setitimer(signal.ITIMER_REAL, left)
            value = func(*args, **kwargs)
        finally:
            if left is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            slots.running(0)
    except _TimeUp:
        return "expired", None, time.perf_counter() - t0, time.thread_time() - c0
    except BaseException as exc:
        return "raised", _portable(exc), traceback.format_exc(), time.perf_counter() - t0
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    try:
        data = dumps(value, CLOUDPICKLE)
    except Exception as exc:
        return "raised", _portable(exc), f"the result could not be pickled: {exc!r}", wall
    return "ok", data, wall, cpu
