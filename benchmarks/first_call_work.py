"""The functions benchmarks/first_call.py times (importable by its worker processes)."""

from __future__ import annotations

import threading

_TABLE: dict[int, int] = {}
_LOCK = threading.Lock()


def _loop(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def lazy_import(n: int) -> int:
    """Pure Python that imports a heavy module on its first call."""
    import scipy.stats  # noqa: F401  (the first call pays the import)

    return _loop(n)


def lazy_table(n: int) -> int:
    """Pure Python whose first call builds a table (0.2 s of work under a lock)."""
    with _LOCK:
        if not _TABLE:
            _TABLE.update((i, _loop(200)) for i in range(1500))
    return _loop(n) + len(_TABLE)


def pure_python(n: int) -> int:
    return _loop(n)


def numpy_fft(seed: int) -> float:
    import numpy as np

    a = np.random.default_rng(seed).random(1 << 16)
    return float(np.abs(np.fft.rfft(a)).sum())


def items(name: str) -> list[int]:
    """About 1 s of serial work a row, once warm."""
    if name == "numpy_fft":
        return list(range(600))
    return [30_000] * 500
