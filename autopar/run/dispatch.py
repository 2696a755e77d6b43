"""A run on a pool: chunks out with bounded look-ahead, results back in input order.

::

    rest ──► Feeder ──► backend.submit ──► InOrder (chunks in flight, by input position)
     ▲      (look-ahead ≤ 2n+1 chunks;        │
     │       retried items first,             ▼
     │       one at a time)            wait ─► harvest ─┬─► broken pool: recovery.recover()
     │                                     │            ├─► stuck: recovery.Watchdog
     │                                     │            └─► ChunkTuner (chunksize) and
     └── chunks the pool had not started ◄─┘                Fallback (pool losing to serial:
         run inline after a fallback                        the rest runs inline)
                                               release ◄── head chunks checked, none past an
                                                           item waiting to run again

The loop in :meth:`PoolRun.results` reads: fill → wait → harvest → recover or adapt →
release. No pool the run made outlives it: shut down when the run ends cleanly, its workers
killed otherwise (an error, Ctrl-C, an iterator closed early).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Callable, Iterator

from ..backends.local import InlineBackend, ThreadBackend
from ..backends.pools import make_executor
from ..backends.process import ProcessBackend, Unsendable
from ..errors import ItemFailed, settle
from ..options import Options
from ..tune.costs import pool_costs
from ..tune.model import best_chunksize
from ..tune.result import OptimizationResult
from .report import ExecutionReport, Progress

__all__ = ["Job", "PoolRun"]

ADAPT_FACTOR = 2.0  # measured/expected item time outside [1/2, 2] triggers a new chunksize
FALLBACK_RATE = 0.9  # a pool delivering under this share of serial's rate gives way to serial
FALLBACK_MIN_TIME = 0.02  # seconds of steady running before a fallback is judged


@dataclass
class Job:
    """Everything a run needs besides its input."""

    func: Callable[[Any], Any]
    kind: str
    n_jobs: int
    chunksize: int
    method: str
    opts: Options
    result: OptimizationResult | None
    pool: Executor | None
    bar: Progress
    report: ExecutionReport

    @property
    def chosen(self) -> bool:
        """The configuration came from optimize(), not from the caller: it may be revised."""
        return self.result is not None and self.opts.executor_type is None and self.pool is None

    def failed(self, failures: list[tuple[int, BaseException, str]]) -> None:
        """The one failure rule; collected failures are noted in the report."""
        self.report.failures.extend(settle(failures, self.kind, self.opts.collect))


@dataclass(eq=False)
class Chunk:
    start: int
    items: list[Any]
    future: Future
    attempt: int = 0
    checked: bool = False
    values: list[Any] | None = None
    inline: bool = False


class InOrder:
    """The chunks in flight, by input position; the head is released once checked."""

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        if len(self.chunks) > 1 and self.chunks[-2].start > chunk.start:
            self.chunks = deque(sorted(self.chunks, key=lambda c: c.start))

    def remove(self, chunk: Chunk) -> None:
        self.chunks.remove(chunk)

    def unchecked(self) -> list[Chunk]:
        return [c for c in self.chunks if not c.checked]

    def take_unchecked(self) -> list[Chunk]:
        lost = self.unchecked()
        self.chunks = deque(c for c in self.chunks if c.checked)
        return lost

    def release(self, hold_from: int | None) -> Iterator[list[Any]]:
        """Checked chunks at the head, none at or beyond ``hold_from``."""
        while self.chunks and self.chunks[0].checked and (hold_from is None or self.chunks[0].start < hold_from):
            yield self.chunks.popleft().values  # type: ignore[misc]


class Feeder:
    """Chunks from the input, at most ``limit`` in flight; items to retry, and chunks handed
    back by a fallback, go first."""

    def __init__(self, rest: Iterator[Any], first_index: int, chunksize: int, limit: int) -> None:
        self.rest = rest
        self.next_index = first_index
        self.chunksize = chunksize
        self.limit = limit
        self.exhausted = False
        self.retry: deque[tuple[int, list[Any], int]] = deque()  # (start, items, attempt)
        self.front: deque[tuple[int, list[Any]]] = deque()  # not run yet, before next_index

    def hold_from(self) -> int | None:
        """Results are not released at or past an item waiting to run again."""
        return self.retry[0][0] if self.retry else None

    def add_retry(self, start: int, items: list[Any], attempt: int) -> None:
        self.retry.append((start, items, attempt))
        self.retry = deque(sorted(self.retry, key=lambda r: r[0]))

    def next_chunk(self) -> tuple[int, list[Any]] | None:
        if self.front:
            return self.front.popleft()
        chunk = list(islice(self.rest, self.chunksize))
        if not chunk:
            self.exhausted = True
            return None
        start = self.next_index
        self.next_index += len(chunk)
        return start, chunk

    @property
    def has_more(self) -> bool:
        """Chunks still to hand out (retries aside)."""
        return not self.exhausted or bool(self.front)


class ChunkTuner:
    """Corrects the chunksize when the items take a different time in the workers than the
    sample said (outside a factor of ``ADAPT_FACTOR``)."""

    def __init__(self, job: Job, first_index: int, total: int | None) -> None:
        self.job, self.first_index, self.total = job, first_index, total
        self.basis = job.result.profile.item_time_mean if job.result is not None else None

    def adapt(self, feeder: Feeder, done_time: float, done_items: int, done_chunks: int) -> None:
        job, result = self.job, self.job.result
        if not (job.opts.adapt and self.basis and result is not None and done_chunks >= max(3, job.n_jobs)):
            return
        measured = done_time / done_items
        ratio = measured / self.basis
        if 1 / ADAPT_FACTOR <= ratio <= ADAPT_FACTOR:
            return
        if self.total is not None:
            left = self.total - feeder.next_index
        else:
            left = max(result.n_remaining + self.first_index - feeder.next_index, job.n_jobs)
        if left > 0:
            profile = replace(result.profile, item_time_mean=measured, item_time_std=result.profile.item_time_std * ratio)
            costs = pool_costs(job.method)
            new = best_chunksize(job.kind, job.n_jobs, left, profile, costs, result.usable_cores).chunksize
            if new != feeder.chunksize:
                why = f"items take {measured * 1e3:.3g} ms, not {self.basis * 1e3:.3g} ms"
                job.report.chunksize_changes.append((feeder.next_index, feeder.chunksize, new, why))
                feeder.chunksize = new
        self.basis = measured


class Fallback:
    """Watches the pool's delivered rate against serial's; when the pool is clearly losing,
    the rest of the input runs inline (serially, in the caller), nothing lost or run twice."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.serial_item = job.result.profile.item_time_mean if job.result is not None else 0.0
        self.t_first: float | None = None
        self.items_first = 0
        self.chunks_seen = 0

    def losing(self, done_items: int, worker_cpu: float) -> str | None:
        """Why the pool should give way, or None. Judged on the steady rate: from the first
        chunk back (the pool's start is paid whatever happens next), against serial's rate:
        the sample's item time or, for processes, the CPU time items take in the workers if
        longer (a sample of quick items must not make the pool look slow; CPU time, unlike
        wall time, does not grow when the workers and the parent share too few cores)."""
        if not (self.job.chosen and self.job.opts.adapt and self.serial_item > 0):
            return None
        self.chunks_seen += 1
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.items_first = now, done_items
            return None
        span, items = now - self.t_first, done_items - self.items_first
        if span < FALLBACK_MIN_TIME or self.chunks_seen < self.job.n_jobs + 1 or items <= 0:
            return None
        serial_item = self.serial_item
        if self.job.kind == "process":  # thread times include waiting for the GIL: not those
            serial_item = max(serial_item, worker_cpu)
        rate, serial_rate = items / span, 1.0 / serial_item
        if rate >= FALLBACK_RATE * serial_rate:
            return None
        return (
            f"the pool delivered {rate:.4g} items/s against {serial_rate:.4g} items/s serially "
            f"({items} items over {span * 1e3:.0f} ms)"
        )


class PoolRun:
    """One run on a thread or process pool: fill, wait, harvest, recover or adapt, release."""

    def __init__(self, job: Job, rest: Iterator[Any], first_index: int, total: int | None) -> None:
        self.job = job
        self.feeder = Feeder(rest, first_index, job.chunksize, 2 * job.n_jobs + 1)
        self.inflight = InOrder()
        self.tuner = ChunkTuner(job, first_index, total)
        self.fallback = Fallback(job)
        self.inline: InlineBackend | None = None
        self.done_time = 0.0
        self.done_cpu = 0.0
        self.done_items = 0
        self.done_chunks = 0
        self.last_progress = time.monotonic()
        self.backend = self._backend()

    def _backend(self) -> ProcessBackend | ThreadBackend:
        job = self.job

        def make() -> Executor:
            return make_executor(job.kind, job.n_jobs, start_method=job.method)

        if job.kind == "thread":
            return ThreadBackend(job.func, make, job.pool, job.opts.collect)
        transport = (job.result.profile.transport if job.result is not None else None) or "pickle"
        return ProcessBackend(job.func, make, job.pool, transport, job.opts.collect, job.opts.timeout)

    # -- fill ------------------------------------------------------------------------------

    def submit(self, start: int, items: list[Any], attempt: int = 0) -> None:
        inline = self.inline is not None and not attempt
        try:
            fut = self.inline.submit(start, items) if inline else self.backend.submit(start, items)  # type: ignore[union-attr]
        except Unsendable as exc:
            self._unsendable(start, items, attempt, exc)
            return
        self.inflight.add(Chunk(start, items, fut, attempt, inline=inline))
        self.job.report.n_chunks += 1

    def _unsendable(self, start: int, items: list[Any], attempt: int, exc: Unsendable) -> None:
        """A chunk that does not pickle: name the item; collecting, run the others alone."""
        if not self.job.opts.collect:
            settle([(exc.index, exc.error, "")], "process", False)
        for j, item in enumerate(items):
            if start + j == exc.index:
                self.fail_chunk(Chunk(start + j, [item], Future(), attempt), exc.error)
            else:
                self.submit(start + j, [item], attempt)

    def fill(self) -> None:
        feeder = self.feeder
        if feeder.retry:
            # Items a dead worker took down run again one at a time: a crash then names its item.
            if all(c.checked for c in self.inflight):
                self.submit(*feeder.retry.popleft())
            return
        if self.inline is not None:
            # One inline chunk per turn of the loop, so the pool's last chunks are harvested
            # meanwhile; at most ``limit`` of them held behind an unfinished pool chunk.
            if self._can_run_inline():
                nxt = feeder.next_chunk()
                if nxt is not None:
                    self.submit(*nxt)
            return
        while len(self.inflight) < feeder.limit and feeder.has_more:
            nxt = feeder.next_chunk()
            if nxt is None:
                break
            self.submit(*nxt)

    def _can_run_inline(self) -> bool:
        return (
            self.inline is not None
            and self.feeder.has_more
            and sum(1 for c in self.inflight if c.inline) < self.feeder.limit
        )

    # -- harvest ---------------------------------------------------------------------------

    def harvest(self) -> bool:
        """Check every finished chunk; False when the pool broke (recovery's turn)."""
        job = self.job
        for c in list(self.inflight):
            if c.checked or not c.future.done() or c.future.cancelled():
                continue  # (cancelled: handed back by a fallback, to run inline)
            exc = c.future.exception()
            if self.backend.is_broken(exc):
                return False
            if exc is not None:
                if not job.opts.collect:
                    _raise_pool_error(exc, job.kind, c)
                # e.g. a result that cannot be pickled: the chunk's items fail
                self.inflight.remove(c)
                self.fail_chunk(c, exc)
                continue
            values, elapsed, failures, cpu = c.future.result()
            job.failed(failures)
            c.values = values if c.inline else self.backend.decode(values)
            c.checked = True
            job.bar.update(len(c.items))
            self.last_progress = time.monotonic()
            if not c.inline:
                self.done_time += elapsed
                self.done_cpu += cpu
                self.done_items += len(c.items)
                self.done_chunks += 1
                self._judge()
        return True

    def fail_chunk(self, chunk: Chunk, error: BaseException) -> None:
        """Collecting: every item of ``chunk`` gets ``error`` in its place; the chunk is done."""
        failures = [(chunk.start + i, error, "") for i in range(len(chunk.items))]
        self.job.failed(failures)
        chunk.values = [ItemFailed(i, error) for i, _, _ in failures]
        chunk.checked = True
        chunk.future = Future()
        chunk.future.set_result(None)  # done, so that nothing waits on it
        self.inflight.add(chunk)

    # -- adapt -----------------------------------------------------------------------------

    def _judge(self) -> None:
        if self.inline is not None:
            return
        self.tuner.adapt(self.feeder, self.done_time, self.done_items, self.done_chunks)
        why = self.fallback.losing(self.done_items, self.done_cpu / max(self.done_items, 1))
        if why is not None:
            self._fall_back(why)

    def _fall_back(self, why: str) -> None:
        """The rest runs inline; chunks the pool has not started come back to run inline too."""
        self.inline = InlineBackend(self.job.func, self.job.opts.collect)
        for c in self.inflight.unchecked():
            if c.future.cancel():
                self.inflight.remove(c)
                self.feeder.front.append((c.start, c.items))
        self.feeder.front = deque(sorted(self.feeder.front, key=lambda f: f[0]))
        at = self.feeder.front[0][0] if self.feeder.front else self.feeder.next_index
        self.feeder.chunksize = max(1, int(0.02 / max(self.fallback.serial_item, 1e-9)))
        self.job.report.fallback = (at, "serial", why)

    # -- the loop --------------------------------------------------------------------------

    def results(self) -> Iterator[list[Any]]:
        from .recovery import Watchdog, recover  # recovery works on a PoolRun

        clean = False
        try:
            while True:
                self.fill()
                if not len(self.inflight):
                    break
                pending = [c.future for c in self.inflight if not c.checked]
                if pending:
                    busy_inline = self._can_run_inline()
                    timeout = 0 if busy_inline else Watchdog.wait_timeout(self)
                    done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                    if not done and busy_inline:
                        continue
                    if not done:
                        Watchdog.stuck(self)
                        continue
                if not self.harvest():
                    recover(self)
                    continue
                yield from self.inflight.release(self.feeder.hold_from())
            clean = True
        finally:
            self.job.report.final_chunksize = self.feeder.chunksize
            if self.done_items:
                self.job.report.measured_item_time = self.done_time / self.done_items
            for c in self.inflight:
                c.future.cancel()
            self.backend.close(clean)


def _raise_pool_error(exc: BaseException, kind: str, chunk: Chunk) -> None:
    if hasattr(exc, "add_note"):
        last = chunk.start + len(chunk.items) - 1
        exc.add_note(f"autopar: sending or running items {chunk.start}-{last} on a {kind} pool failed")
    raise exc
