"""The concurrency probe: the next items on ``k`` threads at once, in rounds until it is clear
how they scale (a round scaling like one thread or like ``k`` ends it; one in between earns a
second). ``k`` is enough threads that their CPU, GIL-free, would keep two cores busy.
CPU-bound work: the function's CPU over the round, over one item's CPU ratio; waiting work:
throughput against the serial items' mean time, or, where the threads kept about one core
busy (the GIL), what k threads run where each item's CPU holds it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ...errors import ItemFailed, settle
from .. import constants
from ..measure import CpuMeter, NewThreadsCpu, queued_seconds
from .blas import _blas_capped, _blas_live, _crowded
from .pickling import _Pickling
from .serial import _run_serially, _Stats, share_of

if TYPE_CHECKING:
    from .sampler import _Sampler


def _probe_step(sp: "_Sampler", stats: _Stats, cheap_low: bool = False) -> tuple[float | None, int, int]:
    """Rounds on k threads until the scaling is clear; (scaling, threads, rounds).
    ``cheap_low``: a reading between ``SHARED_RESOURCE_SCALING`` and ``PARALLEL_SCALING * k``
    (processes, to the model) settles at once (see :func:`_misread_is_cheap`)."""
    remaining = None if sp.n_total is None else sp.n_total - sp.kept.done
    best, k_used, rounds = 0.0, 0, 0
    if sp.first.ahead_round is not None:
        best, k_used, _ = sp.first.ahead_round
        rounds = 1
    worth = (
        sp.probe_wanted
        and sp.kept.done > 0
        and not sp.src.done
        and (remaining is None or (remaining >= 2 and remaining * stats.mean > constants.PROBE_MIN_WORK))
    )
    if not worth or (rounds and (best <= constants.PROBE_CLEAR[0] or best >= _clear_gain(k_used, stats))):
        return (min(max(best, 0.1), float(k_used)) if rounds else None), k_used, rounds
    if not rounds and stats.cpu_ratio >= constants.CPU_RATIO_CPU and _saturated(sp):
        return None, 0, 0  # computing beside others' work on every core: see _saturated
    # A running BLAS pool of several threads is capped on the probe's threads as a pool caps it.
    sp.blas.live = _blas_live(sp, stats)
    slower = False  # the last round's threads did clearly less than one thread alone
    low = best if rounds else float("inf")  # the lowest reading
    gil = False  # the last round's threads of waiting work read the GIL held (_gil_queued)
    for _ in range(2 - rounds):
        short = rounds == 0 or best <= constants.PROBE_CLEAR[0]
        size = _round_size(sp, stats, remaining, short, rounds)
        if size is None:
            break  # a second round would cost too much of a short job: the first one stands
        k, per_thread = size
        items = sp.src.pull(k * per_thread)
        if len(items) < 2:
            if items:  # the input ended: run the straggler serially
                _run_serially(sp, items)
            break
        kk = min(k, len(items))
        reading = _probe_round(sp, stats, items, kk)
        k_used, rounds = max(k_used, kk), rounds + 1
        gil = False
        if reading is not None:
            s, together_slower, gil = reading
            if together_slower is not None:
                slower = together_slower
            low = min(low, s)
            best = max(best, s)
        if cheap_low and constants.SHARED_RESOURCE_SCALING <= best < constants.PARALLEL_SCALING * kk:
            break  # GIL-bound by the model's rule: processes, right even if it is not
        # Clear evidence (a low one needs a second round, unless slower together; so does a
        # GIL read from the cores kept busy: a stalled core reads as the GIL too).
        if (best >= _clear_gain(kk, stats) and not gil) or (
            best <= constants.PROBE_CLEAR[0] and (rounds >= 2 or slower)
        ):
            break
    if low <= constants.PROBE_CLEAR[0] < best < _clear_gain(k_used, stats):
        # A low reading and an unclear one: the low one stands.
        best = low
    return (min(max(best, 0.1), float(k_used)) if rounds else None), k_used, rounds


def _saturated(sp: "_Sampler") -> bool:
    """Other processes' work wanted every usable core while the sample ran (the calling
    thread's wait for a core says so). Computing items are then not probed on threads:
    threads holding the GIL queue behind a holder the scheduler has taken off its core, and
    the probe's round took 1.5-3x its items' serial time beside three spinning processes on
    2 cores; unprobed, the model counts the items as holding the GIL (serial or processes, at
    their fair share). Items costly to send to processes were probed there until session 18:
    beside three spinning processes every such row ran serial or slower after its probe
    (sorting 1 MB lists 1.17x serial, 29% of it the sample; JSON documents 1.33x; 8 MB
    NumPy inputs on 5 threads 1.22x, 34% of it the sample)."""
    return _crowded(sp)


def _round_size(
    sp: "_Sampler", stats: _Stats, remaining: int | None, short: bool, rounds: int
) -> tuple[int, int] | None:
    """(threads, items per thread) of the next round, ``short`` as a first round or longer;
    None where a second round would cost too much of a short job."""
    k, per_thread = _probe_plan(sp, stats, remaining, constants.PROBE_ROUND_MIN[0 if short else 1])
    left = None if sp.n_total is None else sp.n_total - sp.kept.done
    if not short and left is not None:
        # In a short job: LONG_ROUND_SHARE of the items left, no less than a first round.
        floor = _probe_plan(sp, stats, remaining, constants.PROBE_ROUND_MIN[0])[1]
        per_thread = min(per_thread, max(floor, math.ceil(constants.LONG_ROUND_SHARE * left / k)))
    if rounds and left is not None and k * per_thread > constants.SECOND_ROUND_SHARE * left:
        return None
    return k, per_thread


def _probe_round(
    sp: "_Sampler", stats: _Stats, items: list[Any], k: int
) -> tuple[float, bool | None, bool] | None:
    """Run ``items`` on ``k`` threads and keep them. Returns the round's scaling, whether its
    threads did clearly less together than one thread alone (None where not read) and whether
    it read the GIL held from the cores its threads of waiting work kept busy; None where the
    round took no time."""
    with sp.memory.watched() as mem, _blas_capped(sp, k):
        results, wall, cpu, whole, queued = _probe(sp.func, items, k, sp.kept.done, sp.collect)
    sp.kept.settled(results)
    # Items too long for a second serial one: k ran at once here, waiting ones at least; the
    # threads added for a GIL to show may queue on it, not all at their peak at once.
    at_once = k if stats.cpu_ratio < constants.IO_BOUND else min(k, max(2, sp.probe_threads))
    sp.memory.record(mem, at_once)
    sp.kept.keep(items, results, probed=True)
    if wall <= 0:
        return None
    if stats.cpu_ratio >= constants.CPU_BOUND and not sp.blas.single_time:
        # CPU-bound: cores kept busy at once (less the wait for a core) over one item's.
        s = (cpu / CpuMeter.active(whole, queued)) / stats.cpu_ratio
        return s, len(items) * stats.reference < constants.SLOWER_TOGETHER * whole, False
    # Waiting work, or BLAS capped (a BLAS library serializing its callers spins): throughput.
    s = len(items) * (sp.blas.single_time or stats.reference) / wall
    gil = not sp.blas.single_time and _gil_queued(stats, k, cpu, CpuMeter.active(whole, queued), _usable(sp))
    if gil:
        # The mean end of threads queued on the GIL is half its queue: the reading instead is
        # what k threads run where each item's CPU holds it (the share the model reads back).
        g = min(cpu / (len(items) * stats.reference), 1.0)
        s = min(s, 1.0 / (g + (1.0 - g) / k))
    return s, None, gil


def _gil_queued(stats: _Stats, k: int, cpu: float, active: float, cpus: int) -> bool:
    """Whether a round's threads of waiting work kept nearer one core busy than the cores
    their CPU, run side by side, would have kept busy (two or more, of ``cpus`` usable): the
    computing part of each item holds the GIL. Threads queued on the GIL end one after
    another, so their mean end (the throughput's wall) reads about twice their pace (4 ms
    waits and 2-3 ms of pure Python: x4.1 on 16 threads where a pool of them ran x2.2; the
    GIL's pace, x2.7, read as a speedup on 5 threads, still read 80% of each item as
    GIL-free). On 2 cores such rounds kept 0.85-1.19 cores busy (less the wait for a core,
    28 rounds), the same waits and GIL-free hashing 1.63-1.78 (3 rounds). Where the wait for
    a core cannot be read (no schedstat), GIL-free rounds of one item a thread read lower
    (1.16-1.34 there): the threads wait together, then compute together."""
    demand = k * stats.cpu_ratio
    if cpus < 2 or cpu <= 0 or demand < _gil_demand(stats):
        return False
    return cpu / active <= (1.0 + min(demand, cpus)) / 2.0


def _usable(sp: "_Sampler") -> int:
    """CPUs the probe's threads may run on, no more than the run's usable cores (a quota)."""
    return min(_cpus(), max(int(sp.cores), 1))


def _gil_demand(stats: _Stats) -> float:
    """Cores a round's threads should keep busy without the GIL, for a GIL to show. Computing
    work (read by its CPU over one item's CPU ratio): two at 0.85 each, what 2 threads of
    pure computing read. Waiting work (read by its throughput): twice what reads as one
    core, PROBE_CLEAR[0] (its threads' rounds keep fewer cores busy: they wait together)."""
    if stats.cpu_ratio >= constants.CPU_BOUND:
        return 2.0 * constants.PROBE_CLEAR[1]
    return 2.0 * constants.PROBE_CLEAR[0]


def _probe_plan(sp: "_Sampler", stats: _Stats, remaining: int | None, round_min: float) -> tuple[int, int]:
    """(threads, items per thread and round)."""
    ref = max(stats.reference, 1e-9)
    k = max(2, sp.probe_threads)
    if stats.cpu_ratio < constants.IO_BOUND:
        k = max(k, constants.IO_PROBE_THREADS)  # waiting work: more threads, and more of it done
    elif _usable(sp) >= 2:
        # Enough threads that their CPU, GIL-free, would keep two cores busy, so a GIL shows:
        # on 2 threads, items computing half their time read x1.7-1.9 with the GIL or without.
        # Not so many that the round would take the job (a quarter of the items left at most).
        need = math.ceil(_gil_demand(stats) / max(stats.cpu_ratio, 1e-3))
        if remaining is not None:
            need = min(need, remaining // 4)
        k = max(k, min(need, constants.IO_PROBE_THREADS))
    if remaining is not None and remaining <= 2 * k:
        # The rest is hardly more than a round: run it all at once, one item a thread.
        return min(k, remaining), max(1, -(-remaining // k))
    if remaining is not None:
        k = min(k, max(2, remaining // 2))
    work_left = remaining * ref if remaining is not None else constants.UNKNOWN_SECONDS
    budget = share_of(sp, work_left, 0.5 * sp.budget)
    per_thread = max(1, math.ceil(budget / k / ref))
    # Waiting work on more threads than CPUs: a shorter first round (WAIT_CLEAR is a third of k).
    if round_min == constants.PROBE_ROUND_MIN[0] and k > _cpus() and stats.cpu_ratio < constants.IO_BOUND:
        round_min = constants.WAIT_ROUND_MIN
    per_thread = min(max(per_thread, math.ceil(round_min / ref)), 10_000)
    if stats.cpu_ratio >= constants.CPU_BOUND:
        per_thread = max(per_thread, 2)  # one computing item a thread: its start is the reading
    if remaining is not None:
        per_thread = max(1, min(per_thread, remaining // (2 * k)))
    return k, per_thread


def _clear_gain(k: int, stats: _Stats) -> float:
    """A scaling on k threads that settles the probe: 0.85 of what GIL-free threads read at
    most (k; beyond the CPUs, for computing work, the CPUs over each item's CPU share), or
    WAIT_CLEAR k beyond the CPUs for waiting work."""
    cpus = _cpus()
    if k <= cpus:
        return constants.PROBE_CLEAR[1] * k
    if stats.cpu_ratio >= constants.CPU_BOUND:
        return constants.PROBE_CLEAR[1] * min(k, cpus / stats.cpu_ratio)
    return constants.WAIT_CLEAR * k


def _misread_is_cheap(pk: _Pickling, stats: _Stats) -> bool:
    """Whether reading GIL-free items as GIL-bound would cost little: they would go to
    processes, and pickling them (twice) takes under ``CHEAP_MISREAD`` of their time. A
    reading for processes then needs no second round."""
    if pk.transport is None or pk.error is not None:
        return False
    item = 0.0 if pk.items_shared else pk.item_time  # one object as every item: once a chunk
    return 2.0 * (item + pk.result_time) <= constants.CHEAP_MISREAD * max(stats.reference, 1e-9)


def _probe(
    func: Callable[..., Any], items: list[Any], k: int, first_index: int, collect: bool
) -> tuple[list[Any], float, float, float, float]:
    """Run ``items`` on ``k`` threads at once. Returns (results, wall, the function's CPU,
    the round's whole wall time, the threads' mean wait for a core).

    The threads start together once all of them run (yielding, or on an event where there
    are more threads than CPUs). The wall time is the mean over the threads (not the round's
    tail); CPU over wall takes the whole round."""
    results: list[Any] = [None] * len(items)
    failures: list[tuple[int, BaseException, str]] = []
    arrived = [0]
    lock = threading.Lock()
    ends = [0.0] * k
    queues = [0.0] * k  # each thread's wait for a core (other processes busy) over the round
    spin = k <= _cpus()
    go = threading.Event()
    stop = threading.Event()  # the caller was interrupted: each thread ends after its item
    ended = [threading.Event() for _ in range(k)]  # (join() cannot be trusted once interrupted, see below)
    cpus = _cpu_list() if spin else []

    def worker(slot: int) -> None:
        q0: float | None = None
        try:
            if cpus:
                _own_cpus(cpus[slot::k])
            with lock:
                arrived[0] += 1
            if not spin:
                go.wait()
            while arrived[0] <= k and not stop.is_set():  # the caller counts itself in once all k are here
                time.sleep(0)
            q0 = queued_seconds()
            for i in range(slot, len(items), k):
                if stop.is_set():
                    return
                try:
                    results[i] = func(items[i])
                except BaseException as exc:  # settled in the caller below
                    failures.append((first_index + i, exc, ""))
                    if not collect or not isinstance(exc, Exception):
                        return
                    results[i] = ItemFailed(first_index + i, exc)
        finally:
            ends[slot] = time.perf_counter()
            queues[slot] = queued_seconds() - q0 if q0 is not None else 0.0
            ended[slot].set()

    threads = [
        threading.Thread(target=worker, args=(s,), name=f"autopar-probe-{s}", daemon=True) for s in range(k)
    ]
    # The probe's threads count from the start signal on; threads that ran before do not.
    meter = NewThreadsCpu().start()
    try:
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
    except BaseException:  # (Ctrl-C): no thread is left running items; a second one stops the wait
        stop.set()
        go.set()
        # Not join(): on 3.10-3.12, a join interrupted by Ctrl-C marks the thread it waited
        # for as ended while it still runs, and joins of it return at once from then on.
        for t, done in zip(threads, ended):
            if t.ident is not None:
                done.wait()
        raise
    cpu = meter.stop()
    wall = sum(ends) / k - t0
    settle(sorted(failures, key=lambda f: f[0]), "thread (probe)", collect)
    return results, wall, cpu, max(ends) - t0, sum(queues) / k


def _own_cpus(cpus: list[int]) -> None:
    """Keep the calling probe thread on ``cpus`` (probe thread ``slot`` of k gets every k-th
    usable CPU from ``slot``; threads it starts inherit them)."""
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
