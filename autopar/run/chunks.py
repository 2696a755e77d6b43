"""A run's pieces below its loop: the :class:`Job` (everything a run needs besides its
input), its chunks in flight in input order (:class:`Chunk`, :class:`InOrder`), and the
:class:`Feeder` that cuts the input into chunks (a ramp first, retries and handed-back chunks
ahead of new ones). :mod:`.dispatch` runs the loop on them; :mod:`.adapt` acts on them too.
"""

from __future__ import annotations

import bisect
import queue
import time
import weakref
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterator

from ..errors import ItemFailed, settle
from ..options import Options
from ..tune.result import OptimizationResult
from ..tune.sample import Profile
from .report import ExecutionReport, Progress

__all__ = ["Chunk", "Feeder", "InOrder", "Job", "RAMP_CHUNK_COST", "RAMP_SECONDS", "ramp_start"]

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
    own_pool: bool = False  # ``pool`` was made for this run (a Dask client): closed after it

    @property
    def chosen(self) -> bool:
        """The configuration came from optimize(), not from the caller: it may be revised."""
        return self.result is not None and self.opts.executor_type is None and self.pool is None

    def failed(self, failures: list[tuple[int, BaseException, str]]) -> None:
        """The one failure rule; collected failures are noted in the report."""
        self.report.failures.extend(settle(failures, self.kind, self.opts.collect))

    def fail_in_place(self, chunk: "Chunk", error: BaseException) -> "Chunk":
        """Collecting: every item of ``chunk`` gets ``error`` in its place; the chunk is done."""
        failures = [(chunk.start + i, error, "") for i in range(len(chunk.items))]
        now = time.perf_counter()
        self.report.span(chunk.start, len(chunk.items), now - (time.monotonic() - chunk.sent), now, "failed")
        self.failed(failures)
        chunk.values = [ItemFailed(i, error) for i, _, _ in failures]
        chunk.checked = True
        chunk.future = Future()
        chunk.future.set_result(None)  # done, so that nothing waits on it
        return chunk


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
    sent: float = field(default_factory=time.monotonic)
    done_at: float = 0.0  # time.perf_counter() when its result came back


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
        # The future holds this callback, and the queue the chunk once done: weak references
        # here, or each would hold the other in a cycle.
        done, ref = weakref.ref(self.done), weakref.ref(chunk)

        def back(_f: Future) -> None:
            c, q = ref(), done()
            if c is not None and q is not None:  # (else the chunk or the run is let go)
                c.done_at = time.perf_counter()
                q.put(c)

        chunk.future.add_done_callback(back)

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

    def forget(self) -> None:
        """The run is over: chunks in flight are cancelled and let go (a failed run's
        traceback keeps the run; a chunk's future may hold the very exception raised)."""
        for c in self.chunks:
            c.future.cancel()
            c.live = False
        self.chunks, self.done = deque(), queue.SimpleQueue()

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
        self, rest: Iterator[Any], first_index: int, chunksize: int, limit: int, ramp: int = 0, end: int | None = None,
        workers: int = 1, floor: int | None = None,
    ) -> None:
        self.rest = rest
        self.next_index = first_index
        self.chunksize = chunksize
        self.ramp = ramp  # chunk size while it doubles up to chunksize (0: no ramp)
        # The least chunk towards a known end (``ramp`` unless given; 0: none). With one,
        # chunks shrink towards the end (guided scheduling): doubled chunks left one worker a
        # chunk of a quarter of the job while the other idled.
        self.floor = ramp if floor is None else floor
        self.end = end if self.floor else None
        self.workers = workers
        self.limit = limit
        self.exhausted = False
        # The input's own error: raised once every item read before it has run and come back.
        self.error: Exception | None = None
        self.retry: deque[tuple[int, list[Any], int]] = deque()  # (start, items, attempt)
        self.front: deque[tuple[int, list[Any]]] = deque()  # not run yet, before next_index

    def hold_from(self) -> int | None:
        """Results are not released at or past an item waiting to run again, or to run at
        all: a chunk handed back by a fallback or a switch waits in ``front`` while later
        chunks still in the pool come back (released at its place, they put every result
        from there on one chunk off)."""
        waiting = [q[0][0] for q in (self.retry, self.front) if q]
        return min(waiting) if waiting else None

    def add_retry(self, start: int, items: list[Any], attempt: int) -> None:
        self.retry.append((start, items, attempt))
        self.retry = deque(sorted(self.retry, key=lambda r: r[0]))

    def retry_each(self, chunks: list[Chunk], again: bool) -> None:
        """The items of ``chunks`` (taken off a broken pool) go again, one a chunk, so that a
        second crash names its item; ``again``: as one more attempt."""
        for c in chunks:
            for i, item in enumerate(c.items):
                self.add_retry(c.start + i, [item], c.attempt + again)

    def put_back(self, start: int, items: list[Any]) -> None:
        """A chunk sent but not started goes out again before anything new, in input order."""
        bisect.insort(self.front, (start, items), key=lambda f: f[0])

    def next_chunk(self, size: int = 0) -> tuple[int, list[Any]] | None:
        """The next chunk: of ``size`` items if given, else of the chunksize (or the ramp's)."""
        if self.front:
            return self.front.popleft()
        size = size or self.chunksize
        if self.ramp:
            size = min(size, self.ramp)
        if self.end is not None:
            size = min(size, max(self.floor, -(-(self.end - self.next_index) // (2 * self.workers))))
        chunk: list[Any] = []
        try:
            chunk.extend(islice(self.rest, size))  # (items read before an error stay in the list)
        except Exception as exc:
            # The input failed: what it gave before goes out as usual, its error comes after.
            self.error, self.exhausted = exc, True
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

    def raise_input_error(self) -> None:
        """The input's error, once everything read before it is done (then forgotten: kept,
        its traceback would tie this feeder to itself)."""
        error, self.error = self.error, None
        if error is not None:
            raise error
