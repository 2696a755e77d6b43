"""Correctness that must hold on any machine: every item exactly once and in order, nothing
kept alive, nothing run on a thread it must not run on, pools that finish their work."""

from __future__ import annotations

import dataclasses
import gc
import signal
import os
import threading
import time
import weakref

import pytest

from autopar import execute, get_executor, optimize

from autopar import ItemFailed, execute_iter
from autopar.backends.worker import Span, run_items, take

from helpers import fail_every, sleep_tagged, spin_tagged, stop_at


def _source(kind: str, items: list):
    if kind == "list":
        return items
    if kind == "generator":
        return (x for x in items)
    return iter(items)  # a one-shot iterator that is not a generator


# Short jobs are where the sample, the item run ahead and the probe overlap the whole job.
SHAPES = [(n, t) for n in (1, 2, 3, 4, 5, 7, 12, 40) for t in (0.0001, 0.0015, 0.02) if n * t <= 0.3]


@pytest.mark.parametrize("source", ["list", "generator", "iterator"])
@pytest.mark.parametrize("n,seconds", SHAPES)
def test_every_item_once_in_order_auto(n, seconds, source):
    items = [(i, seconds) for i in range(n)]
    out = execute(sleep_tagged, _source(source, items))
    assert out == list(range(n))


@pytest.mark.parametrize("source", ["list", "generator", "iterator"])
@pytest.mark.parametrize("n", [1, 3, 10, 1000])
def test_every_item_once_in_order_each_pool(pool, n, source):
    items = [(i, 0.0001 if n < 1000 else 0.0) for i in range(n)]
    for chunksize in (1, 7):
        out = execute(sleep_tagged, _source(source, items), pool=pool, chunksize=chunksize)
        assert out == list(range(n))


@pytest.mark.parametrize("kind", [list, tuple, iter])
def test_tiny_items_collected_failures_keep_their_places(kind):
    # Tiny items: the sample's batches read the input in place and write into one results
    # list, which execute() hands back; failures fall in the sample and in the run after it.
    n = 60_000
    out, report = execute(fail_every, kind(range(n)), errors="collect", return_report=True)
    bad = [i for i in range(n) if i % 9973 == 5]
    assert len(out) == n and report.failures == bad
    assert all(isinstance(out[i], ItemFailed) and out[i].index == i for i in bad)
    assert [x for i, x in enumerate(out) if i % 9973 != 5] == [i + 1 for i in range(n) if i % 9973 != 5]
    assert report.n_from_sample > bad[0]  # a failure in the sample's batches too


@pytest.mark.parametrize("seq", [list(range(10)), tuple(range(10))])
def test_span_reads_like_a_slice(seq):
    for start, n in [(0, 10), (3, 4), (9, 1), (10, 0)]:
        span = Span(seq, start, n)
        assert list(span) == list(seq[start : start + n]) and len(span) == n
        assert [span[j] for j in range(-n, n)] == list(seq[start : start + n]) * 2
        with pytest.raises(IndexError):
            span[n]


@pytest.mark.parametrize("kind", [list, tuple, range])
def test_take_reads_a_list_in_place_and_anything_else_by_copy(kind):
    it = iter(kind(range(10)) if kind is not range else range(10))
    next(it)
    parts = [take(it, 4), take(it, 4), take(it, 4)]
    assert [list(p) for p in parts] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert {type(p) for p in parts} == ({list} if kind is range else {Span})
    assert len(take(it, 4)) == 0 and list(it) == []


def test_take_from_a_generator_is_a_list():
    gen = (x for x in range(5))
    assert take(gen, 3) == [0, 1, 2] and list(gen) == [3, 4]


@pytest.mark.parametrize("bad", [0, 4, 9])
def test_a_failing_item_is_named_wherever_the_chunk_reads_from(bad):
    # A chunk that stops at its first failure runs a list, tuple or span as a comprehension
    # and finds the failing item from where the sequence's iterator stopped.
    seq = list(range(20))
    for items, start in [(seq[5:15], 5), (tuple(seq[5:15]), 5), (Span(seq, 5, 10), 5), (Span(seq, 10, 10), 10)]:
        for remote in (False, True):
            out, failures = run_items(lambda x: 1 // (x - start - bad), 100, items, collect=False, remote=remote)
            assert [f[0] for f in failures] == [100 + bad]
            assert isinstance(failures[0][1], ZeroDivisionError) and bool(failures[0][2]) == remote


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_an_item_raising_stopiteration_is_a_failure_not_the_end(pool, errors):
    # map() reads a StopIteration from the function as the end of the items: the rest of the
    # chunk was dropped without a word.
    items = list(range(8))
    if errors == "collect":
        out = execute(stop_at, items, pool=pool, chunksize=3, errors="collect")
        assert len(out) == 8 and isinstance(out[3], ItemFailed) and out[3].index == 3
        assert [x for i, x in enumerate(out) if i != 3] == [i + 1 for i in items if i != 3]
        return
    with pytest.raises(StopIteration) as info:
        execute(stop_at, items, pool=pool, chunksize=3)
    assert info.value.autopar_item_index == 3
    with pytest.raises(RuntimeError) as info:  # an iterator cannot let a StopIteration out
        list(execute_iter(stop_at, items, pool=pool, chunksize=3))
    assert info.value.__cause__.autopar_item_index == 3


@pytest.mark.parametrize("finish", [True, False])
def test_the_sample_runs_a_small_rest_itself(monkeypatch, finish):
    # Once the items timed are a fair share of the rest (a quarter of it), a rest under
    # MIN_SAVING runs in the sample as one batch: no loop or pool starts for it. Without
    # `finish` (serial no candidate) the batches go on doubling. The sample's time limits are
    # far beyond the job here (10 s for 76 items of 0.5 ms) and MIN_SAVING is raised, so that
    # the rule decides on any machine; whether a 15 ms sample gets that far is in
    # benchmarks/speed_choices.py.
    from autopar.tune import constants
    from autopar.tune.sample.sampler import _Sampler

    monkeypatch.setattr(constants, "MIN_SAVING", 10.0)
    n = 76
    items = [(i, 0.0005) for i in range(n)]
    sp = _Sampler(spin_tagged, items, None, 10.0, 10.0, 2, False, False, finish)
    assert sp.first_item()
    sp.serial_batches()
    assert sp.kept.done == n and sp.kept.results == list(range(n))  # every item once, in order
    sizes = [b for b, _ in sp.timings.batches]
    timed, done = 0, 1
    for i, size in enumerate(sizes):
        left = n - done
        if left <= constants.FINISH_SEEN * timed:  # the rest is at most 4 times the items timed
            if finish:
                assert size == left and i == len(sizes) - 1, sizes  # the whole rest, at once
            else:
                assert size < left, sizes
            break
        timed, done = timed + size, done + size
    else:
        raise AssertionError(f"the items timed never reached a quarter of the rest: {sizes}")


def test_a_sample_that_ran_the_rest_leaves_every_item_once_in_order(monkeypatch):
    # Whatever the sample ran itself (all of it on a quiet machine, part on a busy one),
    # execute() returns every item once, in order, and so does a run of optimize()'s result.
    from autopar.tune import constants

    monkeypatch.setattr(constants, "MIN_SAVING", 10.0)
    items = [(i, 0.0005) for i in range(76)]
    assert execute(spin_tagged, items, sample_time=0.015) == list(range(76))
    r = optimize(spin_tagged, items, sample_time=0.015)
    assert 0 < r.profile.n_done <= 76
    assert execute(spin_tagged, items, result=r) == list(range(76))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["list", "generator"])
def test_every_item_once_in_order_wide(source):
    # Item times 0.1-20 ms mixed in one job, sizes up to 1,000 items.
    import random

    rng = random.Random(7)
    for n in (6, 33, 150, 1000):
        items = [(i, rng.choice((0.0001, 0.0005, 0.002, 0.02)) if n <= 150 else 0.0001) for i in range(n)]
        r = optimize(sleep_tagged, _source(source, items) if source == "list" else items)
        assert execute(sleep_tagged, items, result=r) == list(range(n))


def test_generators_are_not_kept_alive():
    refs = []
    for _ in range(30):
        gen = (x for x in range(20))
        refs.append(weakref.ref(gen))
        assert execute(abs, gen) == list(range(20))
        del gen
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of 30 generators still alive"


def test_optimized_generator_released_after_execute():
    gen = (x for x in range(50))
    ref = weakref.ref(gen)
    r = optimize(abs, gen)
    assert execute(abs, gen) == list(range(50))
    del gen
    gc.collect()
    assert ref() is None
    assert r.profile.n_done > 0  # the result is still a usable record


def _needs_main_thread(x):
    # signal.signal() raises ValueError off the main thread (the caller's thread in the
    # sample, the main thread of each process worker).
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    time.sleep(0.002)
    return x * 2


def test_process_only_never_runs_the_function_on_helper_threads():
    r = optimize(_needs_main_thread, list(range(40)), executor_type="process", n_jobs=2)
    assert r.profile.n_probed == 0 and r.profile.thread_scaling is None
    out = execute(_needs_main_thread, list(range(40)), executor_type="process", n_jobs=2)
    assert out == [x * 2 for x in range(40)]


def test_serial_only_never_runs_the_function_on_helper_threads():
    assert execute(_needs_main_thread, list(range(5)), executor_type="serial") == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("kind", ["thread", "process", "serial"])
def test_get_executor_normal_exit_waits_for_queued_work(kind):
    with get_executor(kind, 1) as pool:
        futures = [pool.submit(time.sleep, 0.01) for _ in range(10)]
    assert all(f.done() and not f.cancelled() for f in futures)
    assert [f.result() for f in futures] == [None] * 10


def test_get_executor_exception_cancels_queued_work():
    futures = []
    with pytest.raises(RuntimeError):
        with get_executor("thread", 1) as pool:
            futures.extend(pool.submit(time.sleep, 0.05) for _ in range(10))
            raise RuntimeError("stop")
    assert any(f.cancelled() for f in futures)


class _FirstItemBurner:
    """Burns CPU on another thread until the first item has finished, as a library's threads
    do for a while after import: background CPU that is not the function's."""

    def __init__(self) -> None:
        self.first_done = threading.Event()
        self.thread = threading.Thread(target=self._burn, name="bg-burner")

    def _burn(self) -> None:
        import hashlib

        block = b"x" * (1 << 20)
        while not self.first_done.is_set():
            hashlib.sha256(block).digest()  # C code, GIL released

    def __call__(self, seconds: float) -> float:
        time.sleep(seconds)
        self.first_done.set()
        return seconds


def test_background_cpu_is_not_the_functions():
    burner = _FirstItemBurner()
    burner.thread.start()
    try:
        # Over 1,000 items: no item runs ahead, the first item alone gives the CPU ratio.
        r = optimize(burner, [0.02] * 2000)
    finally:
        burner.first_done.set()
        burner.thread.join()
    assert r.workload_type == "io", r.explain()
    assert r.cpu_ratio < 0.3
    assert r.executor_type == "thread"


def test_new_threads_cpu_counts_from_the_mark():
    # The probe's threads count from the start signal on (their start-up spin does not),
    # threads that ran before the meter started never count.
    from autopar.tune.measure import NewThreadsCpu

    def burn(seconds: float) -> None:
        t0 = time.thread_time()
        while time.thread_time() - t0 < seconds:
            pass

    ready, go = threading.Event(), threading.Event()

    def work() -> None:
        burn(0.05)
        ready.set()
        go.wait()
        burn(0.01)

    meter = NewThreadsCpu().start()
    worker = threading.Thread(target=work)
    worker.start()
    assert ready.wait(30)  # the worker's first 50 ms are done, before the mark
    meter.mark()
    go.set()
    burn(0.03)  # the caller's CPU is not the new threads'
    worker.join()
    assert 0.008 <= meter.stop() < 0.03


def test_threads_the_function_starts_count_as_its_cpu():
    from helpers import spin_on_helper_thread

    r = optimize(spin_on_helper_thread, [0.01] * 30, executor_type="serial")
    # 10 ms of CPU per item on the thread it starts (the wall time grows on a loaded machine,
    # the CPU time does not).
    assert r.cpu_ratio * r.item_time_mean > 0.008, r.profile


def test_chunksize_corrected_when_items_are_not_what_the_sample_said():
    from helpers import square

    data = list(range(4000))
    r = optimize(square, list(range(50)), executor_type="process", n_jobs=2)
    # Claim items take 10 ms (they take microseconds): the run must notice and grow chunks.
    r = dataclasses.replace(r, chunksize=1, profile=dataclasses.replace(r.profile, item_time_mean=0.01))
    out, report = execute(square, data, result=r, return_report=True)
    assert out == [x * x for x in data]
    assert report.chunksize_changes, report.summary()
    assert report.final_chunksize > 1


def test_free_threaded_build_makes_threads_cpu_parallel(monkeypatch):
    from autopar.tune import model
    from autopar.tune.costs import pool_costs
    from autopar.tune.system import system_info

    sysinfo = dataclasses.replace(system_info(blas=False), usable_cores=4)
    from autopar.workloads import pure_python_cpu

    r = optimize(pure_python_cpu, [20_000] * 30, executor_type="serial")
    # cpu_ratio fixed: the model is under test here, not the meter (on a busy machine the
    # measured ratio can exceed 1, which caps threads at cores / ratio).
    profile = dataclasses.replace(
        r.profile, n_items=2000, thread_scaling=None, probe_threads=0, exhausted=False, cpu_ratio=1.0
    )
    costs = pool_costs()
    with_gil = model.decide(profile, dataclasses.replace(sysinfo, gil_enabled=True), costs, executor_types=("thread",))
    free = model.decide(profile, dataclasses.replace(sysinfo, gil_enabled=False), costs, executor_types=("thread",))
    assert free.best.predicted_time < with_gil.best.predicted_time / 2
    assert free.best.n_jobs >= 2


class _SlowOffMain:
    """Fast in the calling thread, 2 ms on any other: a thread pool that loses to serial by
    far more than the fallback's margin on any machine. Counts calls per item."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: int) -> int:
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.002)
        self.calls.append(x)
        return x * x


def test_threads_fall_back_to_serial_when_losing():
    func = _SlowOffMain()
    data = list(range(5000))
    r = optimize(func, list(range(40)), executor_type="serial")
    r = dataclasses.replace(r, executor_type="thread", n_jobs=2, chunksize=1)
    func.calls.clear()
    out, report = execute(func, data, result=r, return_report=True)
    assert out == [x * x for x in data]
    assert report.fell_back, report.summary()
    at, to, why = report.fallback
    assert to == "serial" and 0 < at < len(data) and "items/s" in why
    assert f"from item {at} on, ran serial" in report.summary()
    assert sorted(func.calls) == data  # every item exactly once


def test_processes_fall_back_to_serial_when_losing():
    from helpers import pid

    # A 4 MB buffer per item: nothing to do, milliseconds of pickling to a process. (Distinct
    # items: one object as every item would be pickled once a chunk, and chunks would grow.)
    buf = b"x" * (4 << 20)
    data = [(i, buf) for i in range(400)]
    r = optimize(pid, data[:40], executor_type="serial")
    r = dataclasses.replace(r, executor_type="process", n_jobs=2, chunksize=1)
    out, report = execute(pid, data, result=r, return_report=True)
    assert len(out) == len(data)
    assert report.fell_back, report.summary()
    at = report.fallback[0]
    assert 0 < at < len(data)
    me = os.getpid()
    assert all(p != me for p in out[: min(at, 3)])  # the pool ran the first chunks
    assert all(p == me for p in out[at:])  # from the fallback on, the caller ran them


def test_a_finished_pool_run_frees_its_pipes_without_the_garbage_collector():
    import psutil

    from helpers import square

    me = psutil.Process()
    execute(square, range(40), executor_type="process", n_jobs=2, chunksize=5)  # warm: helpers started
    gc.collect()
    gc.disable()
    try:
        before = me.num_fds()
        for _ in range(3):
            assert execute(square, range(40), executor_type="process", n_jobs=2, chunksize=5) == [x * x for x in range(40)]
        assert me.num_fds() <= before  # no cycle holds a finished pool and its pipes
    finally:
        gc.enable()


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


def test_threads_short_of_their_prediction_switch_to_processes():
    from helpers import slower_off_main

    # Threads deliver at most 8 / 8 ms = 1000 items/s where 2000 were predicted, and serial
    # 250: the runner-up, processes, takes the rest (it was predicted 2000 items/s).
    data = list(range(600))
    r = _pretend_chosen(optimize(slower_off_main, data[:20], executor_type="serial"), "thread", 8, "process", 4, len(data))
    out, report = execute(slower_off_main, data, result=r, return_report=True)
    assert [x for x, _ in out] == data  # every item once, in order
    assert report.fell_back, report.summary()
    at, to, why = report.fallback
    assert to.startswith("process x4") and "items/s" in why and 0 < at < len(data)
    assert f"from item {at} on, ran on a process pool, 4 workers" in report.summary()
    me = os.getpid()
    assert all(p == me for _, p in out[:at])  # the threads ran the first chunks
    assert all(p != me for _, p in out[at:])  # the processes the rest


def test_an_item_processes_cannot_take_after_a_switch_runs_inline():
    from helpers import Unpicklable, slower_off_main

    data: list = list(range(600))
    data[500] = Unpicklable(500)  # threads would have run it
    r = _pretend_chosen(optimize(slower_off_main, data[:20], executor_type="serial"), "thread", 8, "process", 4, len(data))
    out, report = execute(slower_off_main, data, result=r, return_report=True)
    assert [x for x, _ in out] == list(range(600))
    at, to, why = report.fallback
    assert to == "serial" and "item 500 cannot go to a process" in why, report.summary()
    me = os.getpid()
    assert all(p == me for _, p in out[at:])
    assert any(p != me for _, p in out[:at])  # processes ran some before it


def test_processes_short_of_their_prediction_do_not_switch_to_threads():
    from helpers import slower_in_children

    # Processes deliver at most 4 / 8 ms = 500 items/s where 2000 were predicted, threads
    # were predicted 2000: still no switch. Processes fall short where items grew, and
    # threads predicted on the sample's items would then run pure Python at x1.
    me = os.getpid()
    data = [(i, me) for i in range(300)]
    r = optimize(slower_in_children, data[:20], executor_type="serial")
    r = _pretend_chosen(r, "process", 4, "thread", 8, len(data))
    out, report = execute(slower_in_children, data, result=r, return_report=True)
    assert [x for x, _ in out] == list(range(len(data)))
    assert report.fallback is None or report.fallback[1] == "serial", report.summary()
    # Before any fallback, items ran in the worker processes, except a chunk the run timed in
    # the caller to check serial's rate (marked "inline" in the timeline; how often it does
    # depends on the machine's load), never on threads.
    inline = {i for first, n, _, _, status in report.timeline if status == "inline" for i in range(first, first + n)}
    end = report.fallback[0] if report.fallback else len(out)
    assert all(p != me for i, (_, p) in enumerate(out[:end]) if i not in inline)


def test_a_pool_on_its_prediction_does_not_switch():
    from helpers import slower_off_main

    # Threads deliver up to 1000 items/s, predicted 800: no switch, whatever the runner-up.
    data = list(range(300))
    r = optimize(slower_off_main, data[:20], executor_type="serial")
    r = _pretend_chosen(r, "thread", 8, "process", 4, len(data), rate=800.0)
    r = dataclasses.replace(r, runner_ups=(dataclasses.replace(r.runner_ups[0], predicted_time=0.05 + len(data) / 5000),))
    out, report = execute(slower_off_main, data, result=r, return_report=True)
    assert [x for x, _ in out] == data  # every item once, in order, switched or not
    # Whether the threads deliver the 800 items/s predicted depends on the machine's load:
    # that no switch follows where they do is in benchmarks/speed_choices.py.


def test_chosen_pool_ramps_its_chunks_up():
    from helpers import nap

    data = [0.002] * 200
    r = optimize(nap, data[:20], executor_type="serial")
    r = dataclasses.replace(r, executor_type="thread", n_jobs=2, chunksize=40)
    out, report = execute(nap, data, result=r, return_report=True)
    assert out == data
    # Chunks start at about 10 ms of work and double as they come back: more chunks than
    # 200 / 40, the chunksize reached in the end.
    # (The chunk tuner may then shrink them where items ran slower than sampled, as naps do
    # on a busy machine; that they reach 40 on a quiet one is in benchmarks/speed_choices.py.)
    assert report.n_chunks > len(data) // 40, report.summary()
    assert report.final_chunksize == (report.chunksize_changes[-1][2] if report.chunksize_changes else 40)
    # A chunksize the caller fixed is used from the first chunk.
    out, report = execute(nap, data, executor_type="thread", n_jobs=2, chunksize=40, return_report=True)
    assert report.n_chunks == len(data) // 40


def test_a_process_run_on_checked_cache_figures_starts_at_the_chunksize():
    # A process pool decided from kept figures that a run has checked: whole chunks from the
    # start. Figures no run checked yet, and threads, ramp from about 10 ms of work.
    from helpers import nap

    data = [0.002] * 120
    r = optimize(nap, data[:20], executor_type="serial")
    firsts = {}
    for kind, runs in (("process", 1), ("process", 0), ("thread", 1)):
        given = dataclasses.replace(r, executor_type=kind, n_jobs=2, chunksize=30, cache="hit", cache_runs=runs)
        out, report = execute(nap, data, result=given, return_report=True)
        assert out == data
        firsts[kind, runs] = next(n for first, n, *_ in report.timeline if first == 0)
    assert firsts["process", 1] == 30
    assert firsts["process", 0] < 30 and firsts["thread", 1] < 30, firsts


def test_whole_chunks_still_shrink_towards_a_known_end():
    from autopar.run.chunks import Feeder

    # No ramp, a floor of 8: the chunksize from the start, then at most a 2n-th of what is
    # left, never under the floor.
    feeder = Feeder(iter(range(300)), 0, 64, 5, ramp=0, end=300, workers=2, floor=8)
    sizes = []
    while (nxt := feeder.next_chunk()) is not None:
        sizes.append(len(nxt[1]))
    assert sizes[0] == 64 and sum(sizes) == 300
    assert sizes == sorted(sizes, reverse=True) and min(sizes[:-1]) >= 8 and sizes[-1] <= 8, sizes
    # Without a floor, no end: chunks are the chunksize.
    plain = Feeder(iter(range(300)), 0, 64, 5, ramp=0, end=300, workers=2, floor=0)
    assert [len(plain.next_chunk()[1]) for _ in range(4)] == [64] * 4


def test_ramped_chunks_shrink_towards_a_known_end():
    from autopar.run.chunks import Feeder

    # Doubling alone gave 8, 16, 32, 64, 64, ...: a last chunk of 64 while the other worker
    # idles. Towards the end, a chunk holds at most a 2n-th of what is left (not below the
    # ramp's first size).
    feeder = Feeder(iter(range(300)), 0, 64, 5, ramp=8, end=300, workers=2)
    sizes, seen = [], []
    while (nxt := feeder.next_chunk()) is not None:
        start, items = nxt
        assert start == len(seen)
        left = 300 - start
        assert len(items) <= max(8, -(-left // 4))
        sizes.append(len(items))
        seen += items
        feeder.grow()
    assert seen == list(range(300))
    assert sizes[:3] == [8, 16, 32] and max(sizes) <= 64 and sizes[-1] <= 8
    # Without a known end (or a ramp), chunks are the chunksize.
    plain = Feeder(iter(range(300)), 0, 64, 5)
    assert len(plain.next_chunk()[1]) == 64


def test_ramp_starts_above_what_a_chunk_costs():
    # One object passed as every item travels once a chunk: a process pool's first chunks
    # hold ten times that cost in work, not 10 ms; threads copy nothing and start at 10 ms.
    from autopar.run.chunks import RAMP_CHUNK_COST, RAMP_SECONDS, ramp_start

    r = optimize(len, [[1, 2]] * 30, executor_type="serial")
    p = dataclasses.replace(r.profile, item_time_mean=0.001, items_shared=True, item_pickle_time=0.01, item_load_time=0.01)
    assert ramp_start(p, "process") == round(RAMP_CHUNK_COST * 0.02 / 0.001)
    assert ramp_start(p, "thread") == round(RAMP_SECONDS / 0.001)
    assert ramp_start(dataclasses.replace(p, items_shared=False), "process") == round(RAMP_SECONDS / 0.001)


def test_no_fall_back_when_the_caller_chose_the_pool():
    from helpers import square

    data = list(range(3000))
    out, report = execute(square, data, executor_type="thread", n_jobs=2, chunksize=1, return_report=True)
    assert out == [x * x for x in data]
    assert not report.fell_back


def test_results_after_a_chunk_handed_back_wait_for_it():
    # A fallback or a switch hands back the chunks the pool has not started; a thread pool's
    # worker may have taken one off its queue just before (its cancel then succeeds) and
    # started the next. That next chunk, back first, must wait for the one handed back: read
    # as the head, its results took the other's place and every later one moved by a chunk
    # (out[3813] held item 3873's result on 3.13).
    from concurrent.futures import Future

    from autopar.run.chunks import Chunk, Feeder, InOrder

    feeder = Feeder(iter(range(100, 200)), 100, 10, 3)
    inflight = InOrder()
    handed_back = Chunk(0, list(range(0, 50)), Future())
    later = Chunk(50, list(range(50, 100)), Future())
    inflight.add(handed_back)
    inflight.add(later)
    assert handed_back.future.cancel()
    inflight.remove(handed_back)
    feeder.put_back(handed_back.start, handed_back.items)
    later.future.set_result(None)
    later.checked, later.values = True, [x * 2 for x in later.items]
    assert list(inflight.release(feeder.hold_from())) == []  # held: item 0 has yet to run
    assert feeder.next_chunk() == (0, list(range(50)))  # the handed-back chunk goes out first
    again = Chunk(0, list(range(50)), Future())
    inflight.add(again)
    again.future.set_result(None)
    again.checked, again.values = True, [x * 2 for x in again.items]
    released = [v for block in inflight.release(feeder.hold_from()) for v in block]
    assert released == [x * 2 for x in range(100)]


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="fork hooks")
def test_no_thread_of_autopars_is_alive_when_it_forks():
    # The deadline watcher of a thread run with a time limit lives on for half a second;
    # a process run right after forked beside it (a fork copies a thread's locks; 3.12+
    # warn). An idle watcher now ends before any fork.
    from helpers import nap

    seen: list[list[str]] = []

    def after_fork_in_parent() -> None:
        seen.append([t.name for t in threading.enumerate() if t.name.startswith("autopar-")])

    os.register_at_fork(after_in_parent=after_fork_in_parent)
    execute(nap, [0.001] * 10, executor_type="thread", n_jobs=2, timeout=30)
    assert any(t.name == "autopar-deadlines" for t in threading.enumerate())  # still watching
    execute(abs, range(-20, 20), executor_type="process", n_jobs=2, start_method="fork")
    assert seen and all(names == [] for names in seen), seen
