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
    # About 1.6 s serially, whatever this machine's speed. The GIL shows after half the items
    # at the earliest (2 chunks a thread, of 4; read at 48-59% in 7 runs), and the switch must
    # save twice the pool's start on what is left: with 0.8 s, a full CI run on 3.13 once ran
    # the threads to the end without switching (a late reading leaves too little to save).
    data = list(range(int(1.6 / item)))
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


def _process_watch(worker_share: float, item: float = 0.001) -> "Fallback":
    """A Fallback watching a chosen process pool of 2 workers on 2 cores over computing items
    of ``item`` seconds, whose workers each got ``worker_share`` of a core while busy."""
    from autopar.options import Options
    from autopar.run.adapt import Fallback
    from autopar.run.chunks import Job
    from autopar.run.report import ExecutionReport, Progress

    r = autopar.optimize(loop, range(300), cache=False)
    profile = replace(r.profile, cpu_ratio=1.0, item_time_mean=item, item_time_std=0.0, item_time_max=item)
    result = replace(r, executor_type="process", n_jobs=2, usable_cores=2, profile=profile, n_remaining=10_000)
    report = ExecutionReport(executor_type="process", n_jobs=2, chunksize=10, start_method="fork")
    job = Job(loop, "process", 2, 10, "fork", Options(), result, None, Progress(False, None, None), report)
    fb = Fallback(job)
    fb.busy(100, 100 * item / worker_share, 100 * item)  # CPU over the time in the workers
    return fb


def _verdict(fb: "Fallback", rate: float) -> tuple[str, str] | None:
    """The verdict on a window in which the pool delivered ``rate`` items a second, serial's
    item time already checked in the caller."""
    fb.checked, fb.chunks, fb.t0 = True, 5, time.perf_counter() - 0.1
    return fb.losing(int(rate * 0.1), 10_000)


def test_a_process_pool_beside_others_work_is_judged_against_serial_at_its_share():
    # Serial's item time is its CPU time: on a quiet machine a pool of 2 at 800 items/s loses
    # to serial's 1,000. Beside three spinning processes the same 800 is 2 workers at 0.4 of a
    # core each; serial would get 0.5 of one there (500 items/s): the pool stays.
    quiet = _process_watch(1.0)
    assert quiet.serial_share() == pytest.approx(1.0)
    assert _verdict(quiet, 800)[0] == "serial"
    busy = _process_watch(0.4)
    assert busy.serial_share() == pytest.approx(0.5)
    assert _verdict(busy, 800) is None
    # ... and a pool that delivers less than serial's share there still gives way.
    assert _verdict(_process_watch(0.4), 400)[0] == "serial"


_BLOCK = bytes(1 << 20)


def _write_read(path: str) -> float:
    """Writes and reads back 8 MB (time in the kernel); returns the thread's CPU seconds."""
    c0 = time.thread_time()
    for _ in range(8):
        with open(path, "wb") as fh:
            fh.write(_BLOCK)
        with open(path, "rb") as fh:
            fh.read()
    return time.thread_time() - c0


@pytest.mark.skipif(not hasattr(__import__("resource"), "RUSAGE_THREAD"), reason="no per-thread user time")
def test_a_thread_chunks_cpu_is_its_user_time(tmp_path):
    # The run's GIL check reads the CPU of the threads' chunks: a file's writes and reads, in
    # the kernel, hold no GIL (processes would wait on them as well), yet read as one core's
    # worth of computing threads; the suite's file workload went from thread x6 to process
    # x2 (x2 slower) and the tuning cache kept it. Pure Python's chunks read their CPU.
    from autopar.backends.pools import make_backend

    backend = make_backend("thread", _write_read, 2)
    try:
        files = [str(tmp_path / f"f{i}") for i in range(12)]
        values, _, failures, cpu = backend.submit(0, files).result()
        assert not failures
        assert cpu < 0.5 * sum(values), (cpu, sum(values))
    finally:
        backend.close(True)
    backend = make_backend("thread", loop, 2)
    try:
        t0 = time.thread_time()
        [loop(x) for x in range(300)]
        alone = time.thread_time() - t0
        _, _, failures, cpu = backend.submit(0, list(range(300))).result()
        assert not failures and cpu > 0.5 * alone, (cpu, alone)
    finally:
        backend.close(True)
