"""How objects travel to worker processes: plain pickle where it works, cloudpickle otherwise.

The function is always sent with cloudpickle: it pickles importable functions by reference
like pickle does, and lambdas, closures and functions defined in ``__main__`` by value, so they
also work under spawn and forkserver. Items and results use plain pickle (the C pickler is the
fastest for many small objects) unless the sample shows that only cloudpickle can send them.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import cloudpickle

PICKLE = "pickle"
LONG_SEQUENCE = 4096  # lists and tuples longer than this are measured on a prefix
PREFIX = 512
CLOUDPICKLE = "cloudpickle"


def dumps(obj: Any, method: str) -> bytes:
    if method == CLOUDPICKLE:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def measure(obj: Any, *, allow_plain: bool = True) -> tuple[str | None, int, float, float, str | None]:
    """Serialize ``obj`` once and time a dumps+loads round trip: (method, size in bytes, round-trip
    seconds, of which loads, error); ``method`` None where neither pickle nor cloudpickle can
    send the object, ``error`` then saying why."""
    if type(obj) in (list, tuple) and len(obj) > LONG_SEQUENCE:  # timed on a prefix, scaled
        method, size, secs, load, err = measure(obj[:PREFIX], allow_plain=allow_plain)
        scale = len(obj) / PREFIX
        return method, int(size * scale), secs * scale, load * scale, err
    errors = []
    methods = (PICKLE, CLOUDPICKLE) if allow_plain else (CLOUDPICKLE,)
    for method in methods:
        try:
            t0 = time.perf_counter()
            blob = dumps(obj, method)
            t1 = time.perf_counter()
            loads(blob)
            t2 = time.perf_counter()
            return method, len(blob), t2 - t0, t2 - t1, None
        except Exception as exc:  # any failure to serialize rules the method out
            errors.append(f"{method}: {type(exc).__name__}: {exc}")
    return None, 0, 0.0, 0.0, "; ".join(errors)


def worse(a: str | None, b: str | None) -> str | None:
    """The method that can carry both kinds of objects (None wins, then cloudpickle)."""
    if a is None or b is None:
        return None
    return CLOUDPICKLE if CLOUDPICKLE in (a, b) else PICKLE
