"""Code that runs inside a pool worker: one chunk of items at a time.

A chunk returns ``(results, elapsed, failure)`` and never raises for an item's sake:
``failure`` is ``(index, exception, traceback text)`` for the first item that raised. The caller turns it back into the original exception.

Process workers receive the function as cloudpickle bytes with every chunk, under a key; they
unpickle it once per key and keep the last few, so one pool can serve many calls.
"""

from __future__ import annotations

import operator
import pickle
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable

from ._serialize import CLOUDPICKLE, dumps, loads
from .errors import WorkerError

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


def map_items(func: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], int, BaseException | None]:
    """``list(map(func, items))`` at C speed; on an exception, also the offset of the item.

    The offset comes from how far the list iterator got, so no per-item Python runs.
    Returns (results, offset of the failing item or -1, exception or None).
    """
    it = iter(items)
    try:
        return list(map(func, it)), -1, None
    except BaseException as exc:
        return [], len(items) - operator.length_hint(it) - 1, exc


def run_local(
    func: Callable[[Any], Any], start: int, items: list[Any], cancel: threading.Event | None
) -> tuple[list[Any], float, Failure | None]:
    """A chunk on a thread (or inline): no serialization, the exception object as it is."""
    if cancel is not None and cancel.is_set():
        return [], 0.0, None
    t0 = time.perf_counter()
    out, offset, exc = map_items(func, items)
    elapsed = time.perf_counter() - t0
    if exc is not None:
        return out, elapsed, (start + offset, exc, "")
    return out, elapsed, None


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
    key: str, blob: bytes, start: int, payload: Any, transport: str
) -> tuple[Any, float, Failure | None]:
    """A chunk in a worker process. ``payload`` is a list, or cloudpickle bytes of one."""
    func = _get_func(key, blob)
    items = loads(payload) if transport == CLOUDPICKLE else payload
    failure: Failure | None = None
    t0 = time.perf_counter()
    out, offset, exc = map_items(func, items)
    elapsed = time.perf_counter() - t0
    if exc is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        failure = (start + offset, _portable(exc.with_traceback(None)), tb)
    if transport == CLOUDPICKLE:
        return dumps(out, CLOUDPICKLE), elapsed, failure
    return out, elapsed, failure
