"""Code that runs inside a pool worker: one chunk of items at a time.

A chunk returns ``(results, elapsed, failures)`` and never raises for an item's sake: each
failure is ``(index, exception, traceback text)``. Without ``collect`` the chunk stops at the
first; the caller turns it back into the original exception.

Process workers receive the function as cloudpickle bytes with every chunk, under a key; they
unpickle it once per key and keep the last few, so one pool can serve many calls.
"""

from __future__ import annotations

import pickle
import signal
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

from .._serialize import CLOUDPICKLE, dumps, loads
from ..errors import ItemFailed, ItemTimeout, WorkerError

_FUNCS: "OrderedDict[str, Callable[..., Any]]" = OrderedDict()
_FUNC_CACHE_SIZE = 8

Failure = tuple[int, BaseException, str]


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives a pickle round trip, else a WorkerError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return WorkerError(type(exc).__name__, str(exc))


def map_items(func: Callable[[Any], Any], it: Iterator[Any], out: list[Any]) -> tuple[int, BaseException | None]:
    """``out.extend(map(func, it))`` at C speed; on an exception, also the offset of the item.

    ``list.extend`` keeps the results before the failing item in ``out``, so their count is
    the offset: no per-item Python runs. Returns (offset of the failing item from where ``it``
    stood, or -1; the exception or None). ``it`` then stands past the failing item.
    """
    n0 = len(out)
    try:
        out.extend(map(func, it))
        return -1, None
    except BaseException as exc:
        return len(out) - n0, exc


def run_items(
    func: Callable[[Any], Any],
    start: int,
    items: Iterable[Any],
    collect: bool,
    remote: bool,
    out: list[Any] | None = None,
) -> tuple[list[Any], list[Failure]]:
    """Run a chunk. Stops at the first failure unless ``collect``; then a failed item's place
    holds an :class:`ItemFailed` and the chunk goes on. Only ``Exception`` is collected:
    KeyboardInterrupt, SystemExit and the like always stop the run. Results go on the end of
    ``out`` where given (one list for many chunks: no copy to join them), else a new list.
    ``items`` may be any iterable (the sample passes an ``islice`` of the input: no copy)."""
    out = [] if out is None else out
    failures: list[Failure] = []
    it = iter(items)
    done = 0
    while True:
        offset, exc = map_items(func, it, out)
        if exc is None:
            break
        index = start + done + offset
        if remote:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            exc = _portable(exc.with_traceback(None))
        else:
            tb = ""
        failures.append((index, exc, tb))
        if not collect or not isinstance(exc, Exception):
            break
        out.append(ItemFailed(index, exc, tb))
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


def run_local(
    func: Callable[[Any], Any], start: int, items: list[Any], cancel: threading.Event | None, collect: bool = False
) -> tuple[list[Any], float, list[Failure], float]:
    """A chunk on a thread (or inline): no serialization, the exception object as it is.
    Returns (results, wall seconds, failures, CPU seconds of this thread)."""
    if cancel is not None and cancel.is_set():
        return [], 0.0, [], 0.0
    c0, t0 = time.thread_time(), time.perf_counter()
    out, failures = run_items(func, start, items, collect, remote=False)
    return out, time.perf_counter() - t0, failures, time.thread_time() - c0


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
    func = _get_func(key, blob)
    if timeout is not None:
        func = _Alarm(func, timeout)
    items = loads(payload)
    c0, t0 = time.thread_time(), time.perf_counter()
    out, failures = run_items(func, start, items, collect, remote=True)
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if transport == CLOUDPICKLE:
        return dumps(out, CLOUDPICKLE), elapsed, failures, cpu
    return out, elapsed, failures, cpu
