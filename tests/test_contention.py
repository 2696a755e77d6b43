"""A busy machine is not waiting work: time spent waiting for a core is told apart (issue 27).

A computing thread that shares its CPU with another process spends part of its wall time in
the run queue. Read as CPU over wall, that looked like work that waits, and pure Python went
to a dozen threads beside CPU hogs. Linux counts the run-queue wait per thread (schedstat);
these tests share one CPU with a spinning process on purpose, so the wait is there on any
machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from autopar import optimize
from autopar.tune.measure import CpuMeter, OthersMeter, queued_seconds

pytestmark = pytest.mark.skipif(
    not os.path.exists(f"/proc/self/task/{os.getpid()}/schedstat") or not hasattr(os, "sched_setaffinity"),
    reason="needs Linux schedstat and CPU affinity",
)


def spin(seconds: float) -> int:
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


class OneBusyCpu:
    """This process and ``hogs`` spinning ones on the same single CPU, for the block."""

    def __init__(self, hogs: int = 1) -> None:
        self.n = hogs

    def __enter__(self) -> "OneBusyCpu":
        self.before = os.sched_getaffinity(0)
        cpu = min(self.before)
        self.hogs = [
            subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
            for _ in range(self.n)
        ]
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.2)  # the hogs are up and spinning
        return self

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self.before)
        for hog in self.hogs:
            hog.kill()
            hog.wait()


def test_a_computing_item_sharing_its_cpu_reads_as_computing():
    with OneBusyCpu():
        meter = CpuMeter().start()
        spin(0.1)
        wall, own, cpu = meter.stop()
    assert meter.queued > 0.02  # it did wait for its CPU
    assert own / wall < 0.85  # so over its wall time it looks like waiting in part
    assert own / CpuMeter.active(wall, meter.queued, own) > 0.9  # less the wait: computing


def test_queued_seconds_only_grows():
    a = queued_seconds()
    spin(0.01)
    assert queued_seconds() >= a


def _loop(n: int) -> int:
    s = 0
    for i in range(n):
        s += i * i
    return s


def test_pure_python_beside_a_hog_is_cpu_bound_to_the_sample():
    with OneBusyCpu():
        r = optimize(_loop, [300_000] * 40, executor_type="serial")  # items of tens of ms
    assert r.profile.cpu_ratio > 0.8, r.explain()


# -- a first call's one-time cost --------------------------------------------------------------

_TABLE: dict[str, int] = {}
_TABLE_LOCK = __import__("threading").Lock()


def _lazy_table(n: int) -> int:
    """Builds a table on its first call (0.3 s of CPU, under a lock, as an import does);
    later calls wait for it, then compute about a millisecond."""
    with _TABLE_LOCK:
        if not _TABLE:
            spin(0.3)
            _TABLE["ready"] = 1
    return _loop(n) + _TABLE["ready"]


def test_an_item_waiting_on_the_first_calls_one_time_cost_is_not_taken_for_waiting_work():
    _TABLE.clear()
    r = optimize(_lazy_table, [20_000] * 400)
    p = r.profile
    assert p.warmup_time is not None and p.warmup_time >= 0.3, r.explain()
    assert p.cpu_ratio > 0.5, r.explain()  # computing, not waiting
    assert p.item_time_mean < 0.1, r.explain()  # the steady item, not the first call
    assert not (r.executor_type == "thread" and r.n_jobs > r.usable_cores), r.explain()


def test_other_processes_on_the_cpus_are_counted_by_what_they_want():
    # One CPU shared with one spinning process: whatever else the machine runs, at least
    # half a core's worth of another's work competed with this process for it.
    with OneBusyCpu():
        meter = OthersMeter()
        spin(0.15)
        others = meter.cores()
    assert others >= 0.5, others


def test_a_short_window_counts_what_other_processes_want():
    # Under OTHERS_MIN_WINDOW /proc/stat's ticks say nothing; the calling thread's wait for a
    # core (nanoseconds) still does.
    with OneBusyCpu():
        meter = OthersMeter()
        spin(0.012)  # of CPU: about 25 ms sharing the CPU
        others = meter.cores()
    assert others >= 0.5, others


def test_computing_beside_others_work_on_every_core_is_not_probed_on_threads():
    # Threads holding the GIL queue behind a holder the scheduler took off its core: beside
    # other processes' work on every core the probe's round took 1.5-3x its items' serial
    # time. Items cheap to send to processes are not probed there; the model counts them
    # as holding the GIL.
    # Items costly to send to processes (a list of 100,000 ints an item; the sampled ones
    # distinct, not one list pickled once a chunk) are not probed there either.
    # Items of about 4 ms: the serial batches before the probe span a few of the scheduler's
    # slices, so the wait for the core shows (items of 1.3 ms read no wait at all, 1 run in 4
    # of the suite beside a hog: the thread ran its first slice whole; see decisions).
    # About 1 run in 25 the first item's early look reads the caller as waiting (it slept
    # 19 ms of 25 on the GIL while the looking thread waited for the core: decisions' Known
    # short) and items run ahead at once, a probe round of their own: that look is tried
    # again, up to three times; the pick is never threads, whatever the look read.
    big = list(range(100_000))
    for func, items in ((_loop, [100_000] * 100), (_sum_head, [list(big) for _ in range(8)] + [big] * 50)):
        for _ in range(3):
            with OneBusyCpu(hogs=2):  # (one would want the CPU about as much as this process: the threshold)
                r = optimize(func, items, cache=False)
            p = r.profile
            assert r.executor_type != "thread", r.explain()
            assert p.others_cores >= 0.5, r.explain()
            if p.probe_rounds == 0:
                break
        assert p.probe_rounds == 0 and p.thread_scaling is None, r.explain()


def _sum_head(xs: list) -> int:
    return sum(x * x for x in xs[:80_000])


def _computing_items(**figures: object) -> "Profile":
    """A synthetic profile: 100 items of 10 ms of CPU left, cheap to pickle."""
    from dataclasses import replace

    from autopar import Profile

    base = Profile(
        n_sampled=10, n_probed=0, n_items=110, item_time_mean=0.01, item_time_std=0.0, item_time_max=0.01,
        cpu_ratio=1.0, func_bytes=50, func_pickle_time=1e-6, item_bytes=20, item_pickle_time=1e-6,
        result_bytes=20, result_pickle_time=1e-6, transport="pickle", pickle_error=None,
        peak_memory_per_item=1 << 10, thread_scaling=1.0, probe_threads=2, sample_time=0.1, exhausted=False,
    )
    return replace(base, **figures)


def test_the_model_predicts_pools_at_their_share_beside_other_work():
    # Synthetic: 100 CPU-bound items of 10 ms. On 2 idle cores two processes halve the work;
    # beside three other processes' work they get 0.8 of the cores against serial's 0.5 (x1.6,
    # not x2); serial's own prediction is the sample's item time either way (measured at its
    # share).
    from dataclasses import replace

    from autopar import pool_costs, system_info
    from autopar.tune.model import decide
    from autopar.tune.predict import _predict

    profile = _computing_items()
    costs = pool_costs()
    idle = _predict("process", 2, 10, 100, profile, costs, 2, 1.0)
    loaded = _predict("process", 2, 10, 100, replace(profile, others_cores=3.0), costs, 2, 1.0)
    assert loaded.work == pytest.approx(idle.work * 2 / 1.6, rel=0.02)
    system = replace(system_info(blas=False), usable_cores=2)
    serial = [decide(replace(profile, others_cores=o), system, costs).serial.predicted_time for o in (0.0, 3.0)]
    assert serial[0] == serial[1] == pytest.approx(1.0)


def test_workers_of_a_fresh_interpreter_pay_the_first_call_again():
    # Synthetic: a first call of 0.5 s (an import) before items of 10 ms. Forked workers
    # inherit what the sample's first call left; spawn and forkserver workers pay it again,
    # side by side: once more in the pool's wall time.
    from dataclasses import replace

    from autopar.tune.costs import pool_costs
    from autopar.tune.predict import _predict

    profile = _computing_items(item_time_max=0.5, sample_time=0.6, warmup_time=0.5)
    for method in ("fork", "spawn", "forkserver"):
        costs = replace(pool_costs(), start_method=method)
        without = _predict("process", 2, 10, 100, replace(profile, warmup_time=None), costs, 2, 1.0)
        warm = _predict("process", 2, 10, 100, profile, costs, 2, 1.0)
        extra = 0.0 if method == "fork" else 0.49
        assert warm.predicted_time == pytest.approx(without.predicted_time + extra), method


def test_the_staged_model_gives_its_stages_their_share_beside_other_work():
    # Synthetic: three pure-Python stages of 1 ms each, staged process x1 / thread x1 /
    # process x1 on 2 cores. Beside three other processes' work the stages get their fair
    # share of the cores as fused's prediction does (optimize()'s), so staged is not picked
    # for a machine it reads as idle while fused's prediction counts the load.
    from dataclasses import replace

    from autopar import pool_costs
    from autopar.pipeline.model import _staged_time

    measured = [(1e-3, 1e-3)] * 3
    config = [("process", 1), ("thread", 1), ("process", 1)]
    sizes = [100.0] * 4
    costs = replace(pool_costs(), process_task_overhead=0.0, process_seconds_per_byte=0.0)  # (as measured, they vary)
    fixed, _ = _staged_time(0, measured, sizes, config, 2, costs, False)  # pool starts and the first item
    idle, _ = _staged_time(1000, measured, sizes, config, 2, costs, False)
    quiet, _ = _staged_time(1000, measured, sizes, config, 2, costs, False, 0.0)
    loaded, pace = _staged_time(1000, measured, sizes, config, 2, costs, False, 3.0)
    assert quiet == idle
    # All the stages' CPU over the cores: on an idle machine two; beside three other busy
    # cores' work, three workers get 2 x (3 + 1) / (3 + 1 + 3) of them, as optimize()'s pools.
    assert pace == "the cores"
    assert (loaded - fixed) / (idle - fixed) == pytest.approx(2 / (2 * 4 / 7), rel=0.01)


def test_a_wait_for_this_processes_own_threads_is_not_others_work():
    # The sample's helper thread and a BLAS pool left spinning beside the calling thread
    # (three runnable on two cores) made it wait for a core: read as 2.2-2.5 cores of
    # others' work on a quiet machine, the probe skipped as "saturated" and serial picked.
    # Others can only have made it wait where they ran: room this process left, and the
    # CPUs' busy time beyond its own, must hold half the wait.
    meter = OthersMeter()
    cores = len(meter.cpus)
    meter.t0 = time.perf_counter() - 0.1
    meter.own0 = time.process_time() - cores * 0.1  # its own threads filled every core
    assert not meter._others_ran(0.02)
    meter.own0 = time.process_time() - 0.05  # half a core of its own: room for others
    meter.busy0 = None  # (the CPUs' busy time not read)
    assert meter._others_ran(0.02)
