"""Functions the tests send to pools: importable, so every start method can run them."""

from __future__ import annotations

import os
import threading
import time


def square(x: int) -> int:
    return x * x


def fail_on(x: int, bad: int = 7) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


class Unpicklable:
    """An item no serializer can send (it holds a lock)."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.lock = threading.Lock()


def value_of(obj: Unpicklable) -> int:
    return obj.value


def blas_threads(_: object) -> int:
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    info = threadpool_info()
    return min((p["num_threads"] for p in info), default=-1)


def busy(n: int) -> int:
    total = 0
    for i in range(n):
        total += i % 7
    return total


def pid(_: object) -> int:
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
