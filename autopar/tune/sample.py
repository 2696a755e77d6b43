"""Sample the work: run a few items serially, then a few on threads at once, and measure.

The serial sample grows until a time budget is spent (``budget`` seconds, or 2.5% of the
estimated total when the item count is known, whichever is smaller, never below
``min_budget``). On 2 cores a serial share f of the job costs about f of the parallel run's
time, so the share is kept small. Fast items are timed in doubling batches so the clock does not dominate what
it measures. A thread polls the resident memory (peak memory per item) while the second item,
or for items too long for that the first probe round, runs; the first item is left out of the
timing figures when other items were timed (it pays the warm-up).

The **concurrency probe** then runs the next few items on ``k`` threads at once (8 for work
that mostly waits), in two rounds (one for items of 50 ms or more); the better round counts,
since noise on a shared machine only ever slows a round down. Its budget follows the same
rule as the serial sample.
For CPU-bound work the scaling is the process's CPU use during the probe over one item's
(pure Python on k threads still keeps one core busy, GIL-free work keeps k busy), which does not
depend on the probe items being the same size as the sampled ones; for waiting work it is the
throughput against the serial items' mean time. Whether threads
run in parallel (NumPy, tifffile, zlib and Pillow release the GIL; pure Python does not) cannot
be read from the CPU/wall ratio; the probe measures it.

In a short job (at most ``SPECULATE_MAX_ITEMS`` items), a helper thread starts the second item
once the first has run ``min_budget``: with slow items, a core would otherwise idle through the
whole first item. The first item's serial time then comes from its own thread's CPU time when
it is CPU-bound, and the item run ahead counts as a timed sample.

Every item the sample or the probe ran is kept with its result in a :class:`SampleStash`, so
``execute()`` neither loses items of a one-shot iterator nor computes them twice.
"""

from __future__ import annotations

import math
import operator
from contextlib import nullcontext
from itertools import islice
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .. import _serialize
from ..backends.worker import run_items
from ..errors import ItemFailed, annotate

try:
    import os as _os

    _PAGE = _os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE = 4096

__all__ = ["Profile", "SampleStash", "sample"]


@dataclass(frozen=True)
class Profile:
    """What the sample measured. Times in seconds, sizes in bytes, per item unless named."""

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


@dataclass(eq=False)
class SampleStash:
    """Items already run by the sample and their results, kept for ``execute()``.

    For a one-shot iterator the items themselves are kept too: if ``execute()`` is then called
    with another function, they are run again rather than lost.
    """

    func: Callable[..., Any]
    source_id: int
    one_shot: bool
    item_blocks: list[list[Any]] | None
    result_blocks: list[list[Any]]
    rest: Iterator[Any]
    exhausted: bool
    failures: list[int] = field(default_factory=list)
    used: bool = field(default=False)

    def matches(self, data: Any) -> bool:
        return not self.used and id(data) == self.source_id


def known_length(data: Any, n_items: int | None) -> int | None:
    if n_items is not None:
        return n_items
    try:
        return len(data)
    except TypeError:
        pass
    hint = operator.length_hint(data, -1)
    return hint if hint > 0 else None


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS growth shows fresh allocations."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


class _PeakRSS:
    """Polls the process's resident memory on a thread; ``peak`` is the growth over the start.

    Cheaper than ``tracemalloc``, which slows allocation-heavy pure Python many times over.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            import psutil

            return int(psutil.Process().memory_info().rss)

    def _poll(self) -> None:
        high = self.base
        while not self._stop.wait(self.interval):
            high = max(high, self.rss())
        self.peak = max(high, self.rss()) - self.base

    def __enter__(self) -> "_PeakRSS":
        _trim_heap()
        self.base = self.rss()
        self._thread = threading.Thread(target=self._poll, name="autopar-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _Speculation:
    """Runs one item on a helper thread if the caller's item is still running after ``delay``.

    The thread starts at once but waits: ``stop_or_finish()`` either cancels it (the first
    item was quick: nothing ran) or waits for its item to finish."""

    def __init__(self, func: Callable[..., Any], item: Any, index: int, delay: float, collect: bool) -> None:
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None
        self.ran = False
        self.wall = self.own_cpu = 0.0
        self._cancel = threading.Event()

        def work() -> None:
            if self._cancel.wait(delay):
                return
            self.ran = True
            h0, t0 = time.thread_time(), time.perf_counter()
            try:
                self.result = func(item)
            except BaseException as exc:  # handed to the caller by sample()
                self.error = exc
                if collect and isinstance(exc, Exception):
                    self.result = ItemFailed(index, exc)
            self.wall, self.own_cpu = time.perf_counter() - t0, time.thread_time() - h0

        self._thread = threading.Thread(target=work, name="autopar-sample-ahead", daemon=True)
        self._thread.start()

    def stop_or_finish(self) -> None:
        self._cancel.set()
        self._thread.join()


def _run_timed_first(
    func: Callable[..., Any], item: Any, index: int, collect: bool
) -> tuple[Any, float, int, float, float]:
    """Run the first item; returns (result, seconds, RSS growth, process CPU, own CPU)."""
    rss0 = _PeakRSS.rss()
    c0, h0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    try:
        result = func(item)
    except Exception as exc:
        annotate(exc, index, "serial (sample)")
        if not collect:
            raise
        result = ItemFailed(index, exc)
    except BaseException as exc:
        annotate(exc, index, "serial (sample)")
        raise
    elapsed = time.perf_counter() - t0
    cpu, own = time.process_time() - c0, time.thread_time() - h0
    return result, elapsed, max(_PeakRSS.rss() - rss0, 0), cpu, own



def _probe(
    func: Callable[..., Any], items: list[Any], k: int, first_index: int, collect: bool = False
) -> tuple[list[Any], float, float]:
    """Run ``items`` on ``k`` threads at once. Returns (results, wall, process CPU)."""
    results: list[Any] = [None] * len(items)
    errors: list[tuple[int, BaseException]] = []
    barrier = threading.Barrier(k + 1)

    def worker(slot: int) -> None:
        barrier.wait()
        for i in range(slot, len(items), k):
            try:
                results[i] = func(items[i])
            except Exception as exc:
                if collect:
                    annotate(exc, first_index + i, "thread (probe)")
                    results[i] = ItemFailed(first_index + i, exc)
                    continue
                errors.append((i, exc))  # re-raised in the caller below
                return
            except BaseException as exc:
                errors.append((i, exc))
                return

    threads = [
        threading.Thread(target=worker, args=(s,), name=f"autopar-probe-{s}", daemon=True)
        for s in range(k)
    ]
    for t in threads:
        t.start()
    barrier.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if errors:
        i, exc = min(errors, key=lambda e: e[0])
        annotate(exc, first_index + i, "thread (probe)")
        raise exc
    return results, wall, cpu


SAMPLE_SHARE = 0.025  # share of the estimated total the serial sample (and the probe) may take
CPU_BOUND = 0.5  # CPU/wall from which the probe reads scaling from CPU use, not wall time
IO_BOUND = 0.3  # CPU/wall under which work is probed on IO_PROBE_THREADS threads
IO_PROBE_THREADS = 8
PROBE_ROUND_MIN = 0.02  # seconds of work per thread and round, at least
SPECULATE_MAX_ITEMS = 1000  # jobs of at most this many items start a second item early


def _cpu_ratio(ratios: list[float], own_ratios: list[float]) -> float:
    """CPU/wall of an item: the whole process's CPU (threads the function starts count), less
    what other threads burn in the background anyway (a library's threads starting up)."""
    process = sorted(ratios)[(len(ratios) - 1) // 2]
    own = sorted(own_ratios)[(len(own_ratios) - 1) // 2]
    if process - own <= 0.2 or own >= CPU_BOUND:
        return process  # nothing else was busy, or this thread alone is CPU-bound already
    # Other threads were busy: measure how busy they are while this thread does nothing.
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(0.01)
    background = (time.process_time() - c0) / (time.perf_counter() - t0)
    return max(own, process - background)


def _robust_mean(batches: list[tuple[int, float]]) -> float | None:
    """Mean item time with outliers (over 3x the median, noise on a shared machine) left out."""
    if not batches:
        return None
    per_item = sorted(t / b for b, t in batches)
    median = per_item[len(per_item) // 2]
    kept = [(b, t) for b, t in batches if t / b <= 3 * median]
    return sum(t for _, t in kept) / sum(b for b, _ in kept)


def sample(
    func: Callable[..., Any],
    data: Iterable[Any],
    *,
    n_items: int | None = None,
    budget: float = 0.2,
    min_budget: float = 0.02,
    probe_threads: int = 2,
    probe: bool = True,
    collect: bool = False,
) -> tuple[Profile, SampleStash]:
    """Run a sample of ``data`` through ``func`` and measure it; see the module docstring."""
    t_begin = time.perf_counter()
    it = iter(data)
    one_shot = it is data
    n_total = known_length(data, n_items)
    # Items and results in blocks (one per batch): no copying of long lists.
    item_blocks: list[list[Any]] = []
    result_blocks: list[list[Any]] = []
    failures: list[int] = []  # indices of the items that failed (collect mode)
    done = 0
    exhausted = False

    # Lists and tuples are sliced (a copy of pointers); anything else goes through islice.
    seq = data if type(data) in (list, tuple) else None
    pos = 0

    pushed_back: list[Any] = []  # an item taken ahead and not run after all

    def pull(n: int) -> list[Any]:
        nonlocal exhausted, pos
        if pushed_back and n > 0:
            head = [pushed_back.pop()]
            return head + pull(n - 1) if n > 1 else head
        if seq is not None:
            batch = list(seq[pos : pos + n]) if type(seq) is tuple else seq[pos : pos + n]
            pos += len(batch)
        else:
            batch = list(islice(it, n))
        exhausted = exhausted or len(batch) < n
        return batch

    # First item: warm-up and peak memory. For a short job of slow items, a helper thread
    # starts the second item once the first has run past the budget, so that a core does not
    # sit idle for a whole slow item (see _Speculation).
    first = pull(1)
    peak = 0
    first_time = first_cpu = first_own = 0.0
    spec: _Speculation | None = None
    if first and n_total is not None and 3 <= n_total <= SPECULATE_MAX_ITEMS and probe:
        second = pull(1)
        if second:
            spec = _Speculation(func, second[0], 1, min_budget, collect)
    if first:
        try:
            result, first_time, peak, first_cpu, first_own = _run_timed_first(func, first[0], 0, collect)
        finally:
            if spec is not None:
                spec.stop_or_finish()
        if isinstance(result, ItemFailed):
            failures.append(0)
        item_blocks.append(first)
        result_blocks.append([result])
        done = 1
        if spec is not None:
            if spec.ran and first_time > 0 and first_own / first_time >= CPU_BOUND / 2:
                # The helper shared the machine with the first item: its own CPU time is its
                # serial time, and its CPU ratio is its own (the helper's CPU is not its).
                first_time = max(first_own, 1e-9)
                first_cpu = first_own
            if spec.ran and spec.error is not None:
                annotate(spec.error, 1, "thread (sample)")
                if not collect or not isinstance(spec.error, Exception):
                    raise spec.error
                failures.append(1)
            if spec.ran:
                item_blocks.append([spec.item])
                result_blocks.append([spec.result])
                done = 2
            else:  # the first item was quick: the second runs with the others
                pushed_back.append(spec.item)
                exhausted = False

    # Serial sample in batches: (size, seconds) pairs, plus CPU over the same span.
    batches: list[tuple[int, float]] = []
    if spec is not None and spec.ran and spec.error is None and spec.wall > 0:
        # The item run ahead counts as a timed one: its own CPU time when it is CPU-bound
        # (it shared the machine with the first item), else its wall time.
        spec_ratio = spec.own_cpu / spec.wall
        spec_time = max(spec.own_cpu, 1e-9) if spec_ratio >= CPU_BOUND / 2 else spec.wall
        batches.append((1, spec_time))
    ratios: list[float] = []  # CPU/wall of batches long enough for the CPU clock: process,
    own_ratios: list[float] = []  # and the calling thread alone
    min_timed = 2 if first_time < 0.005 else 1
    # Peak memory: an item of under 1 ms cannot touch much memory, so the first item runs
    # bare (its RSS growth only); a longer one has the next item, or the probe, watched by
    # the RSS poller (a thread, about 1 ms to start and stop: too dear for tiny items).
    watch_memory = first_time >= 1e-3
    # An item that mostly waits: the thread probe measures it better (and faster) than more
    # serial items would.
    waiting = first_time >= 1e-3 and first_own / first_time < IO_BOUND
    if waiting:
        min_timed = 0
    cpu_total = 0.0
    wall_total = sum(t for _, t in batches)
    if batches:  # the item run ahead: CPU-bound counts as 1 (its process CPU was shared)
        ratios.append(1.0 if spec_ratio >= CPU_BOUND / 2 else spec_ratio)
        own_ratios.append(ratios[-1])
    batch_size = 1
    while not exhausted:
        elapsed = time.perf_counter() - t_begin
        timed = sum(b for b, _ in batches)
        mean = wall_total / timed if timed else first_time
        if n_total is not None:
            if done >= n_total:
                break
            target = min(budget, max(min_budget, SAMPLE_SHARE * n_total * mean))
        else:
            target = budget
        # The first item pays the warm-up: it stands alone only when it is longer than the
        # whole budget (items of seconds), never just longer than a small job's share.
        if (elapsed >= target or waiting) and (timed >= min_timed or first_time >= budget):
            break
        if n_total is not None:
            batch_size = min(batch_size, n_total - done)
        batch = pull(batch_size)
        if not batch:
            break
        with _PeakRSS() if watch_memory else nullcontext() as mem:
            c0, h0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
            out, failed = run_items(func, done, batch, collect, remote=False)
            dt, dc, dh = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - h0
        for index, exc, _ in failed:
            annotate(exc, index, "serial (sample)")
            if not collect or not isinstance(exc, Exception):
                raise exc
            failures.append(index)
        if watch_memory:
            peak, watch_memory = max(peak, mem.peak // len(batch)), False
        item_blocks.append(batch)
        result_blocks.append(out)
        done += len(batch)
        batches.append((len(batch), dt))
        wall_total += dt
        cpu_total += dc
        if dt >= 1e-3:  # long enough for the CPU clock to mean something
            ratios.append(dc / dt)
            own_ratios.append(dh / dt)
        batch_size = batch_size * 2 if dt / len(batch) < 1e-3 else 1

    timed = sum(b for b, _ in batches)
    if timed:
        mean = wall_total / timed
        var = sum(b * (t / b - mean) ** 2 for b, t in batches) / len(batches)
        std = math.sqrt(var)
        tmax = max(t / b for b, t in batches)
        if ratios:
            cpu_ratio = _cpu_ratio(ratios, own_ratios)
        else:
            cpu_ratio = cpu_total / wall_total if wall_total > 0 else 1.0
    else:  # only the first item ran
        mean, std, tmax = first_time, 0.0, first_time
        cpu_ratio = _cpu_ratio([first_cpu / first_time], [first_own / first_time]) if first_time > 0 else 1.0
    if first and timed:
        tmax = max(tmax, first_time)
    n_sampled = done
    if exhausted:
        n_total = n_sampled

    # Serialization: the function (always cloudpickle) and up to three items and results.
    fmethod, fbytes, ftime, ferr = _serialize.measure(func, allow_plain=False)
    # First, middle and last sampled (item, result) pairs.
    nb = len(item_blocks)
    picks = sorted({(0, 0), (nb // 2, 0), (nb - 1, len(item_blocks[-1]) - 1)}) if nb else []
    item_method: str | None = _serialize.PICKLE
    result_method: str | None = _serialize.PICKLE
    ibytes = itime = rbytes = rtime = 0.0
    errors = [f"function: {ferr}"] if ferr else []
    for b, j in picks:
        i = sum(len(x) for x in item_blocks[:b]) + j
        m, size, secs, err = _serialize.measure(item_blocks[b][j])
        item_method = _serialize.worse(item_method, m)
        ibytes, itime = ibytes + size, itime + secs
        if err:
            errors.append(f"item {i}: {err}")
        m, size, secs, err = _serialize.measure(result_blocks[b][j])
        result_method = _serialize.worse(result_method, m)
        rbytes, rtime = rbytes + size, rtime + secs
        if err:
            errors.append(f"result of item {i}: {err}")
    npick = max(len(picks), 1)
    # The function always travels by cloudpickle; items and results decide the transport.
    transport = _serialize.worse(item_method, result_method) if fmethod is not None else None

    # Concurrency probe on the next items, in rounds of k threads x per_thread items.
    n_probed, scaling, k_used = 0, None, 0
    remaining = None if n_total is None else n_total - n_sampled
    worth_probing = (
        probe
        and not exhausted
        and n_sampled > 0
        and (remaining is None or (remaining >= 2 and remaining * mean > 0.005))
    )
    if worth_probing:
        reference = _robust_mean(batches) or mean
        k = max(2, probe_threads)
        if cpu_ratio < IO_BOUND:
            k = max(k, IO_PROBE_THREADS)  # waiting work: more threads, and more of it done
        if remaining is not None:
            k = min(k, max(2, remaining // 2))
        # Two rounds against noise, one for long items (a round is then long enough).
        rounds = 1 if reference >= 0.05 or cpu_ratio < IO_BOUND else 2
        probe_budget = 0.5 * budget
        if remaining is not None:
            probe_budget = min(probe_budget, max(min_budget, SAMPLE_SHARE * remaining * reference))
        per_thread = max(1, math.ceil(probe_budget / rounds / k / max(reference, 1e-9)))
        # A round shorter than ~20 ms per thread measures the scheduler more than the work.
        per_thread = min(max(per_thread, math.ceil(PROBE_ROUND_MIN / max(reference, 1e-9))), 10_000)
        if remaining is not None:
            per_thread = max(1, min(per_thread, remaining // (2 * rounds * k)))
            if remaining < rounds * k * per_thread + k:
                rounds = 1
        best = 0.0
        for _ in range(rounds):
            probe_items = pull(k * per_thread)
            if len(probe_items) < 2:
                if probe_items:  # the iterator ended: run the straggler serially
                    out, failed = run_items(func, done, probe_items, collect, remote=False)
                    for index, exc, _ in failed:
                        annotate(exc, index, "serial (sample)")
                        if not collect or not isinstance(exc, Exception):
                            raise exc
                        failures.append(index)
                    item_blocks.append(probe_items)
                    result_blocks.append(out)
                    done += len(probe_items)
                    n_sampled += len(probe_items)
                break
            kk = min(k, len(probe_items))
            with _PeakRSS() if watch_memory else nullcontext() as mem:
                probe_results, pwall, pcpu = _probe(func, probe_items, kk, done, collect)
            failures.extend(r.index for r in probe_results if isinstance(r, ItemFailed))
            if watch_memory:  # items too long for a second serial one: k ran at once here
                peak, watch_memory = max(peak, mem.peak // kk), False
            item_blocks.append(probe_items)
            result_blocks.append(probe_results)
            done += len(probe_items)
            n_probed += len(probe_items)
            k_used = max(k_used, kk)
            if pwall > 0:
                if cpu_ratio >= CPU_BOUND:
                    # CPU-bound: cores kept busy at once over cores one item keeps busy. Unlike
                    # a wall-time comparison it does not depend on these items' sizes.
                    best = max(best, (pcpu / pwall) / cpu_ratio)
                else:
                    best = max(best, len(probe_items) * reference / pwall)
        if n_probed:
            scaling = min(max(best, 0.1), float(k_used))
        if exhausted:
            n_total = done

    profile = Profile(
        n_sampled=n_sampled,
        n_probed=n_probed,
        n_items=n_total,
        item_time_mean=mean,
        item_time_std=std,
        item_time_max=tmax,
        cpu_ratio=cpu_ratio,
        func_bytes=fbytes,
        func_pickle_time=ftime,
        item_bytes=ibytes / npick,
        item_pickle_time=itime / npick,
        result_bytes=rbytes / npick,
        result_pickle_time=rtime / npick,
        transport=transport,
        pickle_error="; ".join(errors) or None,
        peak_memory_per_item=int(peak),
        thread_scaling=scaling,
        probe_threads=k_used,
        sample_time=time.perf_counter() - t_begin,
        exhausted=exhausted,
    )
    if seq is not None:
        it = iter(seq)
        it.__setstate__(pos)  # list and tuple iterators can be placed: no skipping item by item
    stash = SampleStash(
        func=func,
        source_id=id(data),
        one_shot=one_shot,
        item_blocks=item_blocks if one_shot else None,
        result_blocks=result_blocks,
        failures=failures,
        rest=it,
        exhausted=exhausted,
    )
    return profile, stash
