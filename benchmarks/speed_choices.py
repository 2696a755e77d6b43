"""Choices that depend on the machine's speed: the checks of tests/ that hold on a quiet
machine but not beside other processes using the cores, kept here, where the suite does not
run them (its tests assert what holds on any machine: the model on synthetic profiles in
tests/test_model.py, the rules on figures of their own, every item once and in order on the
real pools). Run on a quiet machine, before and after a change to the sample, the probe or
the model:

    python -m pytest -q -p no:cacheprovider benchmarks/speed_choices.py

Each check is a test function; a failure on a quiet machine is a regression, one on a busy
machine says little. The sampler's parts are patched where they are looked up: the probe's
threads in ``autopar.tune.sample.probe._probe``, the BLAS step's
``autopar.tune.sample.blas.threaded_blas_loaded`` / ``.native_threads`` (``_blas_step``
itself as the sampler imported it, ``autopar.tune.sample.sampler._blas_step``), the tuned
figures in ``autopar.tune.constants`` (``NATIVE_THREADS``, ``MIN_SAVING``: read at call time).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import sys
import tempfile
import threading

# The tests' helpers (importable by spawn workers as ``helpers``), and a tuning cache of the
# run's own, off: each optimize() here samples.
_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
sys.path.insert(0, _TESTS)
os.environ["AUTOPAR_CACHE"] = "off"
_CACHE = tempfile.mkdtemp(prefix="autopar-speed-choices-")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["AUTOPAR_CACHE_DIR"] = _CACHE

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import autopar  # noqa: E402
from autopar import execute, optimize, usable_cores  # noqa: E402
from autopar.tune import constants  # noqa: E402
from autopar.tune.sample import blas, probe, sampler  # noqa: E402
from autopar.workloads import large_input, pure_python_cpu, sleep_io, tiny  # noqa: E402

from helpers import spin_wall  # noqa: E402


def test_sleep_bound_work_goes_to_threads():
    # (from tests/test_optimize.py; the model's side on a synthetic profile:
    # tests/test_model.py::test_sleep_bound_work_goes_to_many_threads)
    r = optimize(sleep_io, [0.01] * 200)
    assert r.executor_type == "thread", r.explain()
    assert r.workload_type == "io"
    assert r.n_jobs > autopar.usable_cores()  # waiting work may use more threads than cores
    assert r.estimated_speedup > 2


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="needs 2 usable cores")
def test_pure_python_cpu_work_goes_to_processes():
    r = optimize(pure_python_cpu, [300_000] * 60)
    assert r.executor_type == "process", r.explain()
    assert r.workload_type == "cpu"
    assert r.thread_scaling is not None and r.thread_scaling < 1.4
    assert 2 <= r.n_jobs <= autopar.usable_cores()


def test_tiny_tasks_run_serially():
    r = optimize(tiny, list(range(200_000)))
    assert r.executor_type == "serial", r.explain()


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="needs 2 usable cores")
def test_gil_free_numpy_on_big_arrays_goes_to_threads():
    distinct = [np.random.default_rng(i).random(1 << 20) for i in range(8)]  # 8 MB each
    arrays = [distinct[i % 8] for i in range(160)]
    r = optimize(large_input, arrays)
    assert r.executor_type == "thread", r.explain()
    assert r.thread_scaling is not None and r.thread_scaling > 1.3
    assert r.profile.item_bytes > 8e6


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="BLAS has one thread on one core")
@pytest.mark.parametrize("loaded", [True, False])
def test_items_timed_with_blas_capped_where_a_threaded_blas_is_loaded(monkeypatch, loaded):
    # Whether a BLAS pool's second thread shows in an item's CPU time varies from run to run;
    # with a multi-threaded BLAS loaded, two computing items of a millisecond or more are
    # timed with BLAS at one thread whatever their CPU/wall read.
    from helpers import blas_threads_after_busy

    monkeypatch.setattr(constants, "NATIVE_THREADS", 1e9)  # the CPU/wall reading never decides here
    monkeypatch.setattr(blas, "threaded_blas_loaded", lambda: loaded)
    from autopar.tune.costs import pool_costs
    from autopar.tune.system import default_start_method

    pool_costs(default_start_method())  # measured now if not yet: a fork stops BLAS threads
    a = np.ones((300, 300))
    a @ a  # the BLAS pool starts its threads: a pool that never ran is not capped
    assert blas.native_threads() > 0
    items = list(range(200))
    r = optimize(blas_threads_after_busy, items, executor_type="serial")
    seen = execute(blas_threads_after_busy, items, result=r)[: r.profile.n_sampled]
    assert seen.count(1) == (2 if loaded else 0)
    # A BLAS pool whose threads never started was not used: capping it would start them.
    monkeypatch.setattr(blas, "native_threads", lambda: 0)
    r = optimize(blas_threads_after_busy, items, executor_type="serial")
    assert 1 not in execute(blas_threads_after_busy, items, result=r)[: r.profile.n_sampled]
    # Work that waits is not timed so: its times are too uneven to tell (file writes and
    # reads read 10% faster capped, and went to processes).
    from helpers import blas_threads_after_nap

    items = list(range(100))
    r = optimize(blas_threads_after_nap, items, executor_type="serial")
    assert r.cpu_ratio < 0.9
    assert 1 not in execute(blas_threads_after_nap, items, result=r)[: r.profile.n_sampled]


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="BLAS has one thread on one core")
def test_native_threads_that_capping_does_not_change_are_not_the_items(monkeypatch):
    # A BLAS pool spinning on after someone else's call computes beside the first items:
    # pure Python read CPU/wall 1.7. Capping BLAS leaves such items as they are, so the
    # native threads were not theirs and the CPU ratio is the calling thread's own.
    from helpers import spin_wall

    sp = sampler._Sampler(spin_wall, [0.003] * 200, None, 0.2, 0.01, 2, False, False)
    sp.first_item()
    sp.serial_batches()
    seen = dataclasses.replace(sp.item_stats(), cpu_ratio=1.7)  # as if the natives counted
    single, stats = blas._blas_step(sp, seen)
    assert single is None
    assert stats.cpu_ratio == seen.own_ratio < constants.NATIVE_THREADS


def test_items_growing_along_the_input_are_extrapolated():
    from helpers import spin_wall

    items = [i * 1e-4 for i in range(60)]  # 0 to 5.9 ms, sorted by size
    r = optimize(spin_wall, items, executor_type="serial")
    p = r.profile
    left = sum(items[p.n_done:])
    assert p.n_remaining and left > 0
    # Judged on its first (smallest) items alone, the rest looked like a fifth of its work.
    assert p.item_time_mean * p.n_remaining >= 0.5 * left


def test_items_alike_are_not_taken_for_growing():
    from helpers import spin_wall

    r = optimize(spin_wall, [5e-4] * 60, executor_type="serial")
    assert r.profile.item_time_mean < 1.5 * 5e-4 + 2e-4


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="BLAS has one thread on one core")
def test_probe_caps_a_running_blas_pool_as_a_thread_pool_would(monkeypatch):
    # Two SVDs at two BLAS threads each read x0.53 on 2 threads, and uncapped thread pools
    # ran slower than serial: the probe and thread pools cap a running BLAS pool at
    # cores // k a thread even where items time alike capped (no single_blas_time).
    from autopar.backends.blas import blas_share
    from autopar.tune.costs import pool_costs
    from autopar.tune.system import default_start_method

    from helpers import blas_threads_after_busy

    # (the sampler calls _blas_step by the name it imported from .blas)
    monkeypatch.setattr(sampler, "_blas_step", lambda sp, stats: (None, stats))
    monkeypatch.setattr(blas, "threaded_blas_loaded", lambda: True)
    pool_costs(default_start_method())  # measured now if not yet: a fork stops BLAS threads
    a = np.ones((300, 300))
    a @ a  # the BLAS pool starts its threads
    items = list(range(300))
    r = optimize(blas_threads_after_busy, items)
    p = r.profile
    assert p.blas_live and p.single_blas_time is None and p.n_probed > 0
    seen = execute(blas_threads_after_busy, items, result=r, executor_type="serial")
    assert set(seen[p.n_sampled : p.n_done]) == {blas_share(p.probe_threads)}
    # A thread pool caps it the same way.
    out = execute(blas_threads_after_busy, items, result=r, executor_type="thread", n_jobs=2)
    assert set(out[p.n_done :]) == {blas_share(2)}


def _scripted_probe(monkeypatch, readings, slow_factor=0.8):
    """The probe's rounds run their items for real (serially); their timings are scripted:
    round i reads ``readings[i]`` cores busy, over ``slow_factor`` times the serial time.
    (0.8 by default: at 1.0 a machine slower during the round than during the serial
    batches made the round's throughput under 0.85 of one thread's, which settles a low
    reading at once, and tests that expect a second round failed once in a full run.)"""
    import time as _time

    calls = []

    def scripted(func, items, k, first_index, collect):
        t0 = _time.perf_counter()
        results = [func(x) for x in items]
        whole = (_time.perf_counter() - t0) * slow_factor
        calls.append(len(items))
        return results, whole, readings[len(calls) - 1] * whole, whole, 0.0  # (no wait for a core)

    monkeypatch.setattr(probe, "_probe", scripted)
    return calls


def test_a_low_reading_where_threads_did_less_than_one_settles_at_once(monkeypatch):
    from helpers import spin_wall

    calls = _scripted_probe(monkeypatch, [1.0, 1.0], slow_factor=2.0)  # x0.5 throughput
    p = optimize(spin_wall, [0.002] * 200).profile
    assert len(calls) == 1 and p.probe_rounds == 1 and p.thread_scaling <= 1.15


def test_a_low_reading_at_one_threads_worth_is_confirmed_where_a_misread_costs(monkeypatch):
    # A stalled core reads GIL-free work as one thread's worth; processes would run it in
    # parallel too, so a second round is paid only where pickling makes them dear.
    from helpers import spin_big_result  # 2 MB results: pickled, far over 5% of 2 ms

    calls = _scripted_probe(monkeypatch, [1.0, 1.0])
    p = optimize(spin_big_result, [0.002] * 200).profile
    assert len(calls) == 2 and p.probe_rounds == 2


@pytest.mark.parametrize("reading", [1.0, 1.3])
def test_a_reading_for_processes_settles_at_once_where_a_misread_costs_little(monkeypatch, reading):
    # Low, or unclear but under the model's 0.75 k: processes either way, and right even
    # for GIL-free work (they run it in parallel too) where pickling costs little.
    from helpers import spin_wall

    calls = _scripted_probe(monkeypatch, [reading, 2.0])
    r = optimize(spin_wall, [0.002] * 200)
    assert len(calls) == 1 and r.profile.probe_rounds == 1
    assert r.executor_type in ("process", "serial")


def test_a_reading_under_one_threads_worth_is_confirmed_even_where_a_misread_costs_little(monkeypatch):
    # x0.8 reads as a shared resource outside Python, ruling processes out as well: one
    # round (a thread that drew the long item, a core the host stalled) must not decide it.
    from helpers import spin_wall

    calls = _scripted_probe(monkeypatch, [0.8, 1.0])
    optimize(spin_wall, [0.002] * 200)
    assert len(calls) == 2


def test_a_reading_for_threads_is_confirmed_even_where_a_misread_costs_little(monkeypatch):
    # 1.6 of 2 would send pure Python to threads if it were an inflated reading.
    from helpers import spin_wall

    calls = _scripted_probe(monkeypatch, [1.6, 1.0])
    optimize(spin_wall, [0.002] * 200)
    assert len(calls) == 2


def test_a_low_reading_and_an_unclear_one_keep_the_low_one(monkeypatch):
    from helpers import spin_big_result  # pickling is dear: the low reading is confirmed

    _scripted_probe(monkeypatch, [1.0, 1.5])
    r = optimize(spin_big_result, [0.002] * 200)
    assert r.profile.probe_rounds == 2 and r.profile.thread_scaling <= 1.15
    assert r.executor_type != "thread"


def test_the_sample_runs_a_small_rest_itself(monkeypatch):
    # Once the items timed are a fair share of the rest (a quarter of it here), a rest under
    # MIN_SAVING runs in the sample: no loop or pool starts for it. MIN_SAVING is raised so
    # that the bounds on timing decide: 16 items of 0.5 ms are timed by about 8 ms, under
    # the 15 ms budget, and 32 take 16 ms at least, over it.
    monkeypatch.setattr(constants, "MIN_SAVING", 10.0)
    items = [0.0005] * 76
    assert optimize(spin_wall, items, sample_time=0.015).profile.n_done == 76
    # Serial no candidate: the sample stops at its budget and leaves the rest to the pool.
    assert optimize(spin_wall, items, sample_time=0.015, executor_type="thread").profile.n_done < 76
    assert execute(spin_wall, items, sample_time=0.015) == items


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores")
def test_background_cpu_is_not_the_probes():
    # Pure Python on 2 threads keeps one core busy; a thread already running C code beside
    # the probe (as a BLAS pool spins on after a call) must not read as the probe's scaling.
    from autopar.workloads import pure_python_cpu

    stop = threading.Event()

    def burn() -> None:
        import hashlib

        block = b"x" * (1 << 20)
        while not stop.is_set():
            hashlib.sha256(block).digest()  # C code, GIL released

    burner = threading.Thread(target=burn, name="bg-burner")
    burner.start()
    try:
        r = optimize(pure_python_cpu, [100_000] * 100, executor_type="thread")
    finally:
        stop.set()
        burner.join()
    assert r.thread_scaling is not None and r.thread_scaling < 1.4, r.explain()


def _pretend_chosen(r, kind: str, n: int, alt_kind: str, alt_n: int, n_items: int, rate: float = 2000.0):
    """``r`` as if optimize() had chosen ``kind`` x``n`` for computing items (the sample's
    CPU ratio 1), predicted ``rate`` items/s, with ``alt_kind`` x``alt_n`` the runner-up
    predicted as fast."""
    from autopar.tune.model import Candidate

    alt = Candidate(alt_kind, alt_n, 4, predicted_time=0.05 + n_items / rate, start=0.05)
    return dataclasses.replace(
        r, executor_type=kind, n_jobs=n, chunksize=8, n_remaining=n_items,
        predicted_time=0.01 + n_items / rate, start_cost=0.01, runner_ups=(alt,),
        profile=dataclasses.replace(r.profile, cpu_ratio=1.0),
    )


def test_a_pool_on_its_prediction_does_not_switch():
    from helpers import slower_off_main

    # Threads deliver up to 1000 items/s, predicted 800: no switch, whatever the runner-up.
    data = list(range(300))
    r = optimize(slower_off_main, data[:20], executor_type="serial")
    r = _pretend_chosen(r, "thread", 8, "process", 4, len(data), rate=800.0)
    r = dataclasses.replace(r, runner_ups=(dataclasses.replace(r.runner_ups[0], predicted_time=0.05 + len(data) / 5000),))
    out, report = execute(slower_off_main, data, result=r, return_report=True)
    assert [x for x, _ in out] == data
    assert not report.fell_back, report.summary()


def test_chosen_pool_ramps_its_chunks_up():
    from helpers import nap

    data = [0.002] * 200
    r = optimize(nap, data[:20], executor_type="serial")
    r = dataclasses.replace(r, executor_type="thread", n_jobs=2, chunksize=40)
    out, report = execute(nap, data, result=r, return_report=True)
    assert out == data
    # Chunks start at about 10 ms of work and double as they come back: more chunks than
    # 200 / 40, the chunksize reached in the end.
    assert report.n_chunks > len(data) // 40, report.summary()
    assert report.final_chunksize == 40
    # A chunksize the caller fixed is used from the first chunk.
    out, report = execute(nap, data, executor_type="thread", n_jobs=2, chunksize=40, return_report=True)
    assert report.n_chunks == len(data) // 40
