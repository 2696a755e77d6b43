"""The tuning cache: keys, hits without a sample, runs fed back, stale entries measured again,
several processes at once, its bound, its version, and the switches that turn it off."""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

import autopar
from autopar.run.adapt import GIL_CORES
from autopar.tune import wisdom
from autopar.tune.system import system_info


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The cache on, in a folder of the test's own (pool costs measured once per session
    are copied in, so no test measures them again)."""
    import shutil

    from autopar.tune.costs import cache_dir

    for f in cache_dir().glob("pool-costs-*.json"):
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("AUTOPAR_CACHE", raising=False)
    yield tmp_path


CALLS = [0]


def counted(x: int) -> int:
    CALLS[0] += 1
    s = 0
    for i in range(2000):  # about 0.1 ms: jobs of 2000-3000 items the sample does not finish
        s += i
    return s + x


DELAY = [0.0005]


def nap(x: int) -> int:
    time.sleep(DELAY[0])
    return x


def _key(func, data, n_items=None, options=()):
    return wisdom.job_key(func, data, n_items, system_info(blas=False), "fork", options)


def test_a_key_follows_the_code_the_settings_and_the_data():
    data = list(range(1000))
    assert _key(counted, data) == _key(counted, list(range(1000, 2000)))  # same kind of data
    assert _key(counted, data) != _key(nap, data)
    assert _key(counted, data) != _key(counted, list(range(10)))  # another count bucket
    assert _key(counted, data) != _key(counted, [str(i) for i in data])  # another item type
    assert _key(counted, data) != _key(counted, data, options=("thread",))
    small, large = [np.zeros(10)] * 4, [np.zeros(100_000)] * 4
    assert _key(np.sum, small) != _key(np.sum, large)  # another item size
    # Lambdas by value: the same code and defaults give one key, other code another.
    assert _key(lambda x: x + 1, data) == _key(lambda x: x + 1, data)
    assert _key(lambda x: x + 1, data) != _key(lambda x: x + 2, data)
    assert _key(lambda x, k=3: x + k, data) != _key(lambda x, k="3": x + k, data)  # a default's type
    # Closure values by type and size; a partial by its arguments; an object by its state.
    def make(v):
        return lambda x: x + len(v)

    assert _key(make([1, 2]), data) == _key(make([3, 4]), data)
    assert _key(make([1, 2]), data) != _key(make(list(range(100))), data)
    assert _key(functools.partial(nap), data) != _key(functools.partial(counted), data)
    from autopar.image.pack import _Scan

    assert _key(_Scan("slope", None), data) == _key(_Scan("slope", None), data)
    assert _key(_Scan("slope", None), data) != _key(_Scan("threshold", 3.0), data)
    # An iterator (its items cannot be looked at without taking them): by its type and
    # the count given; no items: no key.
    assert _key(counted, iter(data)) == _key(counted, iter([]))
    assert _key(counted, iter(data)) != _key(counted, (x for x in data))  # another kind of iterator
    gens = [(x for x in data) for _ in range(2)]
    assert _key(counted, gens[0]) == _key(counted, gens[1]) != _key(counted, (x for x in data))  # made elsewhere
    assert _key(counted, iter(data)) != _key(counted, iter(data), n_items=1000)
    assert _key(counted, iter(data)) != _key(nap, iter(data)) and _key(counted, iter(data)) != _key(counted, data)
    assert _key(counted, []) is None


def test_a_known_job_is_decided_without_running_an_item(cache):
    data = list(range(3000))
    first = autopar.optimize(counted, data)
    assert first.cache == "miss" and first.profile.n_sampled > 0
    CALLS[0] = 0
    again = autopar.optimize(counted, data)
    assert again.cache == "hit" and CALLS[0] == 0  # no sample
    assert again.cache_key == first.cache_key and again.n_remaining == 3000
    assert "tuning cache" in again.explain()
    assert again.profile.item_time_mean == pytest.approx(first.profile.item_time_mean)
    out = autopar.execute(counted, data, result=again)
    assert out == [counted(x) for x in data]
    assert autopar.optimize(counted, data, cache=False).cache is None


def test_a_generator_job_is_decided_from_its_kept_figures_and_loses_no_item(cache):
    # A one-shot input had no key: every run of a generator job was measured again. On a
    # hit its first items are taken (not run) and handed back with the result.
    def items(n=3000):
        return (x for x in range(n))

    first = autopar.optimize(counted, items())
    assert first.cache == "miss" and first.profile.n_sampled > 0
    assert len(wisdom.entries()) == 1
    gen = items()
    CALLS[0] = 0
    again = autopar.optimize(counted, gen)
    assert again.cache == "hit" and CALLS[0] == 0  # no sample: no item run
    assert again.profile.n_items is None  # (it did not end within the items taken ahead)
    assert autopar.execute(counted, gen, result=again) == [counted(x) for x in range(3000)]
    want = [counted(x) for x in range(3000)]
    gen = items()
    again = autopar.optimize(counted, gen)
    assert autopar.execute(counted, gen) == want  # the result found by the input itself: each item once, in order
    assert autopar.execute(counted, items()) == want


def _numbers(n: int, fail_at: int | None = None, every: float = 0.0):
    for x in range(n):
        if x == fail_at:
            raise OSError("the input broke")
        if every:
            time.sleep(every)  # a live feed: an item every so often
        yield x


def test_a_short_or_empty_generator_is_not_taken_for_the_long_one_kept(cache):
    # One key for a generator whatever its length: on a hit the items taken ahead show a
    # short one ending (an empty one, one that breaks), decided as what it is, not as the
    # long job kept; a hit that takes items ahead hands them all back. (Every optimize()
    # before any run: a run's feedback may mark the entry stale, and the next one measure.)
    assert autopar.optimize(counted, _numbers(3000)).cache == "miss"
    short, empty, broken, feed = _numbers(3), _numbers(0), _numbers(3000, fail_at=2), _numbers(100, every=0.01)
    r_short, r_empty, r_broken = (autopar.optimize(counted, g) for g in (short, empty, broken))
    r_feed = autopar.optimize(counted, feed)
    assert all(r.cache == "hit" for r in (r_short, r_empty, r_broken, r_feed))
    assert r_short.profile.n_items == 3 and r_short.executor_type == "serial"
    assert r_empty.profile.n_items == 0 and r_empty.executor_type == "serial"
    assert r_broken.profile.n_items == 2
    assert r_feed.profile.n_items is None  # items taken ahead for 50 ms: not all 100 waited for (it would know 100)
    assert autopar.execute(counted, short, result=r_short) == [counted(x) for x in range(3)]
    assert autopar.execute(counted, empty, result=r_empty) == []
    seen = []
    with pytest.raises(OSError, match="the input broke"):
        for value in autopar.execute_iter(counted, broken, result=r_broken):
            seen.append(value)
    assert seen == [counted(0), counted(1)]  # every result before the input's error
    assert autopar.execute(counted, feed, result=r_feed) == [counted(x) for x in range(100)]


def test_each_run_feeds_back_and_a_far_off_one_makes_the_entry_measured_again(cache):
    # Naps of 20 ms, then 60 ms: a busy machine adds a few ms to a nap, never 1.5x of 20 ms
    # on the run after the sample, nor brings 60 ms back within 1.5x of 20 ms.
    data = list(range(30))
    try:
        DELAY[0] = 0.02
        r = autopar.optimize(nap, data, executor_type="serial")
        assert r.cache == "miss"
        _, report = autopar.execute(nap, data, result=r, return_report=True)
        assert report.cache == "updated"
        [entry] = wisdom.entries()
        assert entry.runs == 1 and entry.hits == 0 and not entry.stale
        DELAY[0] = 0.06  # the job changed in a way the key cannot see: 3x slower items
        r = autopar.optimize(nap, data, executor_type="serial")
        assert r.cache == "hit"
        _, report = autopar.execute(nap, data, result=r, return_report=True)
        assert report.cache == "stale"
        assert wisdom.entries()[0].stale
        DELAY[0] = 0.02
        r = autopar.optimize(nap, data, executor_type="serial")
    finally:
        DELAY[0] = 0.0005
    assert r.cache == "miss" and r.profile.n_sampled > 0  # measured again, and kept anew
    [entry] = wisdom.entries()
    assert not entry.stale and entry.runs == 0


def test_a_serial_pick_whose_items_run_faster_keeps_the_runs_time_without_a_sample(cache):
    # Naps of 60 ms kept for a serial pick, then runs of 20 ms naps: serial stays the pick
    # (a pool only gains less on shorter items); the run's item time replaces the kept one.
    data = list(range(8))
    try:
        DELAY[0] = 0.06
        r = autopar.optimize(nap, data, executor_type="serial")
        assert r.cache == "miss" and r.profile.item_time_mean >= 0.06
        DELAY[0] = 0.02
        r = autopar.optimize(nap, data, executor_type="serial")
        assert r.cache == "hit"
        _, report = autopar.execute(nap, data, result=r, return_report=True)
        assert report.cache == "replaced"
        [entry] = wisdom.entries()
        assert not entry.stale and entry.profile.item_time_mean == pytest.approx(report.measured_item_time)
        again = autopar.optimize(nap, data, executor_type="serial")
    finally:
        DELAY[0] = 0.0005
    assert again.cache == "hit" and again.profile.item_time_mean < 0.04  # no new sample, the run's figure


FAIL = [False]


def nap_or_fail(x: int) -> int:
    if FAIL[0]:
        raise ValueError(x)
    time.sleep(DELAY[0])
    return x


def test_only_a_serial_picks_own_clean_run_replaces_the_kept_time(cache):
    data = list(range(8))
    try:
        # A pool's pick, run serially by hand with faster items: contradicted, measured again.
        DELAY[0] = 0.01
        r = autopar.optimize(nap, list(range(200)))
        assert r.cache == "miss" and r.executor_type == "thread" and r.profile.n_remaining, r.explain()
        DELAY[0] = 0.002
        _, report = autopar.execute(nap, list(range(200)), result=r, executor_type="serial", return_report=True)
        assert report.cache == "stale"
        wisdom.clear()
        # A serial pick whose items all failed at once (errors="collect"): not an item's time.
        DELAY[0] = 0.03
        r = autopar.optimize(nap_or_fail, data, executor_type="serial")
        assert r.cache == "miss"
        FAIL[0] = True
        _, report = autopar.execute(nap_or_fail, data, result=r, errors="collect", return_report=True)
        assert report.failures and report.cache == "stale"
    finally:
        DELAY[0] = 0.0005
        FAIL[0] = False


def test_the_kept_item_time_follows_the_runs(cache):
    key = "k" * 32
    base = autopar.optimize(counted, list(range(500)), cache=False).profile
    assert wisdom.store(key, "f", base)
    t = base.item_time_mean
    assert wisdom.observe(key, 1.4 * t) == "updated"
    assert wisdom.entries()[0].profile.item_time_mean == pytest.approx(1.2 * t)  # (t + 1.4t) / 2
    assert wisdom.observe(key, 1.4 * t) == "updated"
    assert wisdom.entries()[0].profile.item_time_mean == pytest.approx((2 * 1.2 * t + 1.4 * t) / 3)
    assert wisdom.observe("no such key", t) is None
    # 1.5x or 1/1.5 the kept time contradicts it: measured again next time
    assert wisdom.observe(key, 1.5 * wisdom.entries()[0].profile.item_time_mean) == "stale"
    wisdom.store(key, "f", base)
    assert wisdom.observe(key, t / 1.5) == "stale"
    # a serial run: faster items replace the kept time; slower ones still contradict it
    wisdom.store(key, "f", base)
    assert wisdom.observe(key, t / 2, serial=True) == "replaced"
    [entry] = wisdom.entries()
    assert not entry.stale and entry.profile.item_time_mean == pytest.approx(t / 2) and entry.runs == 1
    assert entry.profile.item_time_max == pytest.approx(base.item_time_max / 2)
    assert wisdom.observe(key, t, serial=True) == "stale"  # 2x the kept time now


def _writer(args):
    folder, worker, profile = args
    import os

    os.environ["AUTOPAR_CACHE_DIR"] = folder
    from autopar.tune import wisdom as w

    ok = 0
    for i in range(40):
        ok += w.store(f"{worker}-{i}", "abs", profile)
        ok += w.observe(f"{worker}-{i}", profile.item_time_mean or 1e-6) == "updated"
        ok += w.observe("shared", 1e-6) is not None or w.store("shared", "abs", profile)
    return ok


def test_several_processes_write_at_once(cache):
    profile = autopar.optimize(abs, [1, 2, 3], cache=False, sample_time=0.01).profile
    with mp.get_context("spawn").Pool(3) as pool:
        done = pool.map(_writer, [(str(cache), w, profile) for w in range(3)])
    assert done == [120, 120, 120]  # no write was lost to a lock
    keys = {e.key for e in wisdom.entries()}
    assert {f"{w}-{i}" for w in range(3) for i in range(40)} <= keys and "shared" in keys
    assert wisdom.entries()[0].profile.n_items == 3


def test_the_cache_is_bounded_least_recently_used_first(cache, monkeypatch):
    monkeypatch.setattr(wisdom, "MAX_ENTRIES", 5)
    profile = autopar.optimize(abs, [1, 2, 3], cache=False, sample_time=0.01).profile
    for i in range(5):
        wisdom.store(f"key{i}", "abs", profile)
        time.sleep(0.002)
    assert wisdom.lookup("key0") is not None  # used: now the most recent
    for i in range(5, 8):
        time.sleep(0.002)
        wisdom.store(f"key{i}", "abs", profile)
    assert sorted(e.key for e in wisdom.entries()) == ["key0", "key4", "key5", "key6", "key7"]


def test_another_versions_file_is_emptied_not_read(cache):
    db = sqlite3.connect(cache / "tuning.sqlite3")
    db.execute("CREATE TABLE entries (key TEXT, something TEXT)")
    db.execute("INSERT INTO entries VALUES ('x', 'y')")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    assert wisdom.entries() == []
    r = autopar.optimize(counted, list(range(2000)))
    assert r.cache == "miss" and len(wisdom.entries()) == 1


def test_switched_off_by_the_environment_or_unusable_without_failing(cache, monkeypatch, tmp_path):
    data = list(range(2000))
    monkeypatch.setenv("AUTOPAR_CACHE", "off")
    assert autopar.optimize(counted, data).cache is None
    monkeypatch.delenv("AUTOPAR_CACHE")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(blocker / "cache"))  # cannot be made
    r = autopar.optimize(counted, data)
    assert r.executor_type in ("serial", "thread", "process")  # the job goes on unhelped
    assert autopar.execute(counted, data[:50]) == [counted(x) for x in data[:50]]


def test_the_cache_command(cache):
    data = list(range(3000))
    key = autopar.optimize(counted, data).cache_key
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "autopar", "cache", *a], capture_output=True, text=True, timeout=60
    )
    listed = run("list")
    assert listed.returncode == 0 and key[:12] in listed.stdout and "test_wisdom.counted" in listed.stdout
    shown = run("show", key[:8])
    assert shown.returncode == 0 and json.loads(shown.stdout)["key"] == key
    assert run("show", "zzzz").returncode == 2
    assert str(cache) in run("path").stdout
    cleared = run("clear")
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout
    assert wisdom.entries() == []


def test_a_sample_that_finished_the_job_serially_is_not_kept(cache):
    # Nothing ran at once: nothing in it tells a pool how the items go.
    for kind in ("serial", None):
        r = autopar.optimize(counted, list(range(5)), executor_type=kind)
        assert r.profile.n_remaining == 0 and r.profile.n_probed == 0 and r.cache == "miss"
        assert wisdom.entries() == []


def test_which_finished_samples_are_kept():
    # Kept: one that left work, or finished the job in the probe's rounds (items timed alone
    # first, then a reading on threads). Not kept: one that finished serially, or whose items
    # all ran at once beside the first (no item timed alone: 6 items under one lock read as
    # 116 ms an item and x3.4 on 6 threads).
    from dataclasses import replace

    from autopar import Profile

    left = Profile(
        n_sampled=3, n_probed=4, n_items=100, item_time_mean=0.03, item_time_std=0.0, item_time_max=0.03,
        cpu_ratio=1.0, func_bytes=50, func_pickle_time=1e-6, item_bytes=20, item_pickle_time=1e-6,
        result_bytes=20, result_pickle_time=1e-6, transport="pickle", pickle_error=None,
        peak_memory_per_item=1 << 10, thread_scaling=1.9, probe_threads=2, sample_time=0.2, exhausted=False,
    )
    assert wisdom.worth_keeping(left)
    probed = replace(left, n_items=7, exhausted=True)
    assert wisdom.worth_keeping(probed)
    assert not wisdom.worth_keeping(replace(probed, n_probed=0, thread_scaling=None))  # serially
    assert not wisdom.worth_keeping(replace(probed, n_probed=0, thread_scaling=3.4))  # all at once


def test_a_short_job_finished_in_the_probe_is_kept_for_the_next_run(cache):
    # A short job of long items is all sample (two items alone, the rest on the probe's
    # threads); kept, the next run starts its threads from the first item.
    import os
    import zlib

    items = [os.urandom(1 << 20) for _ in range(6)]  # about 30 ms each; zlib releases the GIL
    first = autopar.optimize(_compressed, items)
    kept = len(wisdom.entries())
    assert kept == wisdom.worth_keeping(first.profile)
    if not (first.profile.n_remaining == 0 and first.profile.n_probed):
        return  # others' work on every core: not probed (test_which_finished_samples_are_kept holds the rule)
    assert kept == 1
    hit = autopar.optimize(_compressed, items)
    assert hit.cache == "hit" and hit.executor_type == "thread" and hit.n_jobs > 1
    again, report = autopar.execute(_compressed, items, result=hit, return_report=True)
    assert again == [len(zlib.compress(b, 1)) for b in items]
    assert report.executor_type == "thread" and report.n_from_sample == 0


def test_items_run_at_once_under_one_lock_are_not_kept_as_scaling(cache):
    # Six items of 30 ms that each hold one lock: whatever the sample did, nothing kept may
    # say they take far longer than 30 ms alone or gain on threads.
    import threading

    lock = threading.Lock()

    def locked(x: float) -> float:
        with lock:
            time.sleep(x)
        return x

    autopar.optimize(locked, [0.03] * 6)
    for entry in wisdom.entries():
        kept = entry.profile
        assert kept.item_time_mean < 0.06 and (kept.thread_scaling or 1.0) < 1.5, kept


def _compressed(b: bytes) -> int:
    import zlib

    return len(zlib.compress(b, 1))


@pytest.mark.skipif(autopar.tune.system.usable_cores() < 2, reason="two threads on two cores")
def test_a_thread_run_checks_the_kept_thread_scaling(cache):
    # Pure Python holds the GIL: two threads take twice as long an item. A kept profile that
    # says two threads ran it x2 (a sample misled by a spinning BLAS pool) is found out by
    # the first run on it; one that says x1 is confirmed (its item time not moved: an item's
    # time in a thread says nothing certain about its time alone).
    from dataclasses import replace

    data = list(range(4000))  # about 0.16 s serially: judged on its time (over MIN_CHECKED_RUN)
    first = autopar.optimize(counted, data, executor_type="thread", n_jobs=2)
    [entry] = wisdom.entries()
    t0 = time.thread_time()
    [counted(x) for x in data]
    cpu_time = (time.thread_time() - t0) / len(data)  # an item's CPU: what no load changes
    # Only the wrong kept scaling is run, on a kept item time of half its CPU time: the
    # prediction is a quarter of what two threads holding the GIL take even on an idle
    # machine (a busy one only slows them). That a run within its prediction confirms the
    # entry is the rule's own.
    # Found out: "stale", or "corrected" where the run also read slower than serial (the
    # kept item time, half the CPU time, puts a 4000-item run at 0.08-0.2 s by the machine).
    for scaling, verdict in ((2.0, ("stale", "corrected")),):
        forged = replace(
            entry.profile, thread_scaling=scaling, probe_threads=2, cpu_ratio=1.0, item_time_mean=cpu_time / 2
        )
        wisdom.store(first.cache_key, entry.func, forged)
        r = autopar.optimize(counted, data, executor_type="thread", n_jobs=2)
        assert r.cache == "hit" and r.n_jobs == 2
        out, report = autopar.execute(counted, data, result=r, return_report=True)
        assert out == [counted(x) for x in data]
        assert report.cache in verdict, (scaling, report.measured_item_time, forged.item_time_mean)
    wisdom.store(first.cache_key, entry.func, entry.profile)
    assert wisdom.observe(first.cache_key, None, stale=False) == "checked"
    assert not wisdom.entries()[0].stale


def double(x: int) -> int:
    return counted(x) * 2


def halve(x: int) -> int:
    return counted(x) // 2


def test_a_pipeline_is_decided_from_its_kept_figures_stages_included(cache):
    """A pipeline measured once is planned the next time without running an item, its
    stages' figures from the entry; another pipeline whose stages have the same names but
    other code has a key of its own."""
    from autopar import Pipeline, Stage

    items = list(range(2500))
    first = Pipeline([Stage(counted, name="a"), Stage(double, name="b")]).optimize(items)
    assert first.fused.cache == "miss"
    CALLS[0] = 0
    again = Pipeline([Stage(counted, name="a"), Stage(double, name="b")]).optimize(items)
    assert again.fused.cache == "hit" and CALLS[0] == 0
    assert [s.item_time for s in again.stages] == pytest.approx([s.item_time for s in first.stages])
    assert all(s.item_time > 0 for s in again.stages)
    assert "tuning cache" in again.explain()
    other = Pipeline([Stage(counted, name="a"), Stage(halve, name="b")]).optimize(items)
    assert other.fused.cache == "miss"
    assert Pipeline([Stage(counted, name="a"), Stage(double, name="b")]).execute(items[:5], plan=None) == [
        double(counted(x)) for x in range(5)
    ]


def test_a_pipeline_over_a_generator_is_planned_from_its_kept_figures_and_runs_each_item_once(cache):
    from autopar import Pipeline, Stage

    def pipe():
        return Pipeline([Stage(counted, name="a"), Stage(double, name="b")])

    want = [double(counted(x)) for x in range(2500)]
    assert pipe().optimize(_numbers(2500)).fused.cache == "miss"
    gen = _numbers(2500)
    plan = pipe().optimize(gen)  # (no run between: a run's feedback may mark the entry stale)
    assert plan.fused.cache == "hit"
    assert pipe().execute(gen, plan=plan) == want  # the items taken ahead first, each once, in order


def test_short_threads_leave_no_database_connection_open(cache):
    # One connection for the process: threads that each look a job up once and end leave no
    # descriptor behind, and nothing for the garbage collector to close with a warning.
    import gc
    import threading
    import warnings

    import psutil

    key = "0" * 32
    assert wisdom.lookup(key) is None  # (the database made, its connection open)
    me = psutil.Process()
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.disable()
        try:
            before = me.num_fds()
            for _ in range(200):
                t = threading.Thread(target=wisdom.lookup, args=(key,))
                t.start()
                t.join()
            after = me.num_fds()
        finally:
            gc.enable()
        gc.collect()
    assert after <= before + 2, f"{after - before} more file descriptors after 200 threads"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def _forged(entry, **figures):
    """The kept profile with an item time the job does not have (a quarter or half of its
    real one, so a pool run on it reads slower than serial on any machine, busy or not)."""
    from dataclasses import replace

    return replace(entry.profile, item_time_std=0.0, others_cores=0.0, single_blas_time=None, blas_live=False, **figures)


def _cpu_time() -> float:
    t0 = time.thread_time()
    [counted(x) for x in range(500)]
    return (time.thread_time() - t0) / 500  # an item's CPU: what no load changes


@pytest.mark.skipif(autopar.tune.system.usable_cores() < 2, reason="two threads on two cores")
def test_a_thread_run_slower_than_serial_corrects_the_kept_profile_for_good(cache):
    # The profile a first call's import leaves: items mostly waiting (CPU/wall 0.13) and four
    # threads x3.7 faster than one (they queued on the import lock). Threads are picked for
    # pure Python, run slower than serial, and the run's figures replace the probe's: the
    # next optimize() keeps threads off it, from the cache, and says why.
    cpu = _cpu_time()
    data = list(range(int(0.6 / cpu)))  # about 0.6 s serially, whatever this machine's speed
    first = autopar.optimize(counted, data)
    [entry] = wisdom.entries()
    half = cpu / 2
    forged = _forged(entry, thread_scaling=3.7, probe_threads=4, cpu_ratio=0.13, item_time_mean=half, item_time_max=half)
    wisdom.store(first.cache_key, entry.func, forged)
    r = autopar.optimize(counted, data)
    assert r.cache == "hit" and r.executor_type == "thread" and r.n_jobs > 1, r.explain()
    out, report = autopar.execute(counted, data, result=r, return_report=True)
    assert out == [counted(x) for x in data]
    assert report.cache == "corrected", (report.measured_speedup, report.serial_estimate)
    [entry] = wisdom.entries()
    verdict = entry.verdicts["thread"]
    # (found holding the GIL on the run's own figures: no more than about one core's worth)
    assert verdict["n_jobs"] == r.n_jobs and verdict["speedup"] <= GIL_CORES and verdict["cpu_ratio"] > 0.5
    assert not entry.stale and entry.profile.thread_scaling == 3.7  # kept as measured; corrected when read
    again = autopar.optimize(counted, data)
    assert again.cache == "hit"
    assert again.executor_type != "thread" or again.n_jobs == 1, again.explain()
    assert again.profile.cpu_ratio > 0.5 and again.profile.probe_threads == r.n_jobs
    assert f"on thread x{r.n_jobs} was slower than serial" in again.explain()
    # A profile measured anew for the key (the entry stale, say) is read with the verdict too.
    wisdom.store(first.cache_key, entry.func, forged)
    assert wisdom.entries()[0].verdicts == entry.verdicts
    assert autopar.optimize(counted, data).profile.thread_scaling == verdict["speedup"]


def heavy(x: int) -> int:
    s = 0
    for i in range(20_000):  # about 1 ms: pickling an item and its result is nothing beside it
        s += i
    return s + x


@pytest.mark.skipif(autopar.tune.system.usable_cores() < 2, reason="two processes on two cores")
def test_a_process_run_slower_than_serial_is_not_picked_again(cache):
    t0 = time.thread_time()
    [heavy(x) for x in range(50)]
    cpu = (time.thread_time() - t0) / 50
    # About 3 s serially; the forged figures say 0.75 s, where two processes win against
    # serial even with a pool start of 0.3 s (this machine's measure of it is in the model).
    data = list(range(int(3.0 / cpu)))
    first = autopar.optimize(heavy, data)
    [entry] = wisdom.entries()
    quarter = cpu / 4
    forged = _forged(entry, thread_scaling=1.0, probe_threads=2, cpu_ratio=1.0, item_time_mean=quarter, item_time_max=quarter)
    wisdom.store(first.cache_key, entry.func, forged)
    r = autopar.optimize(heavy, data)
    assert r.cache == "hit" and r.executor_type == "process", r.explain()
    out, report = autopar.execute(heavy, data, result=r, return_report=True)
    assert out == [heavy(x) for x in data]
    assert report.cache == "stale", (report.measured_speedup, report.serial_estimate)
    [entry] = wisdom.entries()
    assert entry.stale and entry.verdicts["process"]["speedup"] < wisdom.LOST
    again = autopar.optimize(heavy, data)  # measured again; processes are out
    assert again.cache == "miss" and again.executor_type != "process", again.explain()
    assert "was slower than serial" in again.explain() and "not a candidate again" in again.explain()
    assert "process" in wisdom.entries()[0].verdicts and not wisdom.entries()[0].stale
    assert autopar.optimize(heavy, data, executor_type="process").executor_type == "process"  # asked for: given


def test_a_slow_loop_over_execute_iter_is_not_the_pools_loss(cache):
    # The caller's own time between results (writing each one out, say) is not the pool's:
    # a process run read through a loop three times slower than the items leaves no verdict.
    cpu = _cpu_time()
    data = list(range(int(0.4 / cpu)))  # about 0.4 s serially
    autopar.optimize(counted, data, executor_type="process", n_jobs=2)
    it = autopar.execute_iter(counted, data, executor_type="process", n_jobs=2)
    for _ in it:
        time.sleep(cpu * 3)  # the consumer's work: three times an item's
    [entry] = wisdom.entries()
    assert not entry.verdicts, (entry.verdicts, it.report.run_time)
    assert it.report.cache != "stale" or entry.verdicts == {}
