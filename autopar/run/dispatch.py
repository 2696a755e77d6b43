"""A run on a pool: chunks out with bounded look-ahead, results back in input order.

::

    rest ──► Feeder ──► backend.submit ──► InOrder (chunks in flight, by input position)
     ▲      (look-ahead ≤ 2n+1 chunks;        │
     │       retried items first,             ▼
     │       one at a time)            wait ─► harvest ─┬─► broken pool: recovery.recover()
     │                                     │            ├─► stuck: recovery.Watchdog
     │                                     │            └─► ChunkTuner (chunksize) and
     └── chunks the pool had not started ◄─┘                Fallback (pool losing to serial:
         run inline after a fallback, or on                 the rest runs inline; pool short
         the other pool after a switch                      of its prediction: the runner-up
                                                            pool of the other kind takes it)
                                               release ◄── head chunks checked, none past an
                                                           item waiting to run again

The loop in :meth:`PoolRun.results` reads: fill → wait → harvest → recover or adapt →
release. A pool autopar chose starts with chunks of about 10 ms of work that double with
each chunk back (unless the pool is losing), so a pool that loses to serial is seen early;
a doubt is checked by timing one small chunk in the caller before the run falls back, and
after a fallback the pool is shut down as soon as its last chunk is back. A switch to the
runner-up pool waits for that too, then starts the other pool, which ramps up as the first
did; a run switches once at most. No pool the run
made outlives it: shut down when the run ends cleanly, its workers killed otherwise (an
error, Ctrl-C, an iterator closed early).
"""

from __future__ import annotations

import queue
import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Callable, Iterator

from ..backends.local import InlineBackend, ThreadBackend
from ..backends.pools import make_executor, sigint_deferred
from ..backends.process import ProcessBackend, Unsendable
from ..errors import ItemFailed, settle
from ..options import Options
from ..tune.costs import pool_costs
from ..tune.model import CPU_RATIO_CPU, Candidate, best_chunksize
from ..tune.result import OptimizationResult
from ..tune.sample import Profile
from .report import ExecutionReport, Progress

__all__ = ["Job", "PoolRun"]

ADAPT_FACTOR = 2.0  # measured/expected item time outside [1/2, 2] triggers a new chunksize
FALLBACK_RATE = 0.9  # a pool delivering under this share of serial's rate gives way to serial
FALLBACK_MIN_TIME = 0.02  # seconds of steady running before a fallback is judged
SWITCH_MIN_TIME = 0.05  # ... and before a switch to the runner-up pool is
SWITCH_SHORTFALL = 0.8  # a pool delivering under this share of its predicted rate ...
SWITCH_GAIN = 1.2  # ... gives way to the other pool kind predicted this much faster than it
RAMP_SECONDS = 0.01  # work in a chosen pool's first chunks
RAMP_CHUNK_COST = 10.0  # ... or this many times what a chunk costs whatever its size


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
    live: bool = False  # in flight (a chunk taken off a broken pool is not, whatever its future does)


class InOrder:
    """The chunks in flight, by input position; the head is released once checked.

    Each chunk's future reports itself done on a queue, so waiting and harvesting cost per
    chunk done, not per chunk in flight: scanning 129 chunks in flight (threads x64) at every
    turn of the loop cost about 10 us a chunk done in the caller, which the workers' GIL
    shares (927 sleeps of 1 ms on 64 threads, chunks of 1: 46 ms, 19 ms of it the caller's
    CPU).
    """

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.done: queue.SimpleQueue[Chunk] = queue.SimpleQueue()

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    def add(self, chunk: Chunk) -> None:
        chunk.live = True
        self.chunks.append(chunk)
        if len(self.chunks) > 1 and self.chunks[-2].start > chunk.start:
            self.chunks = deque(sorted(self.chunks, key=lambda c: c.start))
        done = self.done
        chunk.future.add_done_callback(lambda _f: done.put(chunk))

    def remove(self, chunk: Chunk) -> None:
        chunk.live = False
        self.chunks.remove(chunk)

    def unchecked(self) -> list[Chunk]:
        return [c for c in self.chunks if not c.checked]

    def take_unchecked(self) -> list[Chunk]:
        lost = self.unchecked()
        for c in lost:
            c.live = False
        self.chunks = deque(c for c in self.chunks if c.checked)
        return lost

    def waiting(self) -> bool:
        """Some chunk in flight is not checked yet (usually one near the head)."""
        return any(not c.checked for c in self.chunks)

    def wait(self, timeout: float | None) -> bool:
        """Until a chunk is done (True), or ``timeout`` seconds pass (False; 0: no wait)."""
        if not self.done.empty():
            return True
        try:
            chunk = self.done.get(block=timeout != 0, timeout=timeout or None)
        except queue.Empty:
            return False
        self.done.put(chunk)  # for take_done
        return True

    def take_done(self) -> list[Chunk]:
        """The chunks done since the last call that are still to check, in input order."""
        got = []
        while True:
            try:
                c = self.done.get_nowait()
            except queue.Empty:
                break
            if c.live and not c.checked and not c.future.cancelled():
                got.append(c)  # (cancelled: handed back by a fallback, to run inline)
        got.sort(key=lambda c: c.start)
        return got

    def release(self, hold_from: int | None) -> Iterator[list[Any]]:
        """Checked chunks at the head, none at or beyond ``hold_from``."""
        while self.chunks and self.chunks[0].checked and (hold_from is None or self.chunks[0].start < hold_from):
            chunk = self.chunks.popleft()
            chunk.live = False
            yield chunk.values  # type: ignore[misc]


def ramp_start(p: Profile, kind: str) -> int:
    """Items in a ramp's first chunk: about RAMP_SECONDS of work, and what a chunk costs
    whatever its size (one object passed as every item travels once a chunk: 266 KB of
    words, 5.7 ms) no more than a tenth of it. 0 (no ramp) without an item time."""
    t = p.item_time_mean
    if t <= 0:
        return 0
    per_chunk = p.item_pickle_time + p.item_load_time if kind == "process" and p.items_shared else 0.0
    return max(1, round(max(RAMP_SECONDS, RAMP_CHUNK_COST * per_chunk) / t))


class Feeder:
    """Chunks from the input, at most ``limit`` in flight; items to retry, and chunks handed
    back by a fallback, go first."""

    def __init__(
        self, rest: Iterator[Any], first_index: int, chunksize: int, limit: int, ramp: int = 0, end: int | None = None, workers: int = 1
    ) -> None:
        self.rest = rest
        self.next_index = first_index
        self.chunksize = chunksize
        self.ramp = ramp  # chunk size while it doubles up to chunksize (0: no ramp)
        # With a ramp and a known end, chunks shrink towards it (guided scheduling): doubled
        # chunks left one worker a chunk of a quarter of the job while the other idled.
        self.end = end if ramp else None
        self.workers = workers
        self.floor = ramp
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

    def next_chunk(self, size: int = 0) -> tuple[int, list[Any]] | None:
        """The next chunk: of ``size`` items if given, else of the chunksize (or the ramp's)."""
        if self.front:
            return self.front.popleft()
        size = size or self.chunksize
        if self.ramp:
            size = min(size, self.ramp)
        if self.end is not None:
            size = min(size, max(self.floor, -(-(self.end - self.next_index) // (2 * self.workers))))
        chunk = list(islice(self.rest, size))
        if not chunk:
            self.exhausted = True
            return None
        start = self.next_index
        self.next_index += len(chunk)
        return start, chunk

    def grow(self) -> None:
        """A chunk came back: the ramp doubles, as a TCP window does with each ack."""
        if self.ramp:
            self.ramp = 0 if 2 * self.ramp >= self.chunksize else 2 * self.ramp

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


CHECK, SERIAL, SWITCH = "check", "serial", "switch"  # Fallback.losing()'s verdicts


class Fallback:
    """Watches the pool's delivered rate against serial's and against its own prediction.
    A pool clearly losing to serial gives way to it: the rest of the input runs inline (in
    the caller). A pool clearly short of its prediction, where the runner-up pool of the
    other kind is predicted clearly faster than what this one delivers, gives way to that
    pool once. Nothing is lost or run twice either way.

    Serial's rate starts as the sample's item time. A pool that looks slower than that is
    not left on the sample's word: items can grow along the input, or run slower in a
    worker than in the caller (a forked heap, caches shared with the parent), and only
    timing a chunk in the caller tells which. So the first verdict is :data:`CHECK`: the
    run times the next small chunk serially, in the caller, and that becomes serial's
    rate; the pool is left only if it still loses over a window of chunks after it.

    The switch is judged over a longer window (:data:`SWITCH_MIN_TIME`, two chunks a
    worker) and only where the time it saves on the items left pays the other pool's start
    twice over: threads of GIL-free FFTs sharing one malloc arena delivered x1.42 where the
    probe read x1.9 and processes ran x1.8."""

    def __init__(self, job: Job) -> None:
        self.job = job
        result = job.result
        profile = result.profile if result is not None else None
        self.serial_item = profile.item_time_mean if profile is not None else 0.0
        self.cpu_bound = profile is not None and profile.cpu_ratio >= CPU_RATIO_CPU
        self.checked = False  # serial_item comes from a chunk timed in the caller
        self.doubt = False  # the last window lost to serial's rate: chunks stop growing
        self.t0: float | None = None  # window start: the first chunk back, or the check
        self.items = 0
        self.chunks = 0
        self.busy_items, self.busy_time = 0, 0.0  # in the workers, this pool's chunks
        self.alternative: Candidate | None = None  # the runner-up pool of the other kind
        self.predicted_rate = self.alternative_rate = 0.0  # steady items/s, predicted
        if result is not None and job.chosen and result.n_remaining > 0:
            self.predicted_rate = _steady_rate(result.n_remaining, result.predicted_time - result.start_cost)
            other = {"thread": "process", "process": "thread"}.get(job.kind)
            self.alternative = next((c for c in result.runner_ups if c.executor_type == other), None)
            if self.alternative is not None:
                alt = self.alternative
                self.alternative_rate = _steady_rate(result.n_remaining, alt.predicted_time - alt.start)

    def serial_timed(self, n_items: int, wall: float, cpu: float) -> None:
        """A chunk of n_items ran in the caller: serial's item time, and a new window."""
        if n_items:
            # CPU time for computing items: the wall time of a caller sharing the cores
            # with the pool's workers would flatter the pool.
            self.serial_item = (cpu if self.cpu_bound else wall) / n_items
            self.checked = True
        self.restart()

    def restart(self) -> None:
        """A new window (after a check, or on the pool switched to)."""
        self.t0, self.items, self.chunks = time.perf_counter(), 0, 0

    def busy(self, items: int, elapsed: float) -> None:
        """A pool chunk of ``items`` took ``elapsed`` seconds in its worker."""
        self.busy_items += items
        self.busy_time += elapsed

    def losing(self, items: int, left: int) -> tuple[str, str] | None:
        """``(verdict, why)``, or None; called with each pool chunk back, ``left`` items not
        handed out yet. Judged on the steady rate: from the first chunk back (the pool's
        start is paid whatever happens next) or from the last check."""
        if not (self.job.chosen and self.job.opts.adapt and self.serial_item > 0):
            return None
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
            return None
        self.items += items
        self.chunks += 1
        span = now - self.t0
        if span < FALLBACK_MIN_TIME or self.chunks < self.job.n_jobs:
            return None
        rate, serial_rate = self.items / span, 1.0 / self.serial_item
        self.doubt = rate < FALLBACK_RATE * serial_rate
        if self.doubt and not self.checked:
            return CHECK, ""
        if self.doubt:
            return SERIAL, (
                f"the pool delivered {rate:.4g} items/s against {serial_rate:.4g} items/s serially "
                f"({self.items} items over {span * 1e3:.0f} ms)"
            )
        self.checked = False  # items may drift: a later doubt is checked again
        return self._switch(span, left)

    def _switch(self, span: float, left: int) -> tuple[str, str] | None:
        """The pool's rate here is what its workers deliver while busy (n over the item
        time in a worker): the rate of chunks back over a window is low while chunks still
        grow (the work in flight is not counted), and read a pool on its prediction as 0.77
        of it."""
        alt, n = self.alternative, self.job.n_jobs
        if alt is None or span < SWITCH_MIN_TIME or self.chunks < 2 * n or not self.busy_time:
            return None
        rate = n * self.busy_items / self.busy_time
        if rate >= SWITCH_SHORTFALL * self.predicted_rate or self.alternative_rate < SWITCH_GAIN * rate:
            return None
        saved = left / rate - left / self.alternative_rate
        if saved < 2 * alt.start:
            return None
        return SWITCH, (
            f"the pool's workers delivered {rate:.4g} items/s where {self.predicted_rate:.4g} were "
            f"predicted ({self.busy_items} items), and {alt.executor_type} x{alt.n_jobs} was predicted "
            f"{self.alternative_rate:.4g} items/s"
        )

    def switched(self) -> None:
        """The run moved to the alternative pool: it is watched against its own prediction,
        and never switches back."""
        assert self.alternative is not None
        self.predicted_rate, self.alternative = self.alternative_rate, None
        self.checked = self.doubt = False
        self.t0, self.items, self.chunks = None, 0, 0
        self.busy_items, self.busy_time = 0, 0.0


def _steady_rate(items: int, seconds: float) -> float:
    return items / seconds if seconds > 0 else 0.0  # (0: no prediction to judge by)


class PoolRun:
    """One run on a thread or process pool: fill, wait, harvest, recover or adapt, release."""

    def __init__(self, job: Job, rest: Iterator[Any], first_index: int, total: int | None) -> None:
        self.job = job
        self.feeder = Feeder(rest, first_index, job.chunksize, 2 * job.n_jobs + 1, self._ramp(), total, job.n_jobs)
        self.inflight = InOrder()
        self.tuner = ChunkTuner(job, first_index, total)
        self.fallback = Fallback(job)
        self.inline: InlineBackend | None = None
        self.switch_to: str | None = None  # why the run is to move to the runner-up pool
        self.switched_from: str | None = None  # the kind of pool it left
        self.total, self.first_index = total, first_index
        self.done_time = 0.0
        self.done_items = 0
        self.done_chunks = 0
        self.last_progress = time.monotonic()
        self.pool_closed = False
        self.backend = self._backend()

    def _ramp(self) -> int:
        """Chunks of a chosen pool start at about RAMP_SECONDS of work and double with each
        chunk back up to the chunksize, so the pool's real rate is known, and a losing pool
        left, before much work is committed to it."""
        job = self.job
        if not (job.chosen and job.opts.adapt) or job.result is None:
            return 0
        return ramp_start(job.result.profile, job.kind)

    def _backend(self) -> ProcessBackend | ThreadBackend:
        job = self.job

        def make() -> Executor:
            return make_executor(job.kind, job.n_jobs, start_method=job.method, one_run=True)

        if job.kind == "thread":
            return ThreadBackend(job.func, make, job.pool, job.opts.collect)
        transport = (job.result.profile.transport if job.result is not None else None) or "pickle"
        return ProcessBackend(job.func, make, job.pool, transport, job.opts.collect, job.opts.timeout)

    # -- fill ------------------------------------------------------------------------------

    def submit(self, start: int, items: list[Any], attempt: int = 0) -> None:
        inline = self.inline is not None and not attempt
        try:
            if inline:
                fut = self.inline.submit(start, items)  # type: ignore[union-attr]
            else:
                with sigint_deferred():  # the pool's locks are never left taken
                    fut = self.backend.submit(start, items)
        except Unsendable as exc:
            self._unsendable(start, items, attempt, exc)
            return
        self.inflight.add(Chunk(start, items, fut, attempt, inline=inline))
        self.job.report.n_chunks += 1

    def _unsendable(self, start: int, items: list[Any], attempt: int, exc: Unsendable) -> None:
        """A chunk that does not pickle: name the item; collecting, run the others alone.
        A run that switched from threads to processes runs the rest inline instead: on the
        pool it started on, every item would have run."""
        if self.switched_from == "thread" and self.inline is None:
            at, _, why = self.job.report.fallback or (start, "", "")
            self.feeder.front.append((start, items))
            self._fall_back(f"item {exc.index} cannot go to a process ({exc.error}); from item {at}, {why}")
            return
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
            self._release_pool()
            # One inline chunk per turn of the loop, so the pool's last chunks are harvested
            # meanwhile; at most ``limit`` of them held behind an unfinished pool chunk.
            if self._can_run_inline():
                nxt = feeder.next_chunk()
                if nxt is not None:
                    self.submit(*nxt)
            return
        if self.switch_to is not None:
            if not all(c.checked for c in self.inflight):
                return  # the old pool's last chunks are still running
            self._switch()
        while len(self.inflight) < feeder.limit and feeder.has_more:
            nxt = feeder.next_chunk()
            if nxt is None:
                break
            self.submit(*nxt)

    def _release_pool(self) -> None:
        """After a fallback, the pool goes as soon as its last chunk is back: forked workers
        that live on make every page the caller writes to a copy (a serial pass over 600
        100 KB dicts took 1.21 s with two idle forked children alive, 0.89 s without)."""
        if not self.pool_closed and all(c.inline or c.checked for c in self.inflight):
            self.pool_closed = True
            self.backend.close(True)

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
        for c in self.inflight.take_done():
            if c.checked:
                continue  # failed in place while harvesting an earlier chunk
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
            values, elapsed, failures, _ = c.future.result()
            job.failed(failures)
            c.values = values if c.inline else self.backend.decode(values)
            c.checked = True
            job.bar.update(len(c.items))
            self.last_progress = time.monotonic()
            if not c.inline:
                self.done_time += elapsed
                self.done_items += len(c.items)
                self.done_chunks += 1
                self.fallback.busy(len(c.items), elapsed)
                self._judge(len(c.items))
                if not self.fallback.doubt:
                    self.feeder.grow()
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

    def _judge(self, items: int) -> None:
        if self.inline is not None or self.switch_to is not None:
            return
        self.tuner.adapt(self.feeder, self.done_time, self.done_items, self.done_chunks)
        verdict = self.fallback.losing(items, self._left())
        if verdict is None:
            return
        if verdict[0] == CHECK:
            self._time_serially()
        elif verdict[0] == SERIAL:
            self._fall_back(verdict[1])
        else:
            self._hand_back_unstarted()
            self.switch_to = verdict[1]

    def _left(self) -> int:
        """Items not handed out yet (estimated for input of unknown length)."""
        if self.total is not None:
            return self.total - self.feeder.next_index
        n = self.job.result.n_remaining if self.job.result is not None else 0
        return max(n + self.first_index - self.feeder.next_index, 0) + len(self.feeder.front)

    def _time_serially(self) -> None:
        """Run the next small chunk in the caller and take its time as serial's rate."""
        size = min(self.feeder.chunksize, max(1, int(RAMP_SECONDS / self.fallback.serial_item)))
        nxt = self.feeder.next_chunk(size)
        if nxt is None:
            return
        fut = InlineBackend(self.job.func, self.job.opts.collect).submit(*nxt)
        self.inflight.add(Chunk(nxt[0], nxt[1], fut, inline=True))
        self.job.report.n_chunks += 1
        _, wall, failures, cpu = fut.result()
        self.fallback.serial_timed(0 if failures else len(nxt[1]), wall, cpu)

    def _fall_back(self, why: str) -> None:
        """The rest runs inline; chunks the pool has not started come back to run inline too."""
        self.inline = InlineBackend(self.job.func, self.job.opts.collect)
        at = self._hand_back_unstarted()
        self.feeder.chunksize = max(1, int(0.02 / max(self.fallback.serial_item, 1e-9)))
        self.job.report.fallback = (at, "serial", why)

    def _hand_back_unstarted(self) -> int:
        """Chunks the pool has not started go back to the feeder; the first item not run."""
        for c in self.inflight.unchecked():
            if c.future.cancel():
                self.inflight.remove(c)
                self.feeder.front.append((c.start, c.items))
        self.feeder.front = deque(sorted(self.feeder.front, key=lambda f: f[0]))
        return self.feeder.front[0][0] if self.feeder.front else self.feeder.next_index

    def _switch(self) -> None:
        """Once the pool's last chunk is back, it is shut down and the runner-up pool takes
        the rest, ramping up as a chosen pool does. (Not before: a fork while the threads
        are inside the function could copy a lock one of them holds.)"""
        job, feeder, why = self.job, self.feeder, self.switch_to
        alt = self.fallback.alternative
        assert alt is not None and why is not None
        at = feeder.front[0][0] if feeder.front else feeder.next_index
        self.backend.close(True)
        self.switched_from = job.kind
        job.kind, job.n_jobs = alt.executor_type, alt.n_jobs
        if job.result is not None:
            costs = pool_costs(job.method)
            left = max(self._left(), 1)
            job.chunksize = best_chunksize(job.kind, job.n_jobs, left, job.result.profile, costs, job.result.usable_cores).chunksize
        feeder.chunksize, feeder.workers, feeder.limit = job.chunksize, job.n_jobs, 2 * job.n_jobs + 1
        feeder.ramp = feeder.floor = self._ramp()
        self.backend = self._backend()
        self.fallback.switched()
        self.switch_to = None
        job.report.fallback = (at, f"{alt.executor_type} x{alt.n_jobs} (chunksize {job.chunksize})", why)

    # -- the loop --------------------------------------------------------------------------

    def results(self) -> Iterator[list[Any]]:
        from .recovery import Watchdog, recover  # recovery works on a PoolRun

        clean = False
        try:
            while True:
                self.fill()
                if not len(self.inflight):
                    break
                if self.inflight.waiting():
                    busy_inline = self._can_run_inline()
                    timeout = 0 if busy_inline else Watchdog.wait_timeout(self)
                    done = self.inflight.wait(timeout)
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
            if not self.pool_closed:
                self.backend.close(clean)


def _raise_pool_error(exc: BaseException, kind: str, chunk: Chunk) -> None:
    if hasattr(exc, "add_note"):
        last = chunk.start + len(chunk.items) - 1
        exc.add_note(f"autopar: sending or running items {chunk.start}-{last} on a {kind} pool failed")
    raise exc
