"""Sample the work: run a few items serially, then a few on threads at once, and measure.

The steps, each a method of :class:`_Sampler`::

    source ──► first item ──► serial batches ──► item stats ──► pickling ──► probe ──► assemble
    (_Source:   (warm-up, RSS   (doubling while    (robust mean,  (func, first,  (k threads,   Profile +
     pull,       growth, maybe   items < 1 ms,      spread, CPU    middle, last   rounds until  SampleStash
     push back)  one item run    CPU per batch)     ratio)         item/result)   clear)
                 ahead)

The serial sample grows until a time budget is spent (``budget`` seconds, or 2.5% of the
estimated total when the item count is known, whichever is smaller, never below
``min_budget``). On 2 cores a serial share f of the job costs about f of the parallel run's
time, so the share is kept small. Fast items are timed in doubling batches so the clock does
not dominate what it measures. A thread polls the resident memory while the second item, or
for items too long for that the first probe round, runs; the first item is left out of the
timing figures when other items were timed (it pays the warm-up).

The item's CPU time is the calling thread's, plus threads the function starts, plus native
helper threads (BLAS) while the calling thread computes too; see :class:`CpuMeter`. Library
threads spinning in the background do not make a sleeping item CPU-bound.

The **concurrency probe** (only when threads are candidates) runs the next items on ``k``
threads at once (8 for work that mostly waits), in rounds of at least 20 ms per thread. It
stops as soon as the evidence is clear: a round that scales like one thread or like ``k``
ends it; only a round in between, which noise may have slowed, earns a second. For CPU-bound
work the scaling is the function's CPU during the round over one item's CPU ratio (pure
Python on k threads keeps one core busy, GIL-free work keeps k busy), which does not depend on
the probe items being the same size as the sampled ones; for waiting work it is throughput
against the serial items' mean time.

In a short job (at most ``SPECULATE_MAX_ITEMS`` items) where threads are candidates, a helper
thread starts the second item once the first has run ``min_budget``: with slow items, a core
would otherwise idle through the whole first item.

Every item the sample or the probe ran is kept with its result in a :class:`SampleStash`, so
``execute()`` neither loses items of a one-shot iterator nor computes them twice. The stash
never holds a one-shot iterator itself (it would keep it alive through the registry of
pending results): ``execute()`` passes the same iterator back.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import Any, Callable, Iterable

from .. import _serialize
from ..backends.blas import blas_share, capped_blas
from ..backends.worker import Limited, Span, run_items
from ..errors import ItemFailed, settle
from .measure import CPU_BOUND, CpuMeter, NewThreadsCpu, PeakRSS, busy_clock, native_threads, queued_seconds, rss
from .remote import RemoteItems
from .stash import SampleStash
from .system import threaded_blas_loaded

__all__ = ["Profile", "SampleStash", "sample", "known_length"]

SAMPLE_SHARE = 0.025  # share of the estimated total the serial sample (and the probe) may take
# Input of unknown length is taken to hold this much work, for the sample's share as for the
# model (which assumes no less): a pool picked for a shorter job loses its start, serial
# picked for a longer one the whole speedup. A generator of 341 items of 3 ms spent 0.4 s
# of a 1 s job in the sample when its budget was the full 0.2 s (and the probe half that).
UNKNOWN_SECONDS = 1.0
IO_BOUND = 0.3  # CPU/wall under which work is probed on IO_PROBE_THREADS threads
IO_PROBE_THREADS = 16
AHEAD_MAX = 64  # items a short job of waiting items runs at once beside its first
AHEAD_MEMORY_SHARE = 0.05  # of available memory, for the items run ahead (growth so far x count)
PROBE_ROUND_MIN = (0.006, 0.02)  # seconds of work per thread: first round, second round
WAIT_ROUND_MIN = 0.002  # ... a first round of waiting work on more threads than CPUs
SECOND_ROUND_SHARE = 0.5  # a second probe round takes at most this share of the items left
LONG_ROUND_SHARE = 0.1  # ... and a longer one (an unclear first reading) about this share, if more than a first round
PROBE_CLEAR = (1.15, 0.85)  # a round scaling <= 1.15, or >= 0.85 k, settles the probe
WAIT_CLEAR = 0.3  # ... or >= 0.3 k on more threads than CPUs (waiting work)
SLOWER_TOGETHER = 0.85  # a round's throughput under this (of one thread's) settles a low reading at once
# A probe this close to k threads' worth: the work does not hold the GIL (the model's
# rule). GIL-free work (lzma, FFT) still read x1.4-1.6 on 2 threads in about a quarter of
# optimize() calls, and went to processes; work that does hold it part of the time (NumPy
# small calls, processes 3.6x faster than threads) read x1.22-1.35 in 30 calls.
PARALLEL_SCALING = 0.75
# ... and under this (CPU/wall under 0.9), threads slower together than one alone: a shared
# resource outside Python, which processes would share too.
SHARED_RESOURCE_SCALING = 0.85
CHEAP_MISREAD = 0.05  # pickling an item and its result, over its time: under it a reading for processes settles at once
BLAS_STEP_MIN_ITEMS = 40  # items left from which two are worth timing with BLAS capped
PURE_COMPUTE = 0.9  # CPU/wall from which items are timed with BLAS capped on suspicion
BLAS_FASTER = 0.9  # items this much faster with BLAS at one thread are BLAS work
NATIVE_FASTER = 0.95  # the same, for items native threads were seen computing beside
NATIVE_THREADS = 1.3  # items' CPU/wall from which native threads computed beside them
MIN_SAVING = 0.01  # seconds: no pool is worth starting to save less (the model's rule too)
FINISH_SEEN = 4  # a rest under MIN_SAVING runs in the sample once it is at most this many times the items timed
PROBE_MIN_WORK = 0.03  # seconds of work left, under which no pool can win back what a probe costs
WARMUP_OVERLAP = 0.5  # an item beside the first that waited this share of its time waited on it
WARMUP_END = 0.1  # ... and ended within this share of the first item's time from its end
SPECULATE_MAX_ITEMS = 1000  # jobs of at most this many items start a second item early
GROWTH_POINTS = 4  # timed batches from which a trend along the input is fitted
GROWTH_FIT = 0.8  # R^2 of the linear fit from which items count as growing
GROWTH_FACTOR = 1.5  # items ahead at least this much over the mean so far


@dataclass(frozen=True)
class Profile:
    """What the sample measured. Times in seconds, sizes in bytes, per item unless named.

    ``*_pickle_time`` is a dumps + loads round trip; ``*_load_time`` the loads part of it.
    """

    n_sampled: int
    n_probed: int
    n_items: int | None
    item_time_mean: float
    item_time_std: float
    item_time_max: float
    cpu_ratio: float
    func_bytes: int
    func_pickle_time: float
    item_bytes: float
    item_pickle_time: float
    result_bytes: float
    result_pickle_time: float
    transport: str | None
    pickle_error: str | None
    peak_memory_per_item: int
    thread_scaling: float | None
    probe_threads: int
    sample_time: float
    exhausted: bool
    item_load_time: float = 0.0
    result_load_time: float = 0.0
    probe_rounds: int = 0
    items_shared: bool = False  # every sampled item is one and the same object
    single_blas_time: float | None = None  # item time with BLAS at one thread (items kept native threads busy)
    blas_live: bool = False  # a BLAS pool of several threads was loaded and running: probes and thread pools cap it
    # A pipeline's stages, kept with its profile in the tuning cache: each stage's (wall, CPU)
    # seconds an item and the bytes its output pickles to (inf: it does not pickle).
    stage_times: tuple[tuple[float, float], ...] = ()
    stage_bytes: tuple[float, ...] = ()
    # The first item's time where it was a one-time cost (an import, a cache filled): an item
    # run beside it waited on it rather than ran, and the figures come from later items.
    warmup_time: float | None = None

    @property
    def n_done(self) -> int:
        return self.n_sampled + self.n_probed

    @property
    def n_remaining(self) -> int | None:
        if self.exhausted:
            return 0
        return None if self.n_items is None else max(self.n_items - self.n_done, 0)

    @property
    def item_time_cv(self) -> float:
        return self.item_time_std / self.item_time_mean if self.item_time_mean > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_length(data: Any, n_items: int | None) -> int | None:
    if n_items is not None:
        return n_items
    try:
        return len(data)
    except TypeError:
        pass
    hint = operator.length_hint(data, -1)
    return hint if hint > 0 else None


class _Source:
    """Where the sample takes items from. Lists and tuples are sliced (a copy of pointers),
    anything else goes through ``islice``; items taken ahead and not run go back in front."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data
        self.it = iter(data)
        self.one_shot = self.it is data
        self.seq = data if type(data) in (list, tuple) else None
        self.pos = 0
        self.exhausted = False
        self.error: Exception | None = None  # what the input raised, if it did
        self.ahead: list[Any] = []

    def pull(self, n: int) -> list[Any]:
        head, self.ahead = self.ahead[:n], self.ahead[n:]
        n -= len(head)
        if n <= 0:
            return head
        if self.seq is not None:
            batch = self.seq[self.pos : self.pos + n]
            batch = list(batch) if type(batch) is tuple else batch
            self.pos += len(batch)
        else:
            batch = []
            try:
                batch.extend(islice(self.it, n))  # what was read before an error stays
            except Exception as exc:  # the input itself failed: the run raises it after these
                self.error = exc
                self.exhausted = True
        self.exhausted = self.exhausted or len(batch) < n
        return head + batch if head else batch

    def span(self, n: int) -> "list[Any] | Span":
        """The next ``n`` items without copying them where the input is a list or tuple and
        nothing was put back (tiny items: the copy cost as much as the loop's overhead)."""
        if self.seq is None or self.ahead:
            return self.pull(n)
        part = Span(self.seq, self.pos, min(n, len(self.seq) - self.pos))
        self.pos += len(part)
        self.exhausted = self.exhausted or len(part) < n
        return part

    def push_back(self, items: list[Any]) -> None:
        self.ahead[:0] = items

    @property
    def done(self) -> bool:
        """Nothing left to pull: the input ended and nothing was put back."""
        return self.exhausted and not self.ahead


class _Ahead:
    """Items run ahead on helper threads while the caller runs the first item.

    A coordinator thread looks at the caller's thread after ``EARLY`` seconds: if the first
    item is still running and mostly waiting (it barely ran or queued for a core), every item given
    runs at once on threads of its own (slow start for waiting work: a job of a few slow
    waits is done in the time of one). Otherwise, past ``delay``, one item runs beside the
    first, so that a core does not idle through a slow item. Items that did not run go back
    to the input; ``stop_or_finish()`` cancels what has not started and waits for the rest.
    """

    EARLY = 0.005

    def __init__(self, func: Callable[..., Any], items: list[Any], delay: float, caller: int, caller_tid: int) -> None:
        self.func, self.items, self.delay = func, items, delay
        n = len(items)
        self.results: list[Any] = [None] * n
        self.errors: list[BaseException | None] = [None] * n
        self.walls, self.cpus, self.ends = [0.0] * n, [0.0] * n, [0.0] * n
        self.ran = [False] * n
        self.waiting = False
        self.round_wall = 0.0
        self._cancel = threading.Event()
        self._busy = busy_clock(caller, caller_tid)
        self._thread = threading.Thread(target=self._coordinate, name="autopar-sample-ahead", daemon=True)
        self._thread.start()

    def _run_one(self, i: int) -> None:
        self.ran[i] = True
        h0, t0 = time.thread_time(), time.perf_counter()
        try:
            self.results[i] = self.func(self.items[i])
        except BaseException as exc:  # handed to the caller by the sampler
            self.errors[i] = exc
        self.ends[i] = time.perf_counter()
        self.walls[i], self.cpus[i] = self.ends[i] - t0, time.thread_time() - h0

    def _coordinate(self) -> None:
        t0 = time.perf_counter()
        c0 = self._busy() if self._busy is not None else 0.0
        rss0 = rss()
        if self._cancel.wait(self.EARLY):
            return
        if self._busy is not None and len(self.items) > 1:
            used = self._busy() - c0
            self.waiting = used / max(time.perf_counter() - t0, 1e-9) < IO_BOUND
        if self.waiting:
            # Memory: what the first item has grown so far, times the items run beside it.
            count = len(self.items)  # the rest (never started) goes back to the input
            grown = rss() - rss0
            if grown > 0:
                import psutil

                count = min(count, max(1, int(AHEAD_MEMORY_SHARE * psutil.virtual_memory().available // grown)))
            helpers = [
                threading.Thread(target=self._run_one, args=(i,), name=f"autopar-sample-ahead-{i}", daemon=True)
                for i in range(1, count)
            ]
            t1 = time.perf_counter()
            for t in helpers:
                t.start()
            self._run_one(0)
            for t in helpers:
                t.join()
            self.round_wall = time.perf_counter() - t1
            return
        if self._cancel.wait(max(self.delay - self.EARLY, 0.0)):
            return
        self._run_one(0)

    def stop_or_finish(self) -> None:
        self._cancel.set()
        self._thread.join()

    def n_ran(self) -> int:
        """Items that ran: always the first ``n_ran()`` given."""
        return sum(self.ran)


def _probe(
    func: Callable[..., Any], items: list[Any], k: int, first_index: int, collect: bool
) -> tuple[list[Any], float, float, float, float]:
    """Run ``items`` on ``k`` threads at once. Returns (results, wall, the function's CPU,
    the round's whole wall time, the threads' mean wait for a core).

    The threads start together only once all of them run: each yields its turn until the
    last has arrived (sleeping threads would let their cores idle again). A core that sat
    idle through the serial sample can take milliseconds to wake on a virtual machine, and
    a round of 6 ms then read x1.0 for work that runs x1.95 on two threads. More threads
    than CPUs wait on an event instead: 16 threads yielding to each other on 2 CPUs took
    7-20 ms to all arrive, 64 took 0.15-0.3 s, for a round of 6 ms.
    The wall time is the mean over the threads of the time each took: the round's tail (one
    thread still on its last item while the others are done) says nothing about how the
    threads run together, and a pool's tail is the model's makespan term already. CPU over
    wall, though, takes the whole round: threads holding the GIL take turns unevenly (one
    ran both its items, then the other), and over their mean wall pure Python read x1.3-1.5."""
    results: list[Any] = [None] * len(items)
    failures: list[tuple[int, BaseException, str]] = []
    arrived = [0]
    lock = threading.Lock()
    ends = [0.0] * k
    queues = [0.0] * k  # each thread's wait for a core (other processes busy) over the round
    spin = k <= _cpus()
    go = threading.Event()
    cpus = _cpu_list() if spin else []

    def worker(slot: int) -> None:
        if cpus:
            _own_cpus(cpus[slot::k])
        with lock:
            arrived[0] += 1
        if not spin:
            go.wait()
        while arrived[0] <= k:  # the caller counts itself in once all k are here
            time.sleep(0)
        q0 = queued_seconds()
        try:
            for i in range(slot, len(items), k):
                try:
                    results[i] = func(items[i])
                except BaseException as exc:  # settled in the caller below
                    failures.append((first_index + i, exc, ""))
                    if not collect or not isinstance(exc, Exception):
                        return
                    results[i] = ItemFailed(first_index + i, exc)
        finally:
            ends[slot] = time.perf_counter()
            queues[slot] = queued_seconds() - q0

    threads = [
        threading.Thread(target=worker, args=(s,), name=f"autopar-probe-{s}", daemon=True) for s in range(k)
    ]
    # The probe's threads count from the start signal on; threads that ran before the probe
    # (the caller, a BLAS pool spinning on after an earlier call) do not.
    meter = NewThreadsCpu().start()
    for t in threads:
        t.start()
    while arrived[0] < k:
        time.sleep(0) if spin else time.sleep(0.0002)
    meter.mark()
    t0 = time.perf_counter()
    with lock:
        arrived[0] += 1  # go
    go.set()
    for t in threads:
        t.join()
    cpu = meter.stop()
    wall = sum(ends) / k - t0
    settle(sorted(failures, key=lambda f: f[0]), "thread (probe)", collect)
    return results, wall, cpu, max(ends) - t0, sum(queues) / k


def _own_cpus(cpus: list[int]) -> None:
    """Keep the calling probe thread on ``cpus`` (probe thread ``slot`` of k gets every k-th
    usable CPU from ``slot``; threads it starts inherit them). Left to the scheduler, two
    threads started on one CPU ran there for the first milliseconds while the other CPU
    woke: GIL-free work (lzma, FFT, sha256) read x0.9-1.1 on 2 threads in a third of first
    rounds, and 1 in 30 so kept apart. Only the probe's own short-lived threads are moved."""
    try:
        os.sched_setaffinity(0, cpus)  # 0: the calling thread, on Linux
    except (AttributeError, OSError):  # not on Linux, or not allowed: the scheduler decides
        pass


def _cpu_list() -> list[int]:
    """CPUs this process may run on (affinity), empty where that cannot be read."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return []


def _cpus() -> int:
    """CPUs this process may run on (affinity; no quota: a yielding thread needs a CPU)."""
    return len(_cpu_list()) or os.cpu_count() or 1


def _robust_mean(batches: list[tuple[int, float]]) -> float | None:
    """Mean item time with outliers (over 3x the median, noise on a shared machine) left out."""
    if not batches:
        return None
    per_item = sorted(t / b for b, t in batches)
    median = per_item[len(per_item) // 2]
    kept = [(b, t) for b, t in batches if t / b <= 3 * median]
    return sum(t for _, t in kept) / sum(b for b, _ in kept)


@dataclass
class _Stats:
    mean: float
    std: float
    tmax: float
    cpu_ratio: float
    reference: float  # the robust mean, for the probe
    own_ratio: float  # the calling thread's CPU / wall alone (no native threads counted)


@dataclass
class _Pickling:
    transport: str | None
    error: str | None
    func_bytes: int = 0
    func_time: float = 0.0
    item_bytes: float = 0.0
    item_time: float = 0.0
    item_load: float = 0.0
    result_bytes: float = 0.0
    result_time: float = 0.0
    result_load: float = 0.0
    items_shared: bool = False


class _Sampler:
    """One sample of ``func`` over ``data``; ``run()`` takes the steps in order."""

    def __init__(
        self,
        func: Callable[..., Any],
        data: Iterable[Any],
        n_items: int | None,
        budget: float,
        min_budget: float,
        probe_threads: int,
        probe: bool,
        collect: bool,
        finish: bool = False,
        timeout: float | None = None,
        remote: RemoteItems | None = None,
    ) -> None:
        self.t_begin = time.perf_counter()
        self.finish = finish
        # The items run under the run's time limit wherever the sample runs them.
        self.func = Limited(func, timeout) if timeout is not None else func
        self.user_func, self.data, self.remote = func, data, remote
        self.budget, self.min_budget = budget, min_budget
        self.probe_threads, self.probe_wanted, self.collect = probe_threads, probe, collect
        self.src = _Source(data)
        self.n_total = known_length(data, n_items)
        self.item_blocks: list[list[Any] | Span] = []  # items in blocks, one per batch
        self.results: list[Any] = []  # one list: execute() adopts it, no join of blocks
        self.failures: list[int] = []  # indices of the items that failed (collect mode)
        self.done = 0
        self.n_probed = 0
        self.batches: list[tuple[int, float]] = []  # timed (items, seconds)
        self.batch_pos: list[float] = []  # each timed batch's middle position in the input
        self.ratios: list[float] = []  # the function's CPU / wall of batches long enough to tell
        self.own_ratios: list[float] = []  # the calling thread's alone, of the same batches
        self.peak = 0
        self.first_time = self.first_cpu = self.first_own = 0.0
        self.first_active = 0.0  # the first item's wall time less its wait for a core
        self.first_end = 0.0
        self.warmup = False  # the first call's one-time cost held up an item beside it
        self.watch_memory = False
        self.waiting = False
        self.ahead_round: tuple[float, int, int] | None = None  # (scaling, threads, items)
        self.single_blas_time: float | None = None
        self.blas_live = False

    # -- steps --------------------------------------------------------------------------

    def run(self) -> tuple[Profile, SampleStash]:
        if self.first_item():
            self.serial_batches()
        stats = self.item_stats()
        pickling = _pickling_step(self)
        self.single_blas_time, stats = _blas_step(self, stats)
        scaling, k_used, rounds = _probe_step(self, stats, _misread_is_cheap(pickling, stats))
        return self.assemble(stats, pickling, scaling, k_used, rounds)

    def _keep(self, items: "list[Any] | Span", results: list[Any]) -> None:
        self.item_blocks.append(items)
        if results is not self.results:  # serial batches write into it directly
            self.results.extend(results)
        self.done += len(items)

    def first_item(self) -> bool:
        """Run the first item alone (warm-up, RSS growth); in a short job of slow items, the
        second runs ahead on a helper thread meanwhile. False when the input is empty."""
        first = self.src.pull(1)
        if not first:
            return False
        if self.remote is not None:
            return _first_remote(self, first)
        spec = None
        n = self.n_total
        if n is not None and 3 <= n <= SPECULATE_MAX_ITEMS and self.probe_wanted:
            ahead = self.src.pull(min(n - 1, AHEAD_MAX))
            if ahead:
                spec = _Ahead(self.func, ahead, self.min_budget, threading.get_ident(), threading.get_native_id())
        rss0 = rss()
        meter = CpuMeter().start()
        try:
            try:
                result = self.func(first[0])
            except BaseException as exc:
                result = ItemFailed(0, exc)
                self.failures += settle([(0, exc, "")], "serial (sample)", self.collect)
        finally:
            wall, own, cpu = meter.stop()
            self.first_end = time.perf_counter()
            if spec is not None:
                spec.stop_or_finish()
        self.peak = max(rss() - rss0, 0)
        self._keep(first, [result])
        queued = meter.queued  # waiting for a core (other processes busy): not waiting on I/O
        if spec is not None and spec.n_ran() and wall > 0 and own / CpuMeter.active(wall, queued, own) >= CPU_BOUND / 2:
            # The helper shared the machine with the first item: its own CPU time is its
            # serial time, and its CPU ratio its own.
            wall = cpu = max(own, 1e-9)
            queued = 0.0
        self.first_time, self.first_cpu, self.first_own = wall, cpu, min(own, cpu)
        self.first_active = CpuMeter.active(wall, queued, own)
        contended = False
        if spec is not None:
            if spec.waiting:  # the RSS growth was theirs too
                self.peak //= 1 + spec.n_ran()
            contended = _speculated(self, spec)
        if contended:  # the first item shared too few cores: its own CPU time is its time
            self.first_time = self.first_active = wall = cpu = max(own, 1e-9)
            self.first_cpu = own
        # Peak memory: an item under 1 ms cannot touch much memory, so only its RSS growth
        # counts; a longer one has the next item, or the probe, watched by the RSS poller.
        self.watch_memory = wall >= 1e-3
        # An item that mostly waits: the thread probe measures it better than serial items.
        self.waiting = not contended and wall >= 1e-3 and cpu / self.first_active < IO_BOUND
        return True

    def _target(self, mean: float) -> float:
        if self.n_total is None:
            return min(self.budget, max(self.min_budget, SAMPLE_SHARE * UNKNOWN_SECONDS))
        return min(self.budget, max(self.min_budget, SAMPLE_SHARE * self.n_total * mean))

    def serial_batches(self) -> None:
        """Timed batches, doubling while items take under 1 ms, until the budget is spent."""
        min_timed = 0 if self.waiting else (2 if self.first_time < 0.005 else 1)
        batch_size = 1
        while not self.src.done:
            timed = sum(b for b, _ in self.batches)
            mean = sum(t for _, t in self.batches) / timed if timed else self.first_time
            if self.n_total is not None and self.done >= self.n_total:
                break
            elapsed = time.perf_counter() - self.t_begin
            target = self._target(mean)
            # The first item pays the warm-up: it stands alone only when it is longer than the
            # whole budget (items of seconds), never just longer than a small job's share, and
            # never where it was a one-time cost others waited on (``warmup``).
            stands = self.first_time >= self.budget and not self.warmup
            if (elapsed >= target or self.waiting) and (timed >= min_timed or stands):
                break
            if self.n_total is not None:
                left = self.n_total - self.done
                batch_size = min(batch_size, left)
                if self.finish and batch_size < left <= FINISH_SEEN * timed and left * mean < MIN_SAVING:
                    # Under MIN_SAVING of work left the model ranks no pool: the sample runs
                    # the rest itself, read to its end in place, once the items timed are a
                    # fair share of it (a few fast ones first say little of the rest).
                    batch_size = left
            batch = self.src.span(batch_size)
            if not batch:
                break
            if self.remote is not None:
                if not _timed_remote(self, batch):
                    break
                batch_size = batch_size * 2 if self.batches[-1][1] / len(batch) < 1e-3 else 1
                continue
            meter = CpuMeter(attribute=batch_size * mean >= 1e-3)
            with PeakRSS() if self.watch_memory else nullcontext() as mem:
                meter.start()
                out, failed = run_items(self.func, self.done, batch, self.collect, remote=False, out=self.results)
                dt, do, dc = meter.stop()
            self.failures += settle(failed, "serial (sample)", self.collect)
            if self.watch_memory:
                self.peak, self.watch_memory = max(self.peak, mem.peak // len(batch)), False
            self._keep(batch, out)
            self.batches.append((len(batch), dt))
            self.batch_pos.append(self.done - (len(batch) + 1) / 2)  # _keep counted them
            if dt >= 1e-3:  # long enough for the CPU clock to mean something
                active = CpuMeter.active(dt, meter.queued, do)  # less the wait for a core
                self.ratios.append(dc / active)
                self.own_ratios.append(min(do, dc) / active)
            batch_size = batch_size * 2 if dt / len(batch) < 1e-3 else 1

    def item_stats(self) -> _Stats:
        timed = sum(b for b, _ in self.batches)
        if not timed:  # only the first item ran
            t, active = self.first_time, self.first_active
            ratio, own = (self.first_cpu / active, self.first_own / active) if t > 0 else (1.0, 1.0)
            return _Stats(t, 0.0, t, ratio, t, own)
        mean = sum(t for _, t in self.batches) / timed
        var = sum(b * (t / b - mean) ** 2 for b, t in self.batches) / len(self.batches)
        tmax = max(max(t / b for b, t in self.batches), 0.0 if self.warmup else self.first_time)
        ratio = sorted(self.ratios)[(len(self.ratios) - 1) // 2] if self.ratios else 1.0
        own = sorted(self.own_ratios)[(len(self.own_ratios) - 1) // 2] if self.own_ratios else ratio
        reference = _robust_mean(self.batches) or mean
        ahead = _growing_mean(self.batches, self.batch_pos, self.done, self.n_total, mean)
        if ahead > mean:  # the items not run yet, if the trend goes on; the probe runs those
            var += (ahead - mean) ** 2
            mean, tmax, reference = ahead, max(tmax, ahead), ahead
        return _Stats(mean, math.sqrt(var), tmax, ratio, reference, own)

    def assemble(self, stats: _Stats, pk: _Pickling, scaling: float | None, k_used: int, rounds: int) -> tuple[Profile, SampleStash]:
        exhausted = self.src.done
        n_total = self.done if exhausted else self.n_total
        profile = Profile(
            n_sampled=self.done - self.n_probed,
            n_probed=self.n_probed,
            n_items=n_total,
            item_time_mean=stats.mean,
            item_time_std=stats.std,
            item_time_max=stats.tmax,
            cpu_ratio=stats.cpu_ratio,
            func_bytes=pk.func_bytes,
            func_pickle_time=pk.func_time,
            item_bytes=pk.item_bytes,
            item_pickle_time=pk.item_time,
            result_bytes=pk.result_bytes,
            result_pickle_time=pk.result_time,
            transport=pk.transport,
            pickle_error=pk.error,
            peak_memory_per_item=int(self.peak),
            thread_scaling=scaling,
            probe_threads=k_used,
            sample_time=time.perf_counter() - self.t_begin,
            exhausted=exhausted,
            item_load_time=pk.item_load,
            result_load_time=pk.result_load,
            probe_rounds=rounds,
            items_shared=pk.items_shared,
            single_blas_time=self.single_blas_time,
            blas_live=self.blas_live,
            warmup_time=self.first_time if self.warmup else None,
        )
        stash = SampleStash(
            func=self.user_func,
            data=self.data,
            one_shot=self.src.one_shot,
            item_blocks=self.item_blocks,
            result_blocks=[self.results] if self.results else [],
            ahead=self.src.ahead,
            exhausted=exhausted,
            failures=self.failures,
            input_error=self.src.error,
        )
        return profile, stash


def _first_remote(sp: "_Sampler", first: list[Any]) -> bool:
    """The first item in the sample's worker process (``executor_type="process"``)."""
    got = _remote_batch(sp, first)
    if got is None:
        return False
    wall, cpu = got
    sp.first_time, sp.first_cpu, sp.first_own = wall, cpu, cpu
    sp.first_active = wall
    sp.watch_memory = False  # another process's memory: the RSS poller cannot see it
    sp.waiting = wall >= 1e-3 and cpu / wall < IO_BOUND
    return True


def _remote_batch(sp: "_Sampler", batch: "list[Any] | Span") -> tuple[float, float] | None:
    """Run a batch in the sample's worker process; (wall, CPU) seconds, or None where it
    did not come back (its items go back in front, for the run's pool to meet)."""
    items = list(batch)
    got = sp.remote.run(sp.done, items)  # type: ignore[union-attr]
    if got is None:
        sp.src.push_back(items)
        return None
    out, failed, wall, cpu = got
    sp.failures += settle(failed, "process (sample)", sp.collect)
    sp._keep(items, out)
    return max(wall, 1e-9), cpu


def _speculated(sp: "_Sampler", spec: _Ahead) -> bool:
    """Keep what ran ahead (a prefix of the items given); the rest goes back in front.

    Items that ran at once count as timed items and as a first probe round only if the
    round mostly waited. A round that kept cores busy came from a first item that only
    looked like waiting (importing on its first call, say): its items' times are those of
    items sharing too few cores, so their results are kept and their times are not."""
    n = spec.n_ran()
    sp.src.push_back(spec.items[n:])
    for i in range(n):
        index, result, error = sp.done, spec.results[i], spec.errors[i]
        if error is not None:
            result = ItemFailed(index, error)
            sp.failures += settle([(index, error, "")], "thread (sample)", sp.collect)
        sp._keep([spec.items[i]], [result])
    timed, contended = range(n), False
    if spec.waiting and n >= 2 and spec.round_wall > 0:
        wall = max(spec.round_wall, sp.first_time)
        contended = (sum(spec.cpus[:n]) + sp.first_cpu) / wall >= 0.5
        if contended:
            timed = range(0)
        else:  # a probe round already: throughput of k items at once
            k = n + 1
            scaling = (sum(spec.walls[:n]) + sp.first_time) / wall
            sp.ahead_round = (min(scaling, float(k)), k, n)
    for i in timed:
        wall, cpu = spec.walls[i], spec.cpus[i]
        if _waited_on_first(sp, spec, i):
            # It queued behind the first call's one-time work (an import lock, a table
            # being built): its wall time is the first item's, not its own. A computing
            # function that imports scipy.stats on its first call read CPU/wall 0.001
            # so, and ran on 64 threads at 4-7x the serial time.
            sp.warmup = True
            continue
        if spec.errors[i] is None and wall > 0:
            # A timed item: its own CPU time when CPU-bound (it shared the machine), else wall.
            cpu_bound = cpu / wall >= CPU_BOUND / 2
            sp.batches.append((1, max(cpu, 1e-9) if cpu_bound else wall))
            sp.batch_pos.append(1.0 + i)  # the first item is at 0, these right after it
            sp.ratios.append(1.0 if cpu_bound else cpu / wall)
    return contended


def _waited_on_first(sp: "_Sampler", spec: _Ahead, i: int) -> bool:
    """An item run beside a computing first item that barely ran until the first one ended."""
    wall, cpu = spec.walls[i], spec.cpus[i]
    first_computes = sp.first_cpu >= CPU_BOUND * sp.first_active
    return (
        first_computes
        and wall > 0
        and cpu < IO_BOUND * wall
        and spec.ends[i] >= sp.first_end - WARMUP_END * sp.first_time  # freed as it ended
        and wall >= WARMUP_OVERLAP * sp.first_time
    )


def _timed_remote(sp: "_Sampler", batch: "list[Any] | Span") -> bool:
    got = _remote_batch(sp, batch)
    if got is None:
        return False
    dt, dc = got
    sp.batches.append((len(batch), dt))
    sp.batch_pos.append(sp.done - (len(batch) + 1) / 2)
    if dt >= 1e-3:
        sp.ratios.append(dc / dt)
        sp.own_ratios.append(dc / dt)
    return True


def _growing_mean(
    batches: list[tuple[int, float]], positions: list[float], done: int, n_total: int | None, mean: float
) -> float:
    """Mean item time over the items not run yet where the timed batches (items, seconds; at
    ``positions`` in the input) show items growing along the input (a clear linear trend:
    R^2 >= GROWTH_FIT over at least GROWTH_POINTS batches, items ahead at least
    GROWTH_FACTOR times the mean so far); else ``mean``. Input sorted by size (small first)
    was judged on its smallest items: 55 items growing from 0.07 to 7 ms looked like 40 ms
    of work and ran serially, at 1.63x the best (process x2)."""
    n, pts = n_total, list(zip(positions, batches))
    if n is None or n <= done or len(pts) < GROWTH_POINTS:
        return mean
    w = [b for _, (b, _) in pts]
    x = [pos for pos, _ in pts]
    y = [t / b for _, (b, t) in pts]
    W = sum(w)
    mx = sum(wi * xi for wi, xi in zip(w, x)) / W
    my = sum(wi * yi for wi, yi in zip(w, y)) / W
    sxx = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x))
    syy = sum(wi * (yi - my) ** 2 for wi, yi in zip(w, y))
    sxy = sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, y))
    if sxx <= 0 or syy <= 0 or sxy <= 0 or sxy * sxy < GROWTH_FIT * sxx * syy:
        return mean
    ahead = my + sxy / sxx * ((done + n - 1) / 2 - mx)
    return ahead if ahead >= GROWTH_FACTOR * mean else mean


def _pickling_step(sp: "_Sampler") -> _Pickling:
    """The function (always cloudpickle) and the first, middle and last (item, result)."""
    fmethod, fbytes, ftime, _, ferr = _serialize.measure(sp.user_func, allow_plain=False)
    out = _Pickling(None, None, fbytes, ftime)
    nb = len(sp.item_blocks)
    picks = sorted({(0, 0), (nb // 2, 0), (nb - 1, len(sp.item_blocks[-1]) - 1)}) if nb else []
    if nb and sp.item_blocks[0][0] is sp.item_blocks[-1][-1]:
        picks = picks[:1]  # one object passed as every item (``[buf] * n``): measured once
    item_method: str | None = _serialize.PICKLE
    result_method: str | None = _serialize.PICKLE
    errors = [f"function: {ferr}"] if ferr else []
    work = sp.first_time + sum(t for _, t in sp.batches)  # seconds of items run so far
    measured = 0
    for b, j in picks:
        if measured and out.item_time + out.result_time > 0.25 * work:
            break  # pickling costs more than a quarter of the work: one pair tells enough
        i = sum(len(x) for x in sp.item_blocks[:b]) + j
        m, size, secs, load, err = _serialize.measure(sp.item_blocks[b][j])
        item_method = _serialize.worse(item_method, m)
        out.item_bytes, out.item_time, out.item_load = out.item_bytes + size, out.item_time + secs, out.item_load + load
        if err:
            errors.append(f"item {i}: {err}")
        m, size, secs, load, err = _serialize.measure(sp.results[i])
        result_method = _serialize.worse(result_method, m)
        out.result_bytes, out.result_time = out.result_bytes + size, out.result_time + secs
        out.result_load += load
        if err:
            errors.append(f"result of item {i}: {err}")
        measured += 1
    n = max(measured, 1)
    for name in ("item_bytes", "item_time", "item_load", "result_bytes", "result_time", "result_load"):
        setattr(out, name, getattr(out, name) / n)
    out.transport = _serialize.worse(item_method, result_method) if fmethod is not None else None
    out.error = "; ".join(errors) or None
    # One object passed as every item (``[table] * n``) is pickled once per chunk: pickle's
    # memo sends the repeats as references.
    items = itertools.chain.from_iterable(sp.item_blocks)
    first = next(items, None)
    out.items_shared = sp.done >= 2 and all(x is first for x in items)
    return out


def _run_serially(sp: "_Sampler", items: list[Any]) -> bool:
    """Run ``items`` on the calling thread and keep them; whether any failed (collected)."""
    out, failed = run_items(sp.func, sp.done, items, sp.collect, remote=False)
    sp.failures += settle(failed, "serial (sample)", sp.collect)
    sp._keep(items, out)
    return bool(failed)


def _blas_step(sp: "_Sampler", stats: _Stats) -> tuple[float | None, _Stats]:
    """Native threads (a BLAS pool) computed beside the items, or may have: time two more
    with BLAS capped at one thread, as every pool of ``cores`` workers runs them. Small
    matrix work often runs faster so (an SVD of 220 x 220 took 2.6 ms on one OpenBLAS
    thread, 4.8 ms on two). Whether the pool's second thread shows in the CPU time varies
    (it spins or sleeps: the same SVD read CPU/wall 1.0-2.3), so with a multi-threaded BLAS
    loaded, computing items of a millisecond or more are timed so too. Returns the capped
    item time where capping made items faster (BLAS work: by 5% where native threads were
    seen beside them, 10% on suspicion), and the stats: where native
    threads seemed to compute beside the items but capping them changed nothing, they were
    not the items' (a BLAS pool spinning on after someone else's call: pure Python read
    CPU/wall 1.7), and the CPU ratio is the calling thread's own."""
    first = sp.first_cpu / sp.first_active if sp.first_time > 0 else 0.0
    native = max(first, stats.cpu_ratio) >= NATIVE_THREADS
    left = None if sp.n_total is None else sp.n_total - sp.done
    if sp.remote is not None or sp.src.done or stats.mean < 1e-3 or stats.cpu_ratio < CPU_BOUND or (left is not None and left < BLAS_STEP_MIN_ITEMS):
        return None, stats  # (two serial items of a short job cost more than they tell)
    if not native and (stats.cpu_ratio < PURE_COMPUTE or not native_threads() or not threaded_blas_loaded()):
        # Work that waits times unevenly (file writes read 10% faster capped). A BLAS pool
        # that has not started its threads was not used: capping it would start them, and
        # they spin for about 0.1 s after (the probe after it read sha256 as x1.0).
        return None, stats
    items = sp.src.pull(2)
    if not items:
        return None, stats
    with capped_blas(1):
        t0 = time.perf_counter()
        failed = _run_serially(sp, items)
        per_item = (time.perf_counter() - t0) / len(items)
    if failed:
        return None, stats
    if per_item < (NATIVE_FASTER if native else BLAS_FASTER) * stats.mean:
        return per_item, stats
    if native and per_item * BLAS_FASTER < stats.mean:  # capped, neither faster nor slower
        return None, replace(stats, cpu_ratio=min(stats.own_ratio, stats.cpu_ratio))
    return None, stats


def _blas_capped(sp: "_Sampler", k: int) -> Any:
    """BLAS capped for a probe on k threads as a pool of k threads caps it: where the sample
    timed items so (native threads spinning beside each item would read as scaling), or a
    multi-threaded BLAS pool is running (``blas_live``)."""
    return capped_blas(blas_share(k)) if sp.single_blas_time or sp.blas_live else nullcontext()


def _probe_plan(sp: "_Sampler", stats: _Stats, remaining: int | None, round_min: float) -> tuple[int, int]:
    """(threads, items per thread and round)."""
    ref = max(stats.reference, 1e-9)
    k = max(2, sp.probe_threads)
    if stats.cpu_ratio < IO_BOUND:
        k = max(k, IO_PROBE_THREADS)  # waiting work: more threads, and more of it done
    if remaining is not None and remaining <= 2 * k:
        # The rest is hardly more than a round: run it all at once, one item a thread.
        return min(k, remaining), max(1, -(-remaining // k))
    if remaining is not None:
        k = min(k, max(2, remaining // 2))
    budget = 0.5 * sp.budget
    work_left = remaining * ref if remaining is not None else UNKNOWN_SECONDS
    budget = min(budget, max(sp.min_budget, SAMPLE_SHARE * work_left))
    per_thread = max(1, math.ceil(budget / k / ref))
    # A first round of 6 ms per thread shows clear cases (pure Python at 1x, GIL-free work at
    # k x); only an unclear one earns a second round of 20 ms. Waiting work on more threads
    # than CPUs needs a third of that: WAIT_CLEAR is a third of k, and 16 threads on sleeps
    # of 1 ms read x15 with 5 items each, where the run would have had 64.
    if round_min == PROBE_ROUND_MIN[0] and k > _cpus() and stats.cpu_ratio < IO_BOUND:
        round_min = WAIT_ROUND_MIN
    per_thread = min(max(per_thread, math.ceil(round_min / ref)), 10_000)
    if stats.cpu_ratio >= CPU_BOUND:
        per_thread = max(per_thread, 2)  # one computing item a thread: its start is the reading
    if remaining is not None:
        per_thread = max(1, min(per_thread, remaining // (2 * k)))
    return k, per_thread

def _clear_gain(k: int) -> float:
    """A scaling on k threads that settles the probe: 0.85 k, or WAIT_CLEAR k on more threads
    than CPUs (waiting work: whether 24 or 60 of 65 threads' worth, the model picks the
    same; a process's first 64 threads took 53 ms to start here and read x24.5, and a
    second round of 20 ms sleeps on 65 threads cost 20 ms of a 0.2 s job)."""
    return (PROBE_CLEAR[1] if k <= _cpus() else WAIT_CLEAR) * k


def _misread_is_cheap(pk: _Pickling, stats: _Stats) -> bool:
    """Whether reading GIL-free items as GIL-bound would cost little: they would go to
    processes, which run them in parallel too, and pickling them (twice, for the bytes'
    way there and back) takes under ``CHEAP_MISREAD`` of their time. A reading that sends
    the items to processes then needs no second round: noise only ever slows a round, and
    the second round is there for GIL-free work read low (2 first rounds in 60 since the
    probe's threads have CPUs of their own). It cost pure-Python jobs of 0.2 s about a
    tenth of their time, and NumPy small calls (read x1.22-1.35) a long second round.
    A reading that would send them to threads is still confirmed."""
    if pk.transport is None or pk.error is not None:
        return False
    item = 0.0 if pk.items_shared else pk.item_time  # one object as every item: once a chunk
    return 2.0 * (item + pk.result_time) <= CHEAP_MISREAD * max(stats.reference, 1e-9)


def _probe_step(sp: "_Sampler", stats: _Stats, cheap_low: bool = False) -> tuple[float | None, int, int]:
    """Rounds on k threads until the scaling is clear; (scaling, threads, rounds).
    ``cheap_low``: a reading between ``SHARED_RESOURCE_SCALING`` and ``PARALLEL_SCALING * k``
    (processes, to the model) settles at once (see :func:`_misread_is_cheap`)."""
    remaining = None if sp.n_total is None else sp.n_total - sp.done
    best, k_used, rounds = 0.0, 0, 0
    if sp.ahead_round is not None:
        best, k_used, _ = sp.ahead_round
        rounds = 1
    worth = (
        sp.probe_wanted
        and sp.done > 0
        and not sp.src.done
        and (remaining is None or (remaining >= 2 and remaining * stats.mean > PROBE_MIN_WORK))
    )
    if not worth or (rounds and (best <= PROBE_CLEAR[0] or best >= _clear_gain(k_used))):
        return (min(max(best, 0.1), float(k_used)) if rounds else None), k_used, rounds
    # A running BLAS pool of several threads is capped on the probe's threads as a thread
    # pool caps it (cores // k each): two SVDs of 220 x 220 at two BLAS threads each read
    # x0.53 on 2 threads (0.25 s of probing), and uncapped thread pools ran slower than serial.
    sp.blas_live = stats.cpu_ratio >= CPU_BOUND and native_threads() > 0 and threaded_blas_loaded()
    slower = False  # the last round's threads did clearly less than one thread alone
    low = best if rounds else float("inf")  # the lowest reading
    for _ in range(2 - rounds):
        # A second round: as short as the first to confirm a low reading, else longer.
        short = rounds == 0 or best <= PROBE_CLEAR[0]
        k, per_thread = _probe_plan(sp, stats, remaining, PROBE_ROUND_MIN[0 if short else 1])
        left = None if sp.n_total is None else sp.n_total - sp.done
        if not short and left is not None:
            # The longer round refines an unclear reading; in a short job it may take a
            # tenth of the items left, and no less than a first round (NumPy small calls,
            # 374 items of 0.5 ms: 76 items at x1.2 for a reading of x1.22 again).
            floor = _probe_plan(sp, stats, remaining, PROBE_ROUND_MIN[0])[1]
            per_thread = min(per_thread, max(floor, math.ceil(LONG_ROUND_SHARE * left / k)))
        if rounds and left is not None and k * per_thread > SECOND_ROUND_SHARE * left:
            break  # a second round would cost too much of a short job: the first one stands
        items = sp.src.pull(k * per_thread)
        if len(items) < 2:
            if items:  # the input ended: run the straggler serially
                _run_serially(sp, items)
            break
        kk = min(k, len(items))
        with PeakRSS() if sp.watch_memory else nullcontext() as mem, _blas_capped(sp, kk):
            results, wall, cpu, whole, queued = _probe(sp.func, items, kk, sp.done, sp.collect)
        sp.failures += [r.index for r in results if isinstance(r, ItemFailed)]
        if sp.watch_memory:  # items too long for a second serial one: k ran at once here
            sp.peak, sp.watch_memory = max(sp.peak, mem.peak // kk), False
        sp._keep(items, results)
        sp.n_probed += len(items)
        k_used, rounds = max(k_used, kk), rounds + 1
        if wall > 0:
            if stats.cpu_ratio >= CPU_BOUND and not sp.single_blas_time:
                # CPU-bound: cores kept busy at once over cores one item keeps busy. (Not
                # capped by the round's throughput: a few items of uneven size make that
                # too noisy; GIL-free NumPy read x1.0-1.13 so.)
                # (less the threads' wait for a core: neither the GIL's nor the work's)
                s = (cpu / CpuMeter.active(whole, queued)) / stats.cpu_ratio
                slower = len(items) * stats.reference < SLOWER_TOGETHER * whole
            else:
                # Waiting work, or BLAS capped (a BLAS library serializing its callers
                # spins on its lock and keeps cores busy for nothing): throughput.
                s = len(items) * (sp.single_blas_time or stats.reference) / wall
            low = min(low, s)
            best = max(best, s)
        if cheap_low and SHARED_RESOURCE_SCALING <= best < PARALLEL_SCALING * kk:
            break  # GIL-bound by the model's rule: processes, right even if it is not. Not
            # under 0.85: the model would see a shared resource and rule processes out too
            # (skewed loops read so when one thread drew the long item; 17 s ran serially).
        if best >= _clear_gain(kk) or (best <= PROBE_CLEAR[0] and (rounds >= 2 or slower)):
            break  # clear evidence. A low reading needs a second: a core the host stalls
            # for a few ms read GIL-free work as x1.0 in about one round of four. Not
            # where the threads did clearly less together than one alone (they fought
            # over the GIL: JSON round trips ran at x0.6 on 2 threads, a second round
            # cost 10 ms of a 0.2 s job); a stalled core reads as one thread's worth.
    if low <= PROBE_CLEAR[0] < best < _clear_gain(k_used):
        # A low reading and an unclear one: the low one stands. Pure Python's confirming
        # round read x1.4-1.6 in about 1 call in 10 (and went to threads, at 2x the best);
        # processes for GIL-free work cost far less than threads for GIL-held work.
        best = low
    return (min(max(best, 0.1), float(k_used)) if rounds else None), k_used, rounds


def sample(
    func: Callable[..., Any],
    data: Iterable[Any],
    *,
    n_items: int | None = None,
    budget: float = 0.2,
    min_budget: float = 0.01,
    probe_threads: int = 2,
    probe: bool = True,
    collect: bool = False,
    finish: bool = False,
    timeout: float | None = None,
    in_process: str | None = None,
) -> tuple[Profile, SampleStash]:
    """Run a sample of ``data`` through ``func`` and measure it; see the module docstring.

    ``probe=False`` runs nothing on helper threads: no item run ahead, no thread probe (for
    work that will not run on threads, or must not leave the calling thread). ``finish``: serial
    is a candidate, so a rest under ``MIN_SAVING`` of work runs in the sample. ``timeout``:
    each item's time limit, as the run keeps it. ``in_process``: a start method; the items run
    in a worker process started so, never in the caller (see :mod:`autopar.tune.remote`).
    """
    if in_process is None:
        return _Sampler(func, data, n_items, budget, min_budget, probe_threads, probe, collect, finish, timeout).run()
    remote = RemoteItems(func, in_process, collect, timeout)
    try:
        sampler = _Sampler(func, data, n_items, budget, min_budget, probe_threads, False, collect, False, remote=remote)
        return sampler.run()
    except BaseException:
        remote.broken = True  # (Ctrl-C, an item's error): the worker is killed, not waited for
        raise
    finally:
        remote.close()
