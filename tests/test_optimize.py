"""optimize(): decisions on clear-cut workloads, the kept sample, and the result object."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from autopar import execute, optimize
from autopar.workloads import sleep_io

from helpers import square

pytestmark = pytest.mark.timeout(120)


def test_sleep_bound_work_is_read_as_waiting():
    # What no load changes: a sleep uses no CPU. The choice that follows (threads, more of
    # them than cores, predicted over x2) depends on the machine's speed: the model's side on
    # a synthetic profile in tests/test_model.py, on real timings in
    # benchmarks/speed_choices.py.
    r = optimize(sleep_io, [0.01] * 200)
    assert r.workload_type == "io", r.explain()


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
    from autopar._words import pool_words

    for c in r.runner_ups:  # in explain()'s words; pools of one worker are left out (not parallel)
        if c.n_jobs > 1 or c.executor_type == "serial":
            assert pool_words(c.executor_type, c.n_jobs, None if c.executor_type == "serial" else c.chunksize) in r.explain()


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
    from autopar.tune.constants import SAMPLE_SHARE, UNKNOWN_SECONDS

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

    # The sample runs the first item on any machine (how many more it runs depends on the
    # machine's speed): one failing there is named as item 0. One failing later is named
    # wherever it runs, in the sample or in the pool.
    with pytest.raises(ValueError) as info:
        optimize(fail_on, [7, *range(20)])
    assert info.value.autopar_item_index == 0
    with pytest.raises(ValueError) as info:
        execute(fail_on, range(20))
    assert info.value.autopar_item_index == 7


class _ItemClock:
    """A clock that moves only by the seconds its items say they took (and spin for real)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def item(self, seconds: float) -> float:
        from helpers import spin_wall

        self.now += seconds
        return spin_wall(seconds)


@pytest.mark.parametrize("capped_share,verdict", [(1.0, "own"), (0.5, "blas"), (1.5, "as seen")])
def test_native_threads_that_capping_does_not_change_are_not_the_items(monkeypatch, capped_share, verdict):
    # A BLAS pool spinning on after someone else's call computes beside the first items:
    # pure Python read CPU/wall 1.7. Capping BLAS leaves such items as they are, so the
    # native threads were not theirs and the CPU ratio is the calling thread's own; items
    # capping made faster are BLAS work (their capped time is kept); items capping made
    # slower keep the stats as seen. The first items run and are timed for real (the
    # calling thread's own CPU/wall, under NATIVE_THREADS on any machine); the two timed
    # with BLAS capped are timed by a clock of their own, so that the rule decides and not
    # the machine's load (the same on real clocks: benchmarks/speed_choices.py).
    import types
    import time as real_time

    from autopar.tune import constants
    from autopar.tune.sample import blas
    from autopar.tune.sample.sampler import _Sampler

    clock = _ItemClock()
    sp = _Sampler(clock.item, [0.003] * 200, None, 0.2, 0.01, 2, False, False)
    sp.others = types.SimpleNamespace(wanted=lambda: 0.0)  # a quiet machine (beside load: the test below)
    sp.first_item()
    sp.serial_batches()
    real = sp.item_stats()
    assert real.own_ratio < constants.NATIVE_THREADS
    # as if the natives counted; the capped items take capped_share of the mean
    seen = dataclasses.replace(real, cpu_ratio=1.7, mean=0.003 / capped_share)
    fake_time = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("_")})
    fake_time.perf_counter = clock.perf_counter
    monkeypatch.setattr(blas, "time", fake_time)
    done = sp.kept.done
    single, stats = blas._blas_step(sp, seen)
    assert sp.kept.done == done + 2  # two more items, timed with BLAS capped
    if verdict == "own":
        assert single is None
        assert stats.cpu_ratio == seen.own_ratio < constants.NATIVE_THREADS
    elif verdict == "blas":
        assert single == pytest.approx(0.003) and stats == seen
    else:
        assert single is None and stats == seen


def _blas_step_on(monkeypatch, n: int, cpu_ratio: float, mean: float, crowded: bool, pool_ran: bool = True):
    """Run the BLAS step on a sample of ``n`` items of 3 ms (timed by a clock of their own)
    whose stats read ``cpu_ratio`` and ``mean``, beside others' work on every core or none,
    a multi-threaded BLAS loaded and running (its threads running beside the items, or
    not: ``pool_ran``). Returns (items the step ran, the capped time)."""
    import types
    import time as real_time

    from autopar.tune.sample import blas
    from autopar.tune.sample.sampler import _Sampler

    clock = _ItemClock()
    sp = _Sampler(clock.item, [0.003] * n, None, 0.2, 0.01, 2, False, False)
    sp.others = types.SimpleNamespace(wanted=lambda: 4.0 if crowded else 0.0)
    sp.first_item()
    sp.serial_batches()
    seen = dataclasses.replace(sp.item_stats(), cpu_ratio=cpu_ratio, mean=mean, std=0.0)
    fake_time = types.SimpleNamespace(**{k: getattr(real_time, k) for k in dir(real_time) if not k.startswith("_")})
    fake_time.perf_counter = clock.perf_counter
    monkeypatch.setattr(blas, "time", fake_time)
    monkeypatch.setattr(blas, "native_threads", lambda: 2)
    monkeypatch.setattr(blas, "threaded_blas_loaded", lambda: True)
    monkeypatch.setattr(blas, "_pool_idle", lambda _: not pool_ran)
    done = sp.kept.done
    single, _ = blas._blas_step(sp, seen)
    return sp.kept.done - done, single


def test_a_short_job_with_blas_threads_seen_computing_is_timed_capped(monkeypatch):
    # Small SVDs beside three spinning processes on 2 cores: OpenBLAS's two threads waited on
    # each other behind the spinners (11 items: 0.24-0.95 s; with BLAS at one thread 0.08-0.12 s),
    # and with 9 items left the sample never timed them capped (40 were needed): serial with the
    # pool as it was. Where native threads were seen computing beside the items (CPU/wall 1.7),
    # or others' work wanted every core, two capped items are worth their time from
    # BLAS_STEP_MIN_NATIVE items left; on suspicion alone a short job still skips the step.
    from autopar.tune import constants

    assert constants.BLAS_STEP_MIN_NATIVE <= 12 - 2 < constants.BLAS_STEP_MIN_ITEMS
    assert _blas_step_on(monkeypatch, 12, 1.7, 0.006, crowded=False) == (2, pytest.approx(0.003))
    assert _blas_step_on(monkeypatch, 12, 1.0, 0.006, crowded=False) == (0, None)
    assert _blas_step_on(monkeypatch, 12, 1.0, 0.006, crowded=True) == (2, pytest.approx(0.003))


def test_capped_items_not_slower_are_kept_only_beside_others_work(monkeypatch):
    # Beside others' work a BLAS pool's items take their sampled time or far longer: capped
    # items a little under the mean (3.0 against 3.1 ms, not "faster" by the rule) are kept
    # there, not on a quiet machine (a job long enough for the step to run on suspicion);
    # capped items slower than the mean are kept nowhere.
    assert _blas_step_on(monkeypatch, 60, 1.0, 0.0031, crowded=True) == (2, pytest.approx(0.003))
    assert _blas_step_on(monkeypatch, 60, 1.0, 0.0031, crowded=False) == (2, None)
    assert _blas_step_on(monkeypatch, 60, 1.0, 0.0028, crowded=True) == (2, None)


def test_a_blas_pool_that_did_not_run_beside_the_items_is_not_suspected(monkeypatch):
    # With NumPy loaded every computing job was timed with BLAS capped on suspicion (two
    # serial items: 23 ms of a 76 ms sample of pure Python); a pool whose threads ran not at
    # all while the items did was not used by them (SciPy's filter, no BLAS, read 10% faster
    # capped by chance and was taken for BLAS work). Beside others' work on every core the
    # pool's threads may wait instead of running: timed capped as before.
    assert _blas_step_on(monkeypatch, 60, 1.0, 0.0031, crowded=False, pool_ran=False) == (0, None)
    assert _blas_step_on(monkeypatch, 60, 1.0, 0.0031, crowded=True, pool_ran=False) == (2, pytest.approx(0.003))
    assert _blas_step_on(monkeypatch, 60, 1.7, 0.006, crowded=False, pool_ran=False) == (2, pytest.approx(0.003))


def _svd(n: int) -> float:
    a = np.random.default_rng(n).random((n, n))
    return float(np.linalg.svd(a, compute_uv=False)[0])


def test_a_blas_pool_reads_idle_beside_pure_python_and_running_beside_blas_work():
    # The reading itself, on this process's own BLAS pool (NumPy's): idle beside pure Python
    # once the spinning after earlier calls has ended; running beside SVDs.
    from autopar.tune import measure
    from autopar.tune.sample import blas
    from autopar.tune.sample.sampler import _Sampler
    from autopar.tune.system import threaded_blas_loaded

    _svd(300)  # (the pool's threads started)
    if measure.native_cpu() is None or not threaded_blas_loaded() or not measure.native_threads():
        pytest.skip("no schedstat, or no multi-threaded BLAS pool")
    before = measure.native_cpu()
    for _ in range(100):  # a BLAS pool spins for about 0.1 s after its last call
        time.sleep(0.05)
        if measure.native_cpu_since(before) < 1e-4:
            break
        before = measure.native_cpu()
    sp = _Sampler(lambda x: sum(range(x)), [20_000] * 50, None, 0.2, 0.01, 2, False, False)
    sp.first_item()
    sp.serial_batches()
    assert blas._pool_idle(sp)
    sp = _Sampler(_svd, [300] * 50, None, 0.2, 0.01, 2, False, False)
    sp.first_item()
    sp.serial_batches()
    assert not blas._pool_idle(sp)


def _affinity_and_thread(_: object) -> tuple[frozenset, int]:
    import os

    return frozenset(os.sched_getaffinity(0)), threading.get_ident()


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux only")
def test_probe_threads_run_on_cpus_of_their_own():
    import os

    from autopar.tune.sample import probe as P

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    results, *_ = P._probe(_affinity_and_thread, list(range(8)), 2, 0, False)
    by_thread: dict[int, set] = {}
    for aff, tid in results:
        by_thread.setdefault(tid, set()).add(aff)
    sets = [next(iter(a)) for a in by_thread.values()]
    assert len(sets) == 2 and all(len(a) == 1 for a in by_thread.values())
    assert not (sets[0] & sets[1])  # disjoint
    assert sets[0] | sets[1] == cpus  # between them, every CPU the process may use
    assert os.sched_getaffinity(0) == cpus  # the caller is left as it was


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
    from autopar.tune.sample import probe as P

    from helpers import nap

    rounds = []
    real = P._probe

    def probe(func, items, k, first_index, collect):
        rounds.append((len(items), k))
        return real(func, items, k, first_index, collect)

    monkeypatch.setattr(P, "_probe", probe)
    r = optimize(nap, [0.001] * 300)
    if r.profile.probe_threads > P._cpus():
        for n_items, k in rounds:
            assert n_items <= 2 * k  # sleeps of at least 1 ms: 2 a thread
    assert execute(nap, [0.001] * 300, result=r) == [0.001] * 300


def test_mixed_waits_and_pure_python_are_probed_where_a_gil_shows():
    # Items that wait 4 ms, then hold the GIL for about 3 ms: on 2 threads the waits alone
    # read x1.8 whether the GIL is held or not, and 16 threads' mean end read x4.1 where a
    # pool of them ran x2.2 (thread x8-x32 picked: 1.35-1.48 over the best, process x4, in
    # benchmarks/bench_grid.py's "mixed sleep+compute"). The probe runs enough threads that
    # their CPU would keep two cores busy, reads that they kept about one, and reads back the
    # share of each item that holds the GIL. Which pool wins then is the machine's speed:
    # the benchmark's row says.
    import os

    from autopar.tune import constants

    from helpers import busy, wait_then_busy

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus < 2:
        pytest.skip("needs two CPUs: on one, a GIL cannot show in the cores kept busy")
    t0 = time.thread_time()
    busy(100_000)
    steps = max(1000, round(0.003 / max(time.thread_time() - t0, 1e-6) * 100_000))  # about 3 ms
    items = [steps] * 140
    r = optimize(wait_then_busy, items)
    p = r.profile
    assert p.probe_rounds >= 1 and p.thread_scaling is not None, r.explain()
    # Enough threads for a GIL to show (two cores' worth of CPU), or computing work's reading.
    assert p.probe_threads * min(p.cpu_ratio, 1.0) >= 1.7 or p.probe_threads >= 16, r.explain()
    # Not read as GIL-free (the model's rule: 0.75 k or more).
    assert p.thread_scaling < constants.PARALLEL_SCALING * p.probe_threads, r.explain()
    if r.executor_type == "thread":
        assert "releases the GIL" not in r.explain()
    assert execute(wait_then_busy, items, result=r) == [busy(steps)] * 140


def test_a_round_reads_the_gil_only_where_its_threads_could_have_kept_two_cores_busy(monkeypatch):
    from autopar.tune.sample import probe as P
    from autopar.tune.sample.serial import _Stats

    mixed = _Stats(mean=0.007, std=0.0, tmax=0.007, cpu_ratio=0.42, reference=0.007, own_ratio=0.42)
    # 6 threads of 42% CPU would keep 2.5 cores busy: one kept busy is the GIL, 1.7 is not.
    assert P._gil_queued(mixed, 6, cpu=0.0242, active=0.0237, cpus=2)
    assert not P._gil_queued(mixed, 6, cpu=0.0186, active=0.0109, cpus=2)
    # 2 threads would keep under one core busy: nothing to read, GIL or not.
    assert not P._gil_queued(mixed, 2, cpu=0.006, active=0.006, cpus=2)
    # One usable CPU (or a quota of one): every round keeps at most one busy.
    assert not P._gil_queued(mixed, 6, cpu=0.0242, active=0.0237, cpus=1)
    # The probe runs enough threads for a GIL to show, at most IO_PROBE_THREADS, and no more
    # than a quarter of the items left; pure computing stays on 2 threads.
    monkeypatch.setattr(P, "_cpus", lambda: 2)

    class _Sp:
        probe_threads, n_total, budget, min_budget, cores = 2, 140, 0.05, 0.01, 2

    k, _ = P._probe_plan(_Sp(), mixed, 130, 0.006)
    assert k * mixed.cpu_ratio >= 2 * 1.15 and k <= 16
    for ratio, want in ((0.53, 4), (0.63, 3), (0.9, 2), (1.0, 2)):
        k, _ = P._probe_plan(_Sp(), dataclasses.replace(mixed, cpu_ratio=ratio), 130, 0.006)
        assert k == want, (ratio, k)
    k, _ = P._probe_plan(_Sp(), mixed, 12, 0.006)
    assert k == 3  # 12 // 4
    _Sp.cores = 1  # a quota of one core: no GIL to show
    k, _ = P._probe_plan(_Sp(), mixed, 130, 0.006)
    assert k == 2
    # Computing work on more threads than CPUs settles at 0.85 of what GIL-free threads read
    # at most (the CPUs over each item's CPU share), not at WAIT_CLEAR k.
    half = dataclasses.replace(mixed, cpu_ratio=0.53)
    assert P._clear_gain(4, half) == pytest.approx(0.85 * 2 / 0.53)
    assert P._clear_gain(16, mixed) == pytest.approx(0.3 * 16)
    assert P._clear_gain(2, half) == pytest.approx(1.7)


def _cpu_ms(x: int) -> int:
    end = time.thread_time() + 0.001
    while time.thread_time() < end:
        x += 1
    return x


def test_the_serial_sample_takes_a_share_of_the_jobs_time_on_the_cores():
    # Every core but the sample's waits while it runs: on a machine of more cores its share
    # of the serial work shrinks as the job's time on the cores does (2.5% of it on 2 cores,
    # an eighth of that on 16). The items still run once, all kept.
    from autopar.tune.sample import sample

    items = list(range(2000))  # about 2 s of serial work in items of 1 ms
    on_two, _ = sample(_cpu_ms, items, probe=False, cores=2)
    on_sixteen, stash = sample(_cpu_ms, items, probe=False, cores=16)
    assert on_two.n_sampled >= 3 * on_sixteen.n_sampled, (on_two.n_sampled, on_sixteen.n_sampled)
    assert on_sixteen.n_sampled >= 2  # the first item, and one timed after it
    assert stash.n_done == on_sixteen.n_sampled


def test_one_long_item_among_short_ones_is_not_items_growing_along_the_input():
    # Measured in a fresh process (items of Pareto sizes, in no order): serial batches of
    # 1, 2, 4 and 8 items at 0.5, 0.25, 0.4 and 2.7 ms an item, the last holding one item of
    # 20 ms. A linear fit through them read "growing" and put the items ahead at 75 ms
    # (they take 0.7 ms); items that do grow along the input show it without any one batch.
    from autopar.tune.sample.serial import _growing_mean

    positions = [1.0, 2.5, 5.5, 11.5]
    skewed = [(1, 0.5e-3), (2, 0.5e-3), (4, 1.6e-3), (8, 21.4e-3)]
    mean = sum(t for _, t in skewed) / 15
    assert _growing_mean(skewed, positions, 15, 527, mean) == mean
    growing = [(b, b * (0.07e-3 + 0.12e-3 * pos)) for b, pos in zip((1, 2, 4, 8), positions)]  # 0.07 -> 7 ms over 55
    mean = sum(t for _, t in growing) / 15
    assert _growing_mean(growing, positions, 15, 55, mean) > 3 * mean


def test_items_of_a_heavy_tail_are_not_read_as_blas_work():
    # Pure Python of Pareto sizes beside a loaded multi-threaded BLAS: two items timed with
    # BLAS capped came out under the mean by chance (the items differ 60x) and the sample
    # took them for BLAS work, then read the thread probe by throughput: threads picked for
    # pure Python. Faster capped now has to beat the items' own spread.
    import numpy as np

    from autopar.tune.sample import sample
    from autopar.workloads import make_skewed_items, skewed

    np.linalg.svd(np.ones((64, 64)))  # the BLAS pool's threads started, as after any call
    for _ in range(3):
        profile, _ = sample(skewed, make_skewed_items(527, base=4_000), probe=False)
        assert profile.single_blas_time is None


def test_a_blas_pool_left_spinning_is_not_the_functions_work():
    # A BLAS library's threads spin for about 0.1 s after its last call (NumPy's import
    # included): in a script that imports NumPy and calls execute() at once they ran beside
    # the sample, pure Python read CPU/wall 2.0 as if its own native threads computed, and
    # the probe's reading, over that ratio, put it at half a thread: serial picked.
    import numpy as np

    from autopar.tune import constants
    from autopar.tune.sample import sample
    from autopar.tune.system import threaded_blas_loaded
    from autopar.workloads import pure_python_cpu

    a = np.ones((200, 200))
    a @ a  # the pool's threads started
    if not threaded_blas_loaded():
        pytest.skip("no multi-threaded BLAS loaded")
    for _ in range(3):
        a @ a  # ... and spinning now
        profile, _ = sample(pure_python_cpu, [4000] * 300, probe=False, cores=2)
        assert profile.cpu_ratio < constants.NATIVE_THREADS, profile.cpu_ratio



def _ahead_readings(monkeypatch, others: "list | None" = None) -> list:
    """What each sample's first item and the item run beside it read (the ahead round, or
    None); ``others``: the cores other processes used meanwhile, for each."""
    from autopar.tune.sample import warmup as W

    readings: list = []
    real = W._ran_together

    def ran_together(sp, spec):
        real(sp, spec)
        readings.append(sp.first.ahead_round)
        if others is not None:
            others.append(sp.others.cores())

    monkeypatch.setattr(W, "_ran_together", ran_together)
    return readings


def test_a_gil_holding_first_item_and_the_one_beside_it_leave_the_probe_to_ask(monkeypatch):
    # Two threads holding the GIL never keep two cores busy at once: the item run beside the
    # first reads no round, and the probe asks as before (whatever the machine's load).
    from helpers import spin_wall

    readings = _ahead_readings(monkeypatch)
    for _ in range(3):
        r = optimize(spin_wall, [0.05] * 12)
        assert r.profile.n_sampled >= 2
    # (A helper thread waiting for the GIL may start its item only after the first ended.)
    assert readings and readings == [None] * len(readings)


def test_gil_free_items_that_ran_at_once_beside_the_first_settle_the_probe(monkeypatch):
    # Hashing releases the GIL: the first item and the one run beside it kept two cores
    # busy, a probe round already (x2 on 2 threads), so the probe runs no item of its own.
    # Beside other processes' work the two threads share the cores and read low (the probe
    # asks, as before): on a quiet machine at least one of three tries reads it.
    import os

    from helpers import hash_blocks

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    t0 = time.thread_time()
    hash_blocks(8)
    per_block = max((time.thread_time() - t0) / 8, 1e-4)
    items = [max(1, round(0.05 / per_block))] * 8  # items of about 50 ms
    want = [hash_blocks(n) for n in items]
    others: list = []
    readings = _ahead_readings(monkeypatch, others)
    for _ in range(3):
        before = len(readings)
        r = optimize(hash_blocks, items)
        # (No reading where no item ran beside the first, or the first looked like waiting.)
        if len(readings) > before and readings[-1] is not None:
            p = r.profile
            # (On more than 2 cores the items beside the first widen: a reading on more threads.)
            assert p.probe_rounds == 1 and p.n_probed == 0 and p.probe_threads >= 2
            assert p.thread_scaling is not None and p.thread_scaling >= 0.85 * p.probe_threads
            assert r.executor_type != "process"
            assert execute(hash_blocks, items, result=r) == want
            break
    else:
        from autopar.tune import constants

        if others and max(others) >= constants.OTHERS_MIN_CORES:
            pytest.skip(f"other processes' work beside a try (cores: {others}): the probe asks there")
        pytest.fail(f"no reading in three tries: {readings}, others' cores {others}")


@pytest.mark.parametrize("gil_free", [True, False])
def test_on_more_cores_gil_free_items_widen_beside_the_first_and_each_runs_once(monkeypatch, gil_free):
    # Threads first: on a machine of 4 CPUs (the count patched here), GIL-free items run
    # beside the first on one more thread, then, once both kept a core busy, on as many
    # more again; items holding the GIL stop at the one beside the first. Every item the
    # sample ran is kept, in order, and run once (execute() adopts them).
    import os

    from autopar.tune.sample import sample
    from autopar.tune.sample import warmup as W

    from helpers import hash_blocks, spin_wall

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setattr(W, "_cpus", lambda: 4)
    ran: list = []
    started = threading.Lock()

    if gil_free:
        t0 = time.thread_time()
        hash_blocks(8)
        n = max(1, round(0.06 / max((time.thread_time() - t0) / 8, 1e-4)))

        def func(i):
            with started:
                ran.append(i)
            return hash_blocks(n) + str(i)
    else:

        def func(i):
            with started:
                ran.append(i)
            spin_wall(0.06)
            return str(i)

    beside, others = [], []
    real = W._speculated

    def speculated(sp, spec):
        beside.append(spec.n_ran())
        others.append(sp.others.cores())
        return real(sp, spec)

    monkeypatch.setattr(W, "_speculated", speculated)
    items = list(range(12))
    for _ in range(3):
        ran.clear()
        profile, stash = sample(func, items, cores=4)
        done = profile.n_sampled + profile.n_probed
        assert sorted(ran) == list(range(done))  # the first items, each once
        assert [r[-len(str(i)):] for i, r in enumerate(stash.result_blocks[0])] == [str(i) for i in range(done)]
        if not gil_free:
            assert beside[-1] <= 1  # never widened
        elif beside[-1] == 3:
            break
    else:
        if gil_free:
            from autopar.tune import constants

            if max(others) < constants.OTHERS_MIN_CORES:
                pytest.fail(f"not widened in three tries on a quiet machine: {beside}")


def test_ctrl_c_while_items_widen_beside_the_first_leaves_no_thread_running_them(monkeypatch):
    # Interrupted while the items run beside the first (widened: 4 CPUs patched in): the
    # sample raises once every item already started has ended, and no thread starts another.
    import os

    from autopar.tune.sample import sample
    from autopar.tune.sample import warmup as W

    from helpers import CtrlCFrom, hash_blocks

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    monkeypatch.setattr(W, "_cpus", lambda: 4)
    # 10 ms into the first item beside the first: the next step may widen meanwhile.
    func = CtrlCFrom(lambda i: hash_blocks(30), "autopar-sample-ahead", delay=0.01)
    interrupted = func.run(lambda: sample(func, list(range(40)), cores=4))
    func.assert_none_after(40)
    assert interrupted
