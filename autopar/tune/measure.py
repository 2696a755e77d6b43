"""Low-level meters the sample uses: whose CPU time an item used (per thread from
``/proc/self/task/*/schedstat``, else the process's), others' use of the cores, and peak
resident memory.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from . import constants
from .system import usable_cores

__all__ = ["CpuMeter", "OthersMeter", "PeakRSS", "busy_clock", "queued_seconds", "rss"]

try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE = 4096

_TASKS = "/proc/self/task"
_HAVE_SCHEDSTAT = os.path.exists(f"{_TASKS}/{threading.get_native_id()}/schedstat")


def _schedstat(tid: int | str) -> tuple[int, int]:
    """(nanoseconds on a CPU, nanoseconds waiting in the run queue) of one thread."""
    with open(f"{_TASKS}/{tid}/schedstat", "rb") as fh:
        run, queued = fh.read().split()[:2]
    return int(run), int(queued)


def _own_schedstat() -> tuple[int, int]:
    """(on a CPU, waiting for one) nanoseconds of the calling thread; zeros without schedstat."""
    if not _HAVE_SCHEDSTAT:
        return 0, 0
    try:
        return _schedstat(threading.get_native_id())
    except (OSError, ValueError, IndexError):
        return 0, 0


def queued_seconds() -> float:
    """Seconds the calling thread has waited in the run queue for a core (0 without schedstat)."""
    return _own_schedstat()[1] / 1e9


def _thread_cpu(skip: int = -1) -> dict[int, int]:
    """CPU nanoseconds of every thread of this process but ``skip``, by native id."""
    out: dict[int, int] = {}
    for name in os.listdir(_TASKS):
        if name == str(skip):
            continue
        try:
            out[int(name)] = _schedstat(name)[0]
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


def _python_threads() -> set[int]:
    return {t.native_id for t in threading.enumerate() if t.native_id is not None}


def _native_tids() -> list[int]:
    """Ids of the threads of this process that Python did not start (none without schedstat)."""
    if not _HAVE_SCHEDSTAT:
        return []
    python = _python_threads()
    return [int(name) for name in os.listdir(_TASKS) if name.isdigit() and int(name) not in python]


def native_threads() -> int:
    """Threads of this process that Python did not start (a BLAS pool, once started)."""
    return len(_native_tids())


def native_cpu() -> dict[int, int] | None:
    """CPU nanoseconds each thread of this process that Python did not start has run, by
    native id; None without schedstat. See :func:`native_cpu_since`."""
    if not _HAVE_SCHEDSTAT:
        return None
    out: dict[int, int] = {}
    for tid in _native_tids():
        try:
            out[tid] = _schedstat(tid)[0]
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return out


def native_cpu_since(before: dict[int, int] | None) -> float | None:
    """CPU seconds the native threads have run since ``before`` (a :func:`native_cpu`
    reading): threads started since count from zero, threads ended since are not counted."""
    now = native_cpu()
    if now is None or before is None:
        return None
    return sum(max(ns - before.get(tid, 0), 0) for tid, ns in now.items()) / 1e9


def busy_clock(ident: int, native_id: int) -> Callable[[], float] | None:
    """A clock of the seconds one thread has run or waited for a core: from its schedstat,
    else its CPU clock; None where neither exists."""
    if _HAVE_SCHEDSTAT:
        return lambda: sum(_schedstat(native_id)) / 1e9
    try:
        clock = time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):
        return None
    return lambda: time.clock_gettime(clock)


def _running(tid: int | str) -> bool:
    """Whether a thread is on a CPU or waiting for one (state R in its stat)."""
    try:
        with open(f"{_TASKS}/{tid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"R"
    except (OSError, ValueError):
        return False


class LeftSpinning:
    """Native threads (a BLAS pool) found running before the function ran: a BLAS library's
    threads spin for a while after its last call, NumPy's import included (measured here:
    48 ms after ``import numpy``, 110 ms after a 200x200 matmul, at 0.8 of a core), and in a
    script that imports NumPy and calls execute() at once they ran beside the sample's first
    items, read as the function's own native threads (pure Python of CPU/wall 2.0, serial
    picked where processes ran x1.8). :meth:`now` are those still running, at most
    ``SPIN_MAX`` seconds from the start: past it, a thread still running works for the
    function; a thread seen stopped is left out of the set for good."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tids = {t for t in _native_tids() if _running(t)}

    def now(self) -> frozenset[int]:
        if self.tids and time.perf_counter() - self.t0 > constants.SPIN_MAX:
            self.tids = set()
        self.tids = {t for t in self.tids if _running(t)}
        return frozenset(self.tids)


class CpuMeter:
    """Wall time, the calling thread's CPU and the function's CPU over one span: the calling
    thread's, threads the function starts, and native helper threads (a BLAS pool) only while
    the calling thread computes too.

    ``attribute=False`` skips the per-thread reading for short spans (the process's CPU is the
    function's then). ``exclude``: native threads whose CPU is not the function's (a BLAS
    pool left spinning, :class:`LeftSpinning`). ``queued`` (after ``stop()``): the seconds
    the calling thread waited in the run queue over the span; ``active`` is the wall time
    less that wait.
    """

    __slots__ = ("attribute", "exclude", "_p0", "_h0", "_w0", "_q0", "_threads0", "queued")

    def __init__(self, attribute: bool = True, exclude: frozenset[int] = frozenset()) -> None:
        self.attribute = attribute and _HAVE_SCHEDSTAT
        self.exclude = exclude
        self.queued = 0.0

    def start(self) -> "CpuMeter":
        self._threads0 = _thread_cpu(threading.get_native_id()) if self.attribute else None
        self._q0 = queued_seconds() if self.attribute else 0.0
        self._p0, self._h0, self._w0 = time.process_time(), time.thread_time(), time.perf_counter()
        return self

    @staticmethod
    def active(wall: float, queued: float, own: float = 0.0) -> float:
        """Wall time less the run-queue wait; never below the calling thread's own CPU time
        ``own`` (it ran that long) nor a tenth of the wall."""
        return max(wall - queued, own, 0.1 * wall, 1e-12)

    def stop(self) -> tuple[float, float, float]:
        """(wall seconds, calling thread's CPU seconds, the function's CPU seconds)."""
        wall = time.perf_counter() - self._w0
        own = time.thread_time() - self._h0
        process = time.process_time() - self._p0
        if self.attribute:
            self.queued = min(max(queued_seconds() - self._q0, 0.0), wall)
        if not self._threads0:  # not attributing, or no other thread was there
            return wall, own, process
        after = _thread_cpu(threading.get_native_id())
        python = _python_threads()
        busy = wall > 0 and own / self.active(wall, self.queued, own) >= constants.CPU_BOUND
        foreign = 0
        for tid, ns0 in self._threads0.items():
            if tid not in after:
                continue
            if tid in python or not busy or tid in self.exclude:  # another Python thread, a native one while idle
                foreign += after[tid] - ns0
        return wall, own, max(process - foreign / 1e9, own)


class NewThreadsCpu:
    """CPU over a span of the threads started since ``start()`` (a probe's threads and any
    they start), counted from ``mark()`` (or ``start()``): the process's CPU less what
    threads already running used."""

    __slots__ = ("_p0", "_threads0", "_base")

    def start(self) -> "NewThreadsCpu":
        self._threads0 = _thread_cpu() if _HAVE_SCHEDSTAT else None
        self._base = self._threads0
        self._p0 = time.process_time()
        return self

    def mark(self) -> None:
        """Count from now on (threads started since ``start()`` still count as new)."""
        self._base = _thread_cpu() if self._threads0 is not None else None
        self._p0 = time.process_time()

    def stop(self) -> float:
        process = time.process_time() - self._p0
        if self._threads0 is None or self._base is None:
            return process
        after = _thread_cpu()  # (the new threads may have ended: count the others out)
        old = [tid for tid in self._threads0 if tid in after and tid in self._base]
        foreign = sum(after[tid] - self._base[tid] for tid in old)
        return max(process - foreign / 1e9, 0.0)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks(cpus: set[int]) -> int | None:
    """Clock ticks the given CPUs spent busy (all but idle and I/O wait), None without /proc/stat."""
    try:
        with open("/proc/stat", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        if not line.startswith(b"cpu") or line.startswith(b"cpu "):
            continue
        name, *fields = line.split()
        try:
            cpu = int(name[3:])
        except ValueError:
            continue
        if cpu in cpus:
            values = [int(v) for v in fields[:8]]
            total += sum(values) - values[3] - values[4]  # all but idle and iowait
    return total


class OthersMeter:
    """How many cores' worth of other processes' work competed with this one over a window.

    The larger of what the others used (the busy time of this process's CPUs less its own
    CPU time) and what they wanted (a thread that ran a fraction ``f`` of the time it was
    runnable shared ``c`` cores with ``c / f - 1`` others). Over windows under
    ``OTHERS_MIN_WINDOW`` only the second is read; readings under ``OTHERS_MIN_CORES`` are 0."""

    def __init__(self) -> None:
        try:
            self.cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            self.cpus = set(range(os.cpu_count() or 1))
        self.t0, self.own0, self.busy0 = time.perf_counter(), time.process_time(), _busy_ticks(self.cpus)
        self.sched0 = _own_schedstat()

    def cores(self) -> float:
        wall = time.perf_counter() - self.t0
        n = float(len(self.cpus))
        used = 0.0
        busy = _busy_ticks(self.cpus) if self.busy0 is not None and wall >= constants.OTHERS_MIN_WINDOW else None
        if busy is not None:
            used = ((busy - self.busy0) / _TICK - (time.process_time() - self.own0)) / wall
        others = min(max(used, self.wanted(), 0.0), constants.OTHERS_MAX_PER_CORE * n)
        # In the cores the model counts (a quota of 2 on a 64-CPU host: a 2/64 share).
        others *= min(usable_cores() / n, 1.0)
        return round(others, 2) if others >= constants.OTHERS_MIN_CORES else 0.0

    def wanted(self) -> float:
        """Cores' worth of others' work the calling thread's wait for a core implies (no
        window needed: the scheduler counts it in nanoseconds); 0 where it hardly waited."""
        run, queued = (b - a for a, b in zip(self.sched0, _own_schedstat()))
        if run > 0 and queued > constants.OTHERS_QUEUED_SHARE * (run + queued) and self._others_ran(queued / 1e9):
            return len(self.cpus) * (run + queued) / run - 1.0
        return 0.0

    def _others_ran(self, queued: float) -> bool:
        """Whether other processes ran for half the ``queued`` seconds the calling thread
        waited for a core: where this process's own threads (the sample's helpers, a BLAS
        pool spinning) kept every core busy, or the CPUs' busy time over a window long enough
        to read shows no one else's work, the calling thread waited for its own (the wait
        read 2.2-2.5 cores of others' work in 7 of 12 fresh processes on a quiet machine)."""
        wall = time.perf_counter() - self.t0
        own = time.process_time() - self.own0
        if len(self.cpus) * wall - own < queued / 2:
            return False  # no room left for others
        busy = _busy_ticks(self.cpus) if self.busy0 is not None and wall >= constants.OTHERS_MIN_WINDOW else None
        return busy is None or (busy - self.busy0) / _TICK - own >= queued / 2


def rss() -> int:
    """Resident memory of this process, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


class PeakRSS:
    """Polls the resident memory on a thread; ``peak`` is the growth over the start."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def _poll(self) -> None:
        high = self.base
        while not self._stop.wait(self.interval):
            high = max(high, rss())
        self.peak = max(high, rss()) - self.base

    def __enter__(self) -> "PeakRSS":
        # No malloc_trim() first: later large allocations would page-fault again.
        self.base = rss()
        self._thread = threading.Thread(target=self._poll, name="autopar-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
