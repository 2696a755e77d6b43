"""optimize(): decisions on clear-cut workloads, the kept sample, and the result object."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

import autopar
from autopar import execute, optimize
from autopar.workloads import large_input, pure_python_cpu, sleep_io, tiny

from helpers import square

pytestmark = pytest.mark.timeout(120)


def test_sleep_bound_work_goes_to_threads():
    r = optimize(sleep_io, [0.01] * 200)
    assert r.executor_type == "thread"
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


def test_prefer_threads_for_io_false():
    r = optimize(sleep_io, [0.01] * 200, prefer_threads_for_io=False)
    assert r.executor_type != "thread"
    assert any("prefer_threads_for_io=False" in reason for reason in r.reasons)
    assert "prefer_threads_for_io=False" in r.explain()


def test_unpicklable_function_rules_out_processes():
    lock = threading.Lock()

    def holds_lock(x):
        with lock:
            return x + 1

    r = optimize(holds_lock, range(50), executor_type=None)
    assert r.profile.transport is None
    assert any("processes ruled out" in w for w in r.warnings)
    assert execute(holds_lock, range(50), result=r) == list(range(1, 51))


def test_processes_asked_for_what_cannot_travel_is_a_clear_error():
    # Asking for processes means the function never runs in the caller, the sample included:
    # what cannot be sent to a worker, or back, is an error that says so, not a serial run.
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be sent to a process worker"):
        optimize(lambda x: (x, lock), range(30), executor_type="process")
    with pytest.raises(TypeError, match=r"results of items 0-0 cannot be sent back"):
        optimize(_returns_a_lock, range(30), executor_type="process")


def _returns_a_lock(x):
    return x, threading.Lock()


def test_lambda_items_use_cloudpickle_transport():
    funcs = [lambda k=k: k for k in range(40)]
    r = optimize(lambda f: f(), funcs)
    assert r.profile.transport == "cloudpickle"
    out = execute(lambda f: f(), funcs, result=r, executor_type="process", n_jobs=2, chunksize=5)
    assert out == list(range(40))


def test_result_is_frozen_and_serializable():
    r = optimize(square, range(1000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.n_jobs = 3  # type: ignore[misc]
    d = r.to_dict()
    json.dumps(d)
    assert d["executor_type"] == r.executor_type
    assert set(d["profile"]) >= {"item_time_mean", "cpu_ratio", "peak_memory_per_item", "thread_scaling"}
    text = r.explain()
    assert "autopar chose" in text and "item time" in text


def test_explain_lists_runner_ups():
    r = optimize(sleep_io, [0.005] * 100)
    assert r.runner_ups
    assert "runner-ups" in r.explain()
    for c in r.runner_ups:
        assert c.label() in r.explain()


class Counter:
    def __init__(self, func):
        self.func = func
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.calls.append(x)
        return self.func(x)


def test_generator_sample_is_neither_lost_nor_recomputed():
    f = Counter(lambda x: sleep_io(0.002) and x * 2)
    gen = (i for i in range(300))
    r = optimize(f, gen)
    sampled = len(f.calls)
    assert 0 < sampled < 300
    out = execute(f, gen, result=r, executor_type="thread")
    assert out == [i * 2 for i in range(300)]
    assert sorted(f.calls) == list(range(300))  # each item exactly once


def test_generator_found_without_passing_the_result():
    f = Counter(lambda x: x + 1)
    gen = (i for i in range(5000))
    optimize(f, gen)
    assert execute(f, gen) == [i + 1 for i in range(5000)]
    assert sorted(f.calls) == list(range(5000))


def test_generator_rerun_with_another_function():
    gen = (i for i in range(400))
    r = optimize(lambda x: x * 2, gen)
    out = execute(lambda x: x * 3, gen, result=r)
    assert out == [i * 3 for i in range(400)]


def test_list_sample_reused():
    f = Counter(lambda x: x - 1)
    data = list(range(3000))
    r = optimize(f, data)
    n = len(f.calls)
    out, report = execute(f, data, result=r, return_report=True)
    assert out == [x - 1 for x in data]
    assert len(f.calls) == 3000  # the sampled items were not run again
    assert report.n_from_sample == n


def test_executor_type_fixed_model_chooses_the_rest():
    r = optimize(sleep_io, [0.002] * 300, executor_type="process")
    assert r.executor_type == "process"
    assert r.n_jobs >= 1 and r.chunksize >= 1
    assert any("executor_type='process' was given" in reason for reason in r.reasons)


def test_unknown_length_warns():
    r = optimize(sleep_io, (0.002 for _ in range(500)))  # the sample cannot run them all
    assert not r.profile.exhausted
    assert any("number of items is unknown" in w for w in r.warnings)


def test_input_of_unknown_length_is_sampled_as_a_second_of_work():
    """The sample takes its share of the work assumed (a second), not its whole budget
    (0.2 s: 100 items of 2 ms, where about 12 are asked for); the model assumes at least a
    second of work is left."""
    from autopar.tune.sample import SAMPLE_SHARE, UNKNOWN_SECONDS

    from helpers import spin_wall

    r = optimize(spin_wall, (0.002 for _ in range(400)), executor_type="process")  # no probe
    assert r.profile.n_sampled <= 2 + 2 * SAMPLE_SHARE * UNKNOWN_SECONDS / 0.002
    assert r.n_remaining * r.profile.item_time_mean >= 0.99 * UNKNOWN_SECONDS


def test_n_items_hint():
    r = optimize(sleep_io, (0.002 for _ in range(500)), n_items=500)
    assert r.profile.n_items == 500
    assert not any("unknown" in w for w in r.warnings)


def test_sample_exception_names_the_item():
    from helpers import fail_on

    with pytest.raises(ValueError) as info:
        optimize(fail_on, range(20))
    assert info.value.autopar_item_index == 7


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="BLAS has one thread on one core")
@pytest.mark.parametrize("loaded", [True, False])
def test_items_timed_with_blas_capped_where_a_threaded_blas_is_loaded(monkeypatch, loaded):
    # Whether a BLAS pool's second thread shows in an item's CPU time varies from run to run;
    # with a multi-threaded BLAS loaded, two computing items of a millisecond or more are
    # timed with BLAS at one thread whatever their CPU/wall read.
    from autopar.tune import sample as S

    from helpers import blas_threads_after_busy

    monkeypatch.setattr(S, "NATIVE_THREADS", 1e9)  # the CPU/wall reading never decides here
    monkeypatch.setattr(S, "threaded_blas_loaded", lambda: loaded)
    from autopar.tune.costs import pool_costs
    from autopar.tune.system import default_start_method

    pool_costs(default_start_method())  # measured now if not yet: a fork stops BLAS threads
    a = np.ones((300, 300))
    a @ a  # the BLAS pool starts its threads: a pool that never ran is not capped
    assert S.native_threads() > 0
    items = list(range(200))
    r = optimize(blas_threads_after_busy, items, executor_type="serial")
    seen = execute(blas_threads_after_busy, items, result=r)[: r.profile.n_sampled]
    assert seen.count(1) == (2 if loaded else 0)
    # A BLAS pool whose threads never started was not used: capping it would start them.
    monkeypatch.setattr(S, "native_threads", lambda: 0)
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
    from autopar.tune import sample as S

    from helpers import spin_wall

    sp = S._Sampler(spin_wall, [0.003] * 200, None, 0.2, 0.01, 2, False, False)
    sp.first_item()
    sp.serial_batches()
    seen = dataclasses.replace(sp.item_stats(), cpu_ratio=1.7)  # as if the natives counted
    single, stats = S._blas_step(sp, seen)
    assert single is None
    assert stats.cpu_ratio == seen.own_ratio < S.NATIVE_THREADS


def _affinity_and_thread(_: object) -> tuple[frozenset, int]:
    import os

    return frozenset(os.sched_getaffinity(0)), threading.get_ident()


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_probe_threads_run_on_cpus_of_their_own():
    import os

    from autopar.tune import sample as S

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    results, *_ = S._probe(_affinity_and_thread, list(range(8)), 2, 0, False)
    by_thread: dict[int, set] = {}
    for aff, tid in results:
        by_thread.setdefault(tid, set()).add(aff)
    sets = [next(iter(a)) for a in by_thread.values()]
    assert len(sets) == 2 and all(len(a) == 1 for a in by_thread.values())
    assert not (sets[0] & sets[1])  # disjoint
    assert sets[0] | sets[1] == cpus  # between them, every CPU the process may use
    assert os.sched_getaffinity(0) == cpus  # the caller is left as it was


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


def test_waiting_items_run_wide_at_once_settle_the_probe_in_one_round():
    from helpers import nap

    r = optimize(nap, [0.01] * 300)  # on 65 threads: about x47, short of 0.85 k
    p = r.profile
    assert r.executor_type == "thread"
    # The items run beside the first (one round on many threads) read far beyond the CPUs,
    # which settles the probe without a second round of sleeps on as many threads, where
    # that round reads over WAIT_CLEAR k. How fast 65 threads start is the machine's: under
    # load (a CI run) the first round read short of it once and a second one ran. What holds
    # on any machine: a wide probe, reading far past the cores, in at most two rounds.
    assert p.probe_threads > 2 and 1 <= p.probe_rounds <= 2
    assert p.thread_scaling is not None and p.thread_scaling > 2 * r.usable_cores


def test_a_first_round_of_short_waits_is_two_ms_a_thread(monkeypatch):
    # Waiting work on more threads than CPUs is clear after 2 ms a thread (it needs a third
    # of k): 16 threads ran 5 sleeps of 1 ms each, 80 of 187 items, where the run had 64.
    from autopar.tune import sample as S

    from helpers import nap

    rounds = []
    real = S._probe

    def probe(func, items, k, first_index, collect):
        rounds.append((len(items), k))
        return real(func, items, k, first_index, collect)

    monkeypatch.setattr(S, "_probe", probe)
    r = optimize(nap, [0.001] * 300)
    if r.profile.probe_threads > S._cpus():
        for n_items, k in rounds:
            assert n_items <= 2 * k  # sleeps of at least 1 ms: 2 a thread
    assert execute(nap, [0.001] * 300, result=r) == [0.001] * 300


@pytest.mark.skipif(autopar.usable_cores() < 2, reason="BLAS has one thread on one core")
def test_probe_caps_a_running_blas_pool_as_a_thread_pool_would(monkeypatch):
    # Two SVDs at two BLAS threads each read x0.53 on 2 threads, and uncapped thread pools
    # ran slower than serial: the probe and thread pools cap a running BLAS pool at
    # cores // k a thread even where items time alike capped (no single_blas_time).
    from autopar.backends.blas import blas_share
    from autopar.tune import sample as S
    from autopar.tune.costs import pool_costs
    from autopar.tune.system import default_start_method

    from helpers import blas_threads_after_busy

    monkeypatch.setattr(S, "_blas_step", lambda sp, stats: (None, stats))
    monkeypatch.setattr(S, "threaded_blas_loaded", lambda: True)
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

    from autopar.tune import sample as S

    calls = []

    def probe(func, items, k, first_index, collect):
        t0 = _time.perf_counter()
        results = [func(x) for x in items]
        whole = (_time.perf_counter() - t0) * slow_factor
        calls.append(len(items))
        return results, whole, readings[len(calls) - 1] * whole, whole

    monkeypatch.setattr(S, "_probe", probe)
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
