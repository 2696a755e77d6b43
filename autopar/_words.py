"""One vocabulary for everything autopar explains, reports and plots, so the same thing reads the
same everywhere: "serial", "thread pool, 2 workers", "item", "chunk", times with their unit."""

from __future__ import annotations

import re

__all__ = ["fmt_bytes", "fmt_rate", "fmt_time", "plural", "pool_words", "ran_words", "reword_pool", "reword_scaling", "scaling_words"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 problem``, ``2 problems`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def fmt_time(seconds: float) -> str:
    """Seconds with a unit that suits them: ``2.35 s``, ``12.8 ms``, ``40.0 us``, ``35 ns``."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds == 0:
        return "0 s"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e9:.0f} ns"  # tiny items (a bare call is tens of ns)


def fmt_rate(per_s: float, what: str = "items") -> str:
    """``12,345 items/s``, ``4.56 items/s``."""
    return f"{per_s:,.0f} {what}/s" if per_s >= 100 else f"{per_s:.3g} {what}/s"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def pool_words(kind: str, n_jobs: int, chunksize: int | None = None) -> str:
    """``serial``, ``thread pool, 2 workers``, ``process pool, 1 worker, chunksize 4``,
    ``dask cluster, 2 threads``."""
    if kind == "serial":
        return "serial"
    if kind == "dask":
        text = f"dask cluster, {plural(n_jobs, 'thread')}"
    else:
        text = f"{kind} pool, {plural(n_jobs, 'worker')}"
    return text if chunksize is None else f"{text}, chunksize {chunksize}"


def ran_words(n_items: int, kind: str, n_jobs: int, chunksize: int | None = None, seconds: float | None = None) -> str:
    """``ran 20 items serially in 1.20 s``, ``ran 1 item in 3.1 ms on a thread pool, 2
    workers, chunksize 4``."""
    took = "" if seconds is None else f" in {fmt_time(seconds)}"
    if kind == "serial":
        return f"ran {plural(n_items, 'item')} serially{took}"
    return f"ran {plural(n_items, 'item')}{took} on a {pool_words(kind, n_jobs, chunksize)}"


# A pool as the run's adapter names it ("process x4 (chunksize 8)"), for the same words.
_TERSE = re.compile(r"^(thread|process|dask) x(\d+)(?: \(chunksize (\d+)\))?$")


def reword_pool(text: str) -> str:
    """``process x4 (chunksize 8)`` as ``process pool, 4 workers, chunksize 8``; anything
    else as it is."""
    m = _TERSE.match(text)
    if m is None:
        return text
    return pool_words(m.group(1), int(m.group(2)), int(m.group(3)) if m.group(3) else None)


# Below 0.95 or above 1.05 a thread probe's reading is slower or faster than one thread.
SAME_SPEED = 0.05


def scaling_words(threads: int, scaling: float) -> str:
    """What a thread probe measured, the right way round: ``2 threads ran x1.90 faster than
    one``, ``2 threads ran slower than one: x0.56 the speed of one``."""
    if scaling > 1 + SAME_SPEED:
        return f"{threads} threads ran x{scaling:.2f} faster than one"
    if scaling < 1 - SAME_SPEED:
        return f"{threads} threads ran slower than one: x{scaling:.2f} the speed of one"
    return f"{threads} threads ran about as fast as one: x{scaling:.2f}"


_SCALING = re.compile(r"(\d+) threads ran x(\d+(?:\.\d+)?) faster than one")


def reword_scaling(text: str) -> str:
    """A reason that says "2 threads ran x0.56 faster than one", said the right way round."""
    return _SCALING.sub(lambda m: scaling_words(int(m.group(1)), float(m.group(2))), text)
