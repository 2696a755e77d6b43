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
from autopar.tune.measure import CpuMeter, queued_seconds

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
    """This process and a spinning one on the same single CPU, for the block."""

    def __enter__(self) -> "OneBusyCpu":
        self.before = os.sched_getaffinity(0)
        cpu = min(self.before)
        self.hog = subprocess.Popen(
            [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
        )
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.2)  # the hog is up and spinning
        return self

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self.before)
        self.hog.kill()
        self.hog.wait()


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
