"""The first item, and what runs beside it: warm-up detection.

The first item runs on the calling thread; in a short job where threads are candidates, items
run ahead beside it (:class:`_Ahead`). An item beside the first that barely ran until the first
ended waited on the first call's one-time cost: the first item's time is then a warm-up.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ...errors import ItemFailed
from .. import constants
from ..measure import CpuMeter, PeakRSS, busy_clock, rss
from .blas import _crowded, _pool_idle
from .probe import _cpus
from .remote import _first_remote

if TYPE_CHECKING:
    from .sampler import _Sampler


class _Ahead:
    """Items run ahead on helper threads while the caller runs the first item: after
    ``AHEAD_EARLY`` seconds, all at once if the first item mostly waits, else one past
    ``delay``, and on more cores more while every thread keeps a core busy (``_widen``).
    ``stop_or_finish()`` cancels what has not started and waits for the rest.
    """

    def __init__(
        self, func: Callable[..., Any], items: list[Any], delay: float, caller: int, caller_tid: int, wide: int = 1
    ) -> None:
        self.func, self.items, self.delay = func, items, delay
        self.wide = wide  # computing items run beside the first at most (one a core but the caller's)
        n = len(items)
        self.results: list[Any] = [None] * n
        self.errors: list[BaseException | None] = [None] * n
        self.walls, self.cpus, self.ends = [0.0] * n, [0.0] * n, [0.0] * n
        self.ran = [False] * n
        self.waiting = False
        self.round_wall = 0.0
        # A computing first item and the item run beside it: both threads' CPU seconds over the
        # time they ran at once, and that time (see _ran_together()).
        self.together: tuple[float, float] | None = None
        # Threads first, on more cores: (threads, scaling) of each step that widened the items
        # run beside the first (see _widen()); each item's thread's CPU clock.
        self.steps: list[tuple[int, float]] = []
        self.rss_high: int | None = None  # the highest RSS while computing items ran beside the first
        self._clocks: dict[int, int | None] = {}  # None: its item ended
        self._window: tuple[float, float] | None = None  # (when, CPU seconds) item 0 started
        self._window_closed = False
        self._window_lock = threading.Lock()
        try:
            self._caller_clock: int | None = time.pthread_getcpuclockid(caller)
        except (AttributeError, OSError):
            self._caller_clock = None
        self._cancel = threading.Event()
        self._ended = threading.Event()
        self._busy = busy_clock(caller, caller_tid)
        self._thread = threading.Thread(target=self._run, name="autopar-sample-ahead", daemon=True)
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

    def _run(self) -> None:
        try:
            self._coordinate()
        finally:
            self._ended.set()

    def _coordinate(self) -> None:
        t0 = time.perf_counter()
        c0 = self._busy() if self._busy is not None else 0.0
        rss0 = rss()
        if self._cancel.wait(constants.AHEAD_EARLY):
            return
        if self._busy is not None and len(self.items) > 1:
            used = self._busy() - c0
            self.waiting = used / max(time.perf_counter() - t0, 1e-9) < constants.IO_BOUND
        if self.waiting:
            count = self._room(len(self.items), rss0)
            helpers = [
                threading.Thread(target=self._run_one, args=(i,), name=f"autopar-sample-ahead-{i}", daemon=True)
                for i in range(1, count)
            ]
            if self._cancel.is_set():  # the first item ended meanwhile (or the caller was interrupted)
                return
            t1 = time.perf_counter()
            for t in helpers:
                t.start()
            self._run_one(0)
            for t in helpers:
                t.join()
            self.round_wall = time.perf_counter() - t1
            return
        if self._cancel.wait(max(self.delay - constants.AHEAD_EARLY, 0.0)):
            return
        # The items beside the first and the first: their peak memory, all at once (the
        # probe's watched round may not run: this reading can settle it).
        with PeakRSS() as mem:
            if min(self.wide, len(self.items)) > 1:
                self._widen(rss0)
            else:
                self._beside(0)
        self.rss_high = mem.base + mem.peak

    def _room(self, count: int, rss0: int) -> int:
        """Items that may run beside the first: what it has grown so far, times the count,
        within ``AHEAD_MEMORY_SHARE`` of available memory."""
        grown = rss() - rss0
        if grown > 0:
            import psutil

            count = min(count, max(1, int(constants.AHEAD_MEMORY_SHARE * psutil.virtual_memory().available // grown)))
        return count

    def _beside(self, i: int) -> None:
        """Item ``i`` beside the first, on the calling thread; item 0 opens the window of the
        two threads' reading (see _ran_together())."""
        try:
            self._clocks[i] = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):
            self._clocks[i] = None
        if i == 0:
            self._open_window()
        self._run_one(i)
        if i == 0:
            self.close_window()
        self._clocks[i] = None  # ended

    def _widen(self, rss0: int) -> None:
        """Threads first, on more cores than two: item 0 beside the first, then, while every
        thread so far kept a core busy over the last ``PROBE_ROUND_MIN[0]`` (0.85 of a core
        each, the probe's clear gain), as many more again, up to one a core but the
        caller's and what memory allows (read again before each step): GIL-free items fill
        the cores within a few such steps of the first item's start; items holding the GIL
        stop at two threads, as before. No more start once the first item, or any item
        beside it, has ended. Each step's reading goes to ``steps``, the last one's too."""
        threads: list[threading.Thread] = []

        def start(i: int) -> None:
            t = threading.Thread(target=self._beside, args=(i,), name=f"autopar-sample-ahead-{i}", daemon=True)
            t.start()
            threads.append(t)

        start(0)
        try:
            while True:
                started = time.perf_counter()
                while len(self._clocks) < len(threads) and time.perf_counter() - started < constants.PROBE_ROUND_MIN[0]:
                    time.sleep(0.0002)  # the threads just started read their clocks first
                before = self._cpu_of(len(threads))
                t0 = time.perf_counter()
                if self._cancel.wait(constants.PROBE_ROUND_MIN[0]):
                    break
                after = self._cpu_of(len(threads))
                if before is None or after is None:
                    break  # an item ended (or its clock cannot be read): the steps so far stand
                k = len(threads) + 1
                scaling = (after - before) / (time.perf_counter() - t0)
                self.steps.append((k, scaling))
                wide = self._room(min(self.wide, len(self.items)), rss0)
                if scaling < constants.PROBE_CLEAR[1] * k or len(threads) >= wide or self._cancel.is_set():
                    break
                for i in range(len(threads), min(2 * len(threads) + 1, wide)):
                    start(i)
        finally:
            for t in threads:
                t.join()

    def _cpu_of(self, n: int) -> float | None:
        """CPU seconds of the caller and of the threads running items 0 to n-1; None where
        one of them is not running an item (not yet, or no more)."""
        if self._caller_clock is None:
            return None
        clocks = [self._clocks.get(i) for i in range(n)]
        if any(c is None for c in clocks):
            return None
        try:
            return time.clock_gettime(self._caller_clock) + sum(time.clock_gettime(c) for c in clocks if c is not None)
        except OSError:  # a thread ended meanwhile
            return None

    def _open_window(self) -> None:
        """Item 0 starts beside the first: the two threads' CPU clocks from here on (read
        without letting go of the GIL: a file read here would hand it to a GIL-bound caller
        for a switch interval each time, and the item would start late or not at all)."""
        with self._window_lock:
            cpu0 = None if self._window_closed else self._cpu_of(1)
            if cpu0 is not None:
                self._window = (time.perf_counter(), cpu0)

    def close_window(self) -> None:
        """The first item or item 0 ended (whichever first): the time they ran at once is over."""
        with self._window_lock:
            if self._window_closed:
                return
            self._window_closed = True
            cpu1 = self._cpu_of(1) if self._window is not None else None
            if self._window is not None and cpu1 is not None:
                t0, cpu0 = self._window
                self.together = (cpu1 - cpu0, time.perf_counter() - t0)

    def stop_or_finish(self) -> None:
        self._cancel.set()
        try:
            self._thread.join()
        except BaseException:  # (Ctrl-C) the items under way end first; another Ctrl-C stops the wait
            self._ended.wait()  # (not join(): on 3.10-3.12 an interrupted join() takes the thread as ended)
            raise

    def n_ran(self) -> int:
        """Items that ran: always the first ``n_ran()`` given."""
        return sum(self.ran)


def first_item(sp: "_Sampler") -> bool:
    """Run the first item alone (warm-up, RSS growth); in a short job of slow items, the
    second runs ahead on a helper thread meanwhile. False when the input is empty."""
    first = sp.src.pull(1)
    if not first:
        return False
    if sp.remote is not None:
        return _first_remote(sp, first)
    spec = None
    n = sp.n_total
    if n is not None and 3 <= n <= constants.SPECULATE_MAX_ITEMS and sp.probe_wanted:
        ahead = sp.src.pull(min(n - 1, constants.AHEAD_MAX))
        if ahead:
            wide = max(1, min(sp.cores, _cpus()) - 1)
            spec = _Ahead(sp.func, ahead, sp.min_budget, threading.get_ident(), threading.get_native_id(), wide)
    rss0 = rss()
    meter = CpuMeter(exclude=sp.not_ours()).start()
    try:
        try:
            result = sp.func(first[0])
        except BaseException as exc:
            result = ItemFailed(0, exc)
            sp.kept.fail([(0, exc, "")], "serial (sample)")
    finally:
        wall, own, cpu = meter.stop()
        sp.first.end = time.perf_counter()
        if spec is not None:
            spec.close_window()
            spec.stop_or_finish()
    grown = max(rss() - rss0, 0)
    sp.kept.keep(first, [result])
    queued = meter.queued  # waiting for a core (other processes busy): not waiting on I/O
    if spec is not None and spec.n_ran() and wall > 0 and own / CpuMeter.active(wall, queued, own) >= constants.CPU_BOUND / 2:
        # The helper shared the machine with the first item: its own CPU time is its time.
        wall = cpu = max(own, 1e-9)
        queued = 0.0
    f = sp.first
    f.time, f.cpu, f.own = wall, cpu, min(own, cpu)
    f.active = CpuMeter.active(wall, queued, own)
    contended = False
    if spec is not None and spec.waiting:  # the RSS growth was theirs too
        grown //= 1 + spec.n_ran()
    elif spec is not None and spec.n_ran():
        # Computing items beside the first: the highest growth while they ran (the probe's
        # watched round may not run), over half their count: their peaks seldom coincide
        # (NumPy element-wise reads 17.9 MB an item so, one item alone 12.3-15.9 MB; the
        # full count read 9.7). Two count as one, as before.
        grown = max(grown, (spec.rss_high or 0) - rss0) // max(1, (1 + spec.n_ran()) // 2)
    sp.memory.peak = grown
    if spec is not None:
        contended = _speculated(sp, spec)
    if contended:  # the first item shared too few cores: its own CPU time is its time
        f.time = f.active = wall = cpu = max(own, 1e-9)
        f.cpu = own
    # Peak memory: a longer item has the next item, or the probe, watched by the RSS poller.
    sp.memory.watch = wall >= 1e-3
    # An item that mostly waits: the thread probe measures it better than serial items.
    f.waiting = not contended and wall >= 1e-3 and cpu / f.active < constants.IO_BOUND
    return True


def _speculated(sp: "_Sampler", spec: _Ahead) -> bool:
    """Keep what ran ahead (a prefix of the items given); the rest goes back in front. Items
    that ran at once are timed, and a first probe round, only if the round mostly waited.
    Returns whether it kept the cores busy instead (contended)."""
    n = spec.n_ran()
    sp.src.push_back(spec.items[n:])
    for i in range(n):
        index, result, error = sp.kept.done, spec.results[i], spec.errors[i]
        if error is not None:
            result = ItemFailed(index, error)
            sp.kept.fail([(index, error, "")], "thread (sample)")
        sp.kept.keep([spec.items[i]], [result])
    timed, contended = range(n), False
    if spec.waiting and n >= 2 and spec.round_wall > 0:
        wall = max(spec.round_wall, sp.first.time)
        contended = (sum(spec.cpus[:n]) + sp.first.cpu) / wall >= 0.5
        if contended:
            timed = range(0)
        else:  # a probe round already: throughput of k items at once
            k = n + 1
            scaling = (sum(spec.walls[:n]) + sp.first.time) / wall
            sp.first.ahead_round = (min(scaling, float(k)), k, n)
    for i in timed:
        wall, cpu = spec.walls[i], spec.cpus[i]
        if _waited_on_first(sp, spec, i):
            # It queued behind the first call's one-time work: its wall time is not its own.
            sp.first.warmup = True
            continue
        if spec.errors[i] is None and wall > 0:
            # A timed item: its own CPU time when CPU-bound (it shared the machine), else wall.
            cpu_bound = cpu / wall >= constants.CPU_BOUND / 2
            # (at 1.0 + i: the first item is at 0, these right after it)
            sp.timings.add(1, max(cpu, 1e-9) if cpu_bound else wall, 1.0 + i, 1.0 if cpu_bound else cpu / wall)
    if not spec.waiting and n:
        _ran_together(sp, spec)
    return contended


def _ran_together(sp: "_Sampler", spec: _Ahead) -> None:
    """A computing first item and the item run beside it that kept two cores busy at once
    (a probe round's clear gain, 0.85 x 2) over a window of a second probe round's length
    and half the first item's time or more do not hold the GIL: a probe round already, and
    the probe has nothing left to ask. Anything less is not read here (the probe asks): a
    low reading may be a first call's one-time cost, and a round's low reading needs a
    second one anyway. Both threads' CPU clocks over the wall time: exact, so work holding
    the GIL cannot read high; a wait for a core is not taken off (schedstat's count of it
    read 2.8 for two threads beside a spinning process), so on a busy machine GIL-free work
    reads low and the probe asks. Not read where native threads ran beside the items
    (their CPU is not the two threads') or others' work wanted every core (the probe is
    skipped there)."""
    if spec.together is None or sp.first.warmup or spec.errors[0] is not None:
        return
    cpu, span = spec.together
    if span < max(constants.PROBE_ROUND_MIN[1], 0.5 * sp.first.time):
        return
    scaling = cpu / span
    if _cpus() < 2 or scaling < constants.PROBE_CLEAR[1] * 2 or not _pool_idle(sp) or _crowded(sp):
        return
    k, widest = spec.steps[-1] if spec.steps else (2, scaling)
    if k == 2:
        sp.first.ahead_round = (min(scaling, 2.0), 2, 1)
    elif widest >= constants.PROBE_CLEAR[1] * k:  # widened: the widest step, clear
        sp.first.ahead_round = (min(widest, float(k)), k, 1)
    # (a widest step short of it: the probe asks, from its own rounds)


def _waited_on_first(sp: "_Sampler", spec: _Ahead, i: int) -> bool:
    """An item run beside a computing first item that barely ran until the first one ended."""
    wall, cpu = spec.walls[i], spec.cpus[i]
    first_computes = sp.first.cpu >= constants.CPU_BOUND * sp.first.active
    return (
        first_computes
        and wall > 0
        and cpu < constants.IO_BOUND * wall
        and spec.ends[i] >= sp.first.end - constants.WARMUP_END * sp.first.time  # freed as it ended
        and wall >= constants.WARMUP_OVERLAP * sp.first.time
    )
