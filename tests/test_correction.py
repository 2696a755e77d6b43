"""Correction while running that does not trust the figures that misled the choice (issue 27):
a thread run whose own figures show the GIL held in turn leaves the threads, whatever the
sample or the tuning cache said."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

import autopar
from autopar.tune import wisdom
from test_wisdom import cache  # noqa: F401  (the tuning cache on, in a folder of the test's own)


def loop(x: int) -> int:
    s = 0
    for i in range(2000):  # about 0.1 ms of pure Python
        s += i
    return s + x


@pytest.mark.skipif(autopar.tune.system.usable_cores() < 2, reason="a process pool of two to switch to")
def test_threads_found_holding_the_gil_give_way_while_running(cache):
    # The profile a first call's import leaves (items mostly waiting, 4 threads x3.7): kept in
    # the cache, it sends pure Python to threads with no sample to doubt. The run's own
    # figures (the threads' CPU an item times the rate they deliver: one core) say GIL, and
    # the run leaves the threads for the runner-up process pool (or serial) part way.
    t0 = time.thread_time()
    [loop(x) for x in range(500)]
    item = (time.thread_time() - t0) / 500
    data = list(range(int(0.8 / item)))  # about 0.8 s serially, whatever this machine's speed
    first = autopar.optimize(loop, data)
    [entry] = wisdom.entries()
    forged = replace(
        entry.profile, thread_scaling=3.7, probe_threads=4, cpu_ratio=0.13, item_time_mean=item, item_time_std=0.0,
        item_time_max=item, others_cores=0.0,
    )
    wisdom.store(first.cache_key, entry.func, forged)
    r = autopar.optimize(loop, data)
    assert r.cache == "hit" and r.executor_type == "thread" and r.n_jobs > 1, r.explain()
    out, report = autopar.execute(loop, data, result=r, return_report=True)
    assert out == [loop(x) for x in data]
    assert report.fell_back, report
    at, to, why = report.fallback
    assert 0 < at < len(data) and (to.startswith("process") or to == "serial"), report.fallback
    # ... and the cache learns it: the next run on the kept figures keeps threads off.
    assert report.cache == "corrected", report.cache
    again = autopar.optimize(loop, data)
    assert again.cache == "hit" and (again.executor_type != "thread" or again.n_jobs == 1), again.explain()
