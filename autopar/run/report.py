"""What a run reports: :class:`ExecutionReport` (predicted against measured), progress
(a bar or a callback) and :class:`ExecutionIterator` (results in order, report filled in as
the run goes)."""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any, Callable, Iterator

from .._words import fmt_time, plural, ran_words, reword_pool

__all__ = ["ExecutionIterator", "ExecutionReport", "Progress", "ranges"]


@dataclass
class ExecutionReport:
    """What a run did, against what the model predicted. Times in seconds."""

    executor_type: str
    n_jobs: int
    chunksize: int
    start_method: str | None
    n_items: int = 0
    n_from_sample: int = 0
    n_chunks: int = 0
    final_chunksize: int = 0
    optimize_time: float = 0.0
    run_time: float = 0.0
    wall_time: float = 0.0
    predicted_time: float | None = None
    predicted_speedup: float | None = None
    predicted_item_time: float | None = None
    measured_item_time: float | None = None
    cache: str | None = None  # what the run told the tuning cache: "updated", "replaced", "checked", "stale" or None
    serial_estimate: float | None = None
    chunksize_changes: list[tuple[int, int, int, str]] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    fallback: tuple[int, str, str] | None = None  # (at item, switched to, why)
    # The pool's speedup over serial as the run measured it, where that made it leave the pool
    # (falling back to serial) or found threads holding the GIL in turn.
    fallback_speedup: float | None = None
    lost_pool: tuple[str, int] | None = None  # (kind, workers) of the pool fallback_speedup is of
    completed: bool = False
    # Chunk by chunk: (first item, items, start, end, status), seconds since execute() was
    # called; status "ok", "failed", "retried" (ran again after a worker died) or "inline"
    # (run in the caller after a fallback). A chunk's start is its end, as the caller saw it,
    # less its time in the worker.
    timeline: list[tuple[int, int, float, float, str]] = field(default_factory=list, repr=False)
    started_at: float = field(default=0.0, repr=False)  # time.perf_counter() when execute() was called

    def span(self, first: int, n: int, start: float, end: float, status: str) -> None:
        """Note a chunk (``start`` and ``end`` as time.perf_counter() readings)."""
        self.timeline.append((first, n, start - self.started_at, end - self.started_at, status))

    def plot(self, path: Any) -> Any:
        """A per-worker timeline of the run's chunks (ran, failed, ran again, inline), with
        the predicted and the measured end, to ``path`` (PNG; SVG or PDF by the suffix).
        Needs ``pip install "autopar[plot]"``. Returns the path."""
        from ..plot import timeline_plot

        return timeline_plot(self, path)

    @property
    def fell_back(self) -> bool:
        """Whether the run left its pool for another configuration part way."""
        return self.fallback is not None

    @property
    def measured_speedup(self) -> float | None:
        """Serial estimate of the items this run executed over the time it took to run them."""
        if self.serial_estimate is None or self.run_time <= 0 or self.n_items == self.n_from_sample:
            return None
        return self.serial_estimate / self.run_time

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("started_at")
        d["measured_speedup"] = self.measured_speedup
        d["fell_back"] = self.fell_back
        return d

    def explain(self) -> str:
        """What the run did against what was predicted, in plain words (the words of
        ``OptimizationResult.explain()``)."""
        serial = self.executor_type == "serial"
        lines = [ran_words(self.n_items, self.executor_type, self.n_jobs, None if serial else self.chunksize, self.wall_time)]
        if self.optimize_time > 1e-3:
            lines.append(f"optimize() took {fmt_time(self.optimize_time)} of it")
        if self.n_from_sample:
            lines.append(f"{plural(self.n_from_sample, 'result')} came from optimize()'s sample")
        rest = self.n_items - self.n_from_sample
        if self.predicted_time is not None and rest > 0:
            lines.append(
                f"{'the other' if self.n_from_sample else 'the'} {plural(rest, 'item')}: predicted {fmt_time(self.predicted_time)}, "
                f"measured {fmt_time(self.run_time)}"
            )
        elif self.predicted_time is not None and self.completed:
            lines.append("nothing was left to run after the sample")
        if self.predicted_item_time and self.measured_item_time:
            lines.append(
                f"item time: predicted {fmt_time(self.predicted_item_time)}, "
                f"measured {fmt_time(self.measured_item_time)} in the workers"
            )
        if self.measured_speedup is not None:
            s = self.measured_speedup
            lines.append(
                f"speedup over serial for those items: measured x{s:.2f}"
                + (" (slower than serial)" if s < 1 else "")
                + (f", predicted x{self.predicted_speedup:.2f}" if self.predicted_speedup else "")
            )
        if self.failures:
            lines.append(f"{plural(len(self.failures), 'item')} failed: {ranges(self.failures)}")
        if self.retried:
            lines.append(f"{plural(len(self.retried), 'item')} ran again after a worker died: {ranges(self.retried)}")
        for at, old, new, why in self.chunksize_changes:
            lines.append(f"chunksize {old} -> {new} at item {at}: {why}")
        if self.fallback is not None:
            at, to, why = self.fallback
            how = "serially" if to == "serial" else f"on a {reword_pool(to)}"
            lines.append(f"from item {at} on, ran {how}: {why}")
        return "\n".join(lines)

    def summary(self) -> str:
        """The same as :meth:`explain` (its earlier name)."""
        return self.explain()


class Progress:
    """Counts items: a tqdm bar (``progress=True``), a callback ``f(done, total)``, or nothing."""

    def __init__(self, progress: Any, total: int | None, desc: str | None) -> None:
        self.done = 0
        self.total = total
        self.callback: Callable[[int, int | None], Any] | None = None
        self.bar = None
        if callable(progress):
            self.callback = progress
        elif progress:
            from tqdm.auto import tqdm

            class _Bar(tqdm):  # type: ignore[misc, valid-type]
                monitor_interval = 0  # no monitor thread left behind after the run

            self.bar = _Bar(total=total, unit="item", desc=desc or "autopar", dynamic_ncols=True)

    @property
    def shown(self) -> bool:
        """Whether anyone watches the count (a bar or a callback)."""
        return self.bar is not None or self.callback is not None

    def update(self, n: int) -> None:
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ExecutionIterator(Iterator[Any]):
    """Results in input order, as they are ready. ``report`` is filled in as the run goes.

    Closing it early (``close()``, leaving a ``with`` block or dropping it after a ``break``)
    stops the run and its pool.
    """

    def __init__(self, blocks: Iterator[list[Any]], report: ExecutionReport) -> None:
        self._gen = blocks  # lists of results, in order
        self._flat = chain.from_iterable(blocks)
        self.report = report
        # An iterator let go without close() stops its run, and its pool, when it is
        # collected: the finalizer holds the run's generator, which holds nothing of this
        # iterator (a concurrent.futures executor's threads watch it the same way).
        self._finalizer = weakref.finalize(self, blocks.close)  # type: ignore[attr-defined]
        self._finalizer.atexit = False  # (at exit the pools' own hooks have run already)

    def __iter__(self) -> "ExecutionIterator":
        return self

    def __next__(self) -> Any:
        return next(self._flat)

    def blocks(self) -> Iterator[list[Any]]:
        """The results as lists (one per chunk), cheaper than one at a time for tiny items.
        Each is a fresh list that nothing else holds: the caller may keep and extend it.
        They hold this iterator: its run goes on while they are read."""
        return _held(self)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "ExecutionIterator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _held(it: ExecutionIterator) -> Iterator[list[Any]]:
    yield from it._gen


def ranges(indices: list[int]) -> str:
    indices = sorted(indices)
    out: list[str] = []
    start = prev = indices[0] if indices else 0
    for i in indices[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(out)
