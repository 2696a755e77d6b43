"""Pipelines: fused and staged runs give the list a loop would, in order, each item once;
failures name their stage and item; queues hold memory to their bound; stopping leaves
nothing running; process stages under every start method (the suite's executor x
start-method matrix, ``where``: tests/conftest.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

import autopar

from autopar import ItemFailed, Pipeline, Stage


def add1(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def spin_py(x: int) -> int:
    s = 0
    for i in range(2000):
        s += i
    return x + s - s


def fail_on_14(x: int) -> int:  # (items reach it as 2 * (i + 1): item 6 fails)
    if x == 14:
        raise ValueError(f"bad value {x}")
    return x


def nap(x):
    time.sleep(0.002)
    return x


def expected(n):
    return [str(2 * (x + 1)) for x in range(n)]


def test_fused_is_the_loop_and_runs_through_execute():
    pipe = Pipeline([add1, double, str])
    plan = pipe.optimize(list(range(200)))
    assert plan.mode == "fused" and plan.fused is not None
    assert [s.name for s in plan.stages] == ["add1", "double", "str"]
    assert "fused" in plan.explain()
    assert pipe.execute(range(200)) == expected(200)


@pytest.mark.parametrize("kinds", [("thread", "thread", "serial"), ("thread", "process", "thread"), ("process", "process", "serial")])
def test_staged_runs_each_item_once_in_order(kinds):
    seen: list[int] = []

    def sink(v: str) -> str:  # one writer, in input order
        seen.append(int(v))
        return v

    stages = [Stage(add1, executor_type=kinds[0], n_jobs=2), Stage(double, executor_type=kinds[1], n_jobs=2),
              Stage(str), Stage(sink, executor_type=kinds[2], n_jobs=1)]
    pipe = Pipeline(stages)
    items = list(range(300))
    plan = pipe.optimize(items)
    assert plan.mode == "staged" and [p.executor_type for p in plan.stages][:2] == list(kinds[:2])
    assert pipe.execute(items, plan=plan) == expected(300)  # the sample's items are not run again
    assert seen == [2 * (x + 1) for x in range(300)]  # each once, in order, through the sink


_forked_beside: list[list[str]] = []
_watching = [False]
_hooked = [False]


def _after_fork_in_parent() -> None:
    if _watching[0]:
        _forked_beside.append(sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()))


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="fork hooks")
def test_process_stages_fork_their_workers_before_any_thread_of_the_run():
    # Two process stages: the second stage's pool forked beside the first pool's manager
    # thread (a fork copies a thread's locks; 3.12+ warn). Every process stage's workers
    # now fork before any thread of the staged run starts, the pools' own included.
    if not _hooked[0]:
        os.register_at_fork(after_in_parent=_after_fork_in_parent)
        _hooked[0] = True
    _forked_beside.clear()
    before = {t.name for t in threading.enumerate()}
    stages = [Stage(add1, executor_type="process", n_jobs=2), Stage(double, executor_type="thread", n_jobs=2),
              Stage(str, executor_type="process", n_jobs=2)]
    pipe = Pipeline(stages, start_method="fork")
    _watching[0] = True
    try:
        plan = pipe.optimize(list(range(60)))
        assert plan.mode == "staged"
        assert pipe.execute(list(range(60)), plan=plan) == expected(60)
    finally:
        _watching[0] = False
    assert len(_forked_beside) >= 4  # both stages' two workers
    assert all(set(names) <= before for names in _forked_beside), _forked_beside


def test_a_process_stage_that_cannot_start_names_itself_and_leaves_no_worker():
    # The second process stage's function cannot be sent to a worker, after the first
    # stage's workers were forked: the error is the function's, naming its stage (it was
    # "cannot join thread before it is started", from closing threads never started), and
    # the first stage's workers are gone.
    import psutil

    lock = threading.Lock()

    def holds_a_lock(x: int) -> int:
        with lock:
            return x

    stages = [Stage(add1, executor_type="process", n_jobs=2), Stage(holds_a_lock, executor_type="process", n_jobs=2)]
    before = {c.pid for c in psutil.Process().children()}  # (the suite's shared warm pools)
    with pytest.raises(TypeError, match="cannot be sent to a process worker") as info:
        Pipeline(stages, start_method="fork").execute(list(range(50)))
    assert info.value.autopar_stage == "holds_a_lock"
    def new_children() -> set[int]:
        return {c.pid for c in psutil.Process().children()} - before

    deadline = time.monotonic() + 5
    while new_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert new_children() == set()


def test_unordered_stage_passes_items_as_they_finish_and_the_output_stays_in_order():
    pipe = Pipeline([Stage(nap, executor_type="thread", n_jobs=4, ordered=False), Stage(add1, executor_type="thread", n_jobs=1)])
    assert pipe.execute(range(100)) == [x + 1 for x in range(100)]


@pytest.mark.matrix("thread", "process")
def test_a_failure_names_its_stage_and_item(where):
    pipe = Pipeline([add1, double, Stage(fail_on_14, executor_type=where.kind, n_jobs=2), Stage(str, executor_type="thread")],
                    start_method=where.method)
    with pytest.raises(ValueError, match="bad value 14") as info:
        pipe.execute(range(40))
    assert info.value.autopar_item_index == 6
    assert info.value.autopar_stage == "fail_on_14"
    out = pipe.execute(range(40), errors="collect")
    assert isinstance(out[6], ItemFailed) and out[6].index == 6
    assert [o for i, o in enumerate(out) if i != 6] == [str(2 * (x + 1)) for x in range(40) if x != 6]


def test_fused_failures_name_the_stage_too():
    with pytest.raises(ValueError) as info:
        Pipeline([add1, double, fail_on_14]).execute(list(range(20)))
    assert info.value.autopar_stage == "fail_on_14" and info.value.autopar_item_index == 6


def test_the_composed_function_runs_in_processes_and_names_a_failing_stage():
    from autopar.pipeline import Fused

    chain = Fused(Pipeline([add1, double, fail_on_14]).stages).chain
    assert chain(1) == 4 and chain.fused.names == ["add1", "double", "fail_on_14"]
    out = autopar.execute(chain, list(range(20)), executor_type="process", n_jobs=2, errors="collect")
    assert isinstance(out[6], ItemFailed) and out[6].exception.autopar_stage == "fail_on_14"
    assert [o for i, o in enumerate(out) if i != 6] == [2 * (x + 1) for x in range(20) if x != 6]


def test_a_slow_consumer_holds_memory_to_the_queue_bound():
    started = []

    def record(x):
        started.append(x)
        return x

    pipe = Pipeline([Stage(record, executor_type="thread", n_jobs=1), Stage(add1, executor_type="thread", n_jobs=1)])
    with pipe.stream(queue_size=4) as s:
        submitted = []

        def produce():
            for x in range(100):
                s.submit(x, timeout=60)  # the reader comes later: wait for it, do not call it a stall
                submitted.append(x)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        time.sleep(0.5)  # nobody takes results
        # Held at most: 3 queues of 4, and one item in each stage's worker.
        assert len(submitted) <= 3 * 4 + 2 + 1
        assert len(started) <= 2 * 4 + 2
        got = [s.get_result(timeout=5) for _ in range(100)]
        t.join(timeout=5)
        assert got == [x + 1 for x in range(100)] and len(submitted) == 100
        m = s.metrics()
        assert [st["items"] for st in m["stages"]] == [100, 100] and m["items"] == 100
        assert m["bottleneck"] in ("record", "add1")


def test_stream_batches_results_and_timeouts():
    pipe = Pipeline([Stage(double, executor_type="thread", n_jobs=2), Stage(add1, executor_type="serial")])
    with pipe.stream(queue_size=8) as s:
        assert s.process_batch(range(10)) == [2 * x + 1 for x in range(10)]
        seq = s.submit(100)
        assert seq == 10 and s.get_result(timeout=5) == 201
        assert list(s.results(count=0)) == []
        with pytest.raises(TimeoutError):
            s.get_result(timeout=0.1)


def slow(x):
    time.sleep(0.2)
    return x


@pytest.mark.matrix("thread", "process", cost="expensive")  # its workers killed mid-item
def test_stop_ends_every_stage_with_nothing_left_running(where):
    pipe = Pipeline([Stage(slow, executor_type=where.kind, n_jobs=2), Stage(add1, executor_type="thread", n_jobs=1)],
                    start_method=where.method)
    s = pipe.stream(queue_size=4)
    for x in range(6):
        s.submit(x)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 2.0
    assert not [t for t in threading.enumerate() if t.name.startswith("autopar-stage") or t.name.startswith("autopar-pipeline")]
    with pytest.raises(RuntimeError, match="stopped"):
        s.submit(1)


def test_an_iterator_stopped_early_stops_the_stages():
    it = Pipeline([Stage(nap, executor_type="thread", n_jobs=2), Stage(add1, executor_type="process", n_jobs=1)]).execute_iter(
        range(1000), plan=None
    )
    assert next(it) == 1
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("autopar-stage")]


def pid_of(x: int) -> tuple[int, int]:
    return x, os.getpid()


@pytest.mark.matrix("process")
def test_process_stages_under_each_start_method(where):
    pipe = Pipeline([Stage(spin_py, executor_type="process", n_jobs=2), Stage(add1, executor_type="thread")], start_method=where.method)
    assert pipe.execute(range(50)) == [x + 1 for x in range(50)]
    # (optimize()'s sample may run all 50 itself.) A stream sends every item to the stage's
    # workers, started with that method.
    pipe = Pipeline([Stage(pid_of, executor_type="process", n_jobs=2), Stage(tuple, executor_type="thread")], start_method=where.method)
    with pipe.stream(queue_size=8) as s:
        out = s.process_batch(range(20), timeout=60)
    assert [x for x, _ in out] == list(range(20)) and os.getpid() not in {p for _, p in out}


def test_stages_are_checked():
    with pytest.raises(TypeError):
        Stage(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="executor_type"):
        Stage(add1, executor_type="gpu")
    with pytest.raises(ValueError, match="n_jobs"):
        Stage(add1, n_jobs=0)
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])


def nap5(x: int) -> int:
    time.sleep(0.005)
    return x


def test_a_waiting_stage_that_holds_the_others_back_gets_more_workers_while_running():
    # Corrected while running: the sleeping stage starts with one thread, is busy all the
    # time with items queued for it, and gets more; the computing one does not (more threads
    # would only share the GIL); the pinned sink stays at one.
    pipe = Pipeline([nap5, spin_py, Stage(add1, n_jobs=1)])
    with pipe.stream(config=[("thread", 1), ("thread", 1), ("thread", 1)], queue_size=16) as s:
        assert s.process_batch(range(120)) == [spin_py(x) + 1 for x in range(120)]
        m = s.metrics()
    assert m["grown"].get("nap5", 0) >= 1
    assert "spin_py" not in m["grown"] and "add1" not in m["grown"]
    workers = {st["name"]: st["n_jobs"] for st in m["stages"]}
    assert workers["nap5"] == 1 + m["grown"]["nap5"] and workers["add1"] == 1


def test_a_staged_run_slower_than_fused_was_predicted_turns_fused_for_the_items_left():
    """Corrected while running, the other way: a staged run (here one forced on one thread a
    stage, as a misjudged plan would run) that delivers well under fused's predicted rate
    stops taking input, finishes what it holds, and the rest runs fused: each item once,
    in order."""
    import dataclasses

    items = list(range(2000))
    pipe = Pipeline([nap5, add1])
    plan = pipe.optimize(items)
    # (fused or staged is the model's choice from timings: a loaded machine may tip it)
    assert plan.fused is not None and plan.fused.executor_type == "thread"
    one_each = tuple(dataclasses.replace(s, executor_type="thread", n_jobs=1) for s in plan.stages)
    forced = dataclasses.replace(plan, mode="staged", stages=one_each)
    run = pipe.execute_iter(items, plan=forced)
    assert list(run) == [x + 1 for x in items]
    assert run.switched_at is not None and 0 < run.switched_at < len(items)
    assert "ran fused" in run.reason


def test_a_pinned_pipeline_stays_staged():
    run = Pipeline([nap5, Stage(add1, n_jobs=1)]).execute_iter(list(range(300)))
    assert list(run) == [x + 1 for x in range(300)]
    assert run.switched_at is None  # no fused way keeps the pin's promise


def test_a_run_reports_what_it_did_against_the_plan():
    """execute_iter()'s run says, once done, how many items it delivered and how fast
    against the plan's prediction; staged, each stage's items, busy share and waits and the
    bottleneck; fused, execute()'s own report (predicted against measured)."""
    items = list(range(120))
    staged = Pipeline([nap, Stage(add1, n_jobs=1)]).execute_iter(items)
    assert list(staged) == [x + 1 for x in items]
    rep = staged.report()
    assert rep["mode"] == "staged" and rep["items"] == len(items) and rep["items_per_s"] > 0
    assert rep["predicted_items_per_s"] > 0 and rep["switched_at"] is None
    by_name = {s["name"]: s for s in rep["stages"]}
    assert set(by_name) == {"nap", "add1"}
    # The staged run took the items after those its plan's serial sample already ran.
    assert by_name["add1"]["n_jobs"] == 1 and all(s["items"] == len(items) - rep["from_sample"] for s in rep["stages"])
    assert rep["bottleneck"] in by_name and all("busy_share" in s for s in rep["stages"])

    import dataclasses

    pipe = Pipeline([spin_py, add1])
    plan = pipe.optimize(list(range(300)))
    # A fused run's report (fused or staged is the model's choice from timings: a loaded
    # machine may tip it).
    fused = pipe.execute_iter(list(range(300)), plan=dataclasses.replace(plan, mode="fused"))
    assert fused.to_list() == [spin_py(x) + 1 for x in range(300)]
    rep = fused.report()
    assert rep["mode"] == "fused" and rep["items"] == 300
    assert rep["execution"] is not None and rep["execution"].n_items == 300


def _counting_sink():
    """A one-writer sink that counts what it is given (a lock in its closure: it does not
    pickle, so it runs in this process, as a sink writing one file does)."""
    seen: list[str] = []
    lock = threading.Lock()

    def write(v: str) -> str:
        with lock:
            seen.append(v)
        return v

    return write, seen


README_SHAPES = {
    "staged": lambda write: [add1, double, Stage(str, executor_type="process"), Stage(write, n_jobs=1)],
    "fused": lambda write: [add1, double, str, write],
}


@pytest.mark.parametrize("shape", sorted(README_SHAPES))
@pytest.mark.parametrize("source", ["list", "range", "iterator"])
def test_optimize_then_execute_runs_each_item_once_through_each_stage(shape, source):
    """README's pattern: ``plan = pipe.optimize(paths)`` then ``pipe.execute(paths)`` (the
    plan not passed): the sample's items are not run again, for a list, a range or a one-shot
    iterator (which optimize() read to its end)."""
    write, seen = _counting_sink()
    pipe = Pipeline(README_SHAPES[shape](write))
    make = {"list": lambda: list(range(20)), "range": lambda: range(20), "iterator": lambda: iter(range(20))}[source]
    paths = make()
    plan = pipe.optimize(paths)
    assert plan.mode == shape
    assert pipe.execute(paths) == expected(20)
    assert sorted(seen, key=int) == expected(20)  # each item once through the sink
    seen.clear()
    assert pipe.execute(paths if source != "iterator" else make()) == expected(20)  # a second run runs them all
    assert sorted(seen, key=int) == expected(20)


@pytest.mark.parametrize("shape", sorted(README_SHAPES))
def test_a_plan_passed_again_runs_every_item_the_second_time(shape):
    write, seen = _counting_sink()
    pipe = Pipeline(README_SHAPES[shape](write))
    paths = list(range(30))
    plan = pipe.optimize(paths)
    assert pipe.execute(paths, plan=plan) == expected(30)
    assert pipe.execute(paths, plan=plan) == expected(30)
    assert sorted(seen, key=int) == sorted(expected(30) * 2, key=int)


@pytest.mark.parametrize("shape", sorted(README_SHAPES))
@pytest.mark.parametrize("pass_plan", [True, False])
def test_items_changed_in_place_after_optimize_are_run_again(shape, pass_plan):
    """The sample's results are handed back only for the items they came from: a list
    changed in place since optimize() runs its items again."""
    write, _ = _counting_sink()
    pipe = Pipeline(README_SHAPES[shape](write))
    buf = list(range(20))
    plan = pipe.optimize(buf)
    buf[:] = range(500, 520)
    out = pipe.execute(buf, plan=plan if pass_plan else None)
    assert out == [str(2 * (x + 1)) for x in range(500, 520)]


def first_plus(x):
    return x[0] + x[1]


@pytest.mark.parametrize("pinned", [True, False])
def test_items_whose_contents_changed_after_optimize_are_run_again(pinned):
    """The list the same, its items changed in place: a staged or pinned plan's sampled
    results held for the old contents."""
    stages = [Stage(first_plus, executor_type="thread", n_jobs=1) if pinned else first_plus, double]
    pipe = Pipeline(stages)
    items = [[i, 1] for i in range(40)]
    plan = pipe.optimize(items)
    for x in items:
        x[0] += 1000
    assert pipe.execute(items, plan=plan) == [2 * (i + 1001) for i in range(40)]


def test_submitting_past_the_queues_with_no_reader_says_so_instead_of_hanging(monkeypatch):
    """README's stream, submitted to without reading: once the results are full and no
    thread takes them, submit() raises StreamStalled naming the cause and the ways out
    instead of waiting forever; the stream goes on (the items in are all there)."""
    from autopar import pipeline
    from autopar.pipeline import stream  # STALL_GRACE lives there, read by submit() at call time

    monkeypatch.setattr(stream, "STALL_GRACE", 0.5)
    write, seen = _counting_sink()
    pipe = Pipeline(README_SHAPES["staged"](write))
    with pipe.stream(queue_size=4) as s:
        n = 0
        with pytest.raises(pipeline.StreamStalled) as info:
            for x in range(200):
                s.submit(x)
                n += 1
        text = str(info.value)
        assert "queue_size=4" in text and "process_batch" in text and "timeout=" in text
        assert 20 <= n < 200  # 5 queues of 4 (and the items in the stages' hands) went in
        with pytest.raises(TimeoutError, match="no room"):
            s.submit(n, timeout=0.2)
        assert list(s.results(n, timeout=60)) == expected(n)  # nothing was lost or run twice
        assert s.process_batch(range(n, n + 60), timeout=60) == [str(2 * (x + 1)) for x in range(n, n + 60)]
    assert sorted(seen, key=int) == expected(n + 60)


def test_a_reader_thread_away_for_a_while_keeps_backpressure(monkeypatch):
    """A thread that has taken results and is busy elsewhere will be back: submit() waits for
    it (no StreamStalled), past the stall grace."""
    from autopar.pipeline import stream  # STALL_GRACE lives there, read by submit() at call time

    monkeypatch.setattr(stream, "STALL_GRACE", 0.1)
    pipe = Pipeline([Stage(add1, executor_type="thread", n_jobs=1), Stage(double, executor_type="thread", n_jobs=1)])
    got: list[int] = []
    first = threading.Event()
    with pipe.stream(queue_size=2) as s:
        def consume():
            got.append(s.get_result(timeout=60))
            first.set()
            time.sleep(1.0)  # away: the stream fills meanwhile
            got.extend(s.results(59, timeout=60))

        t = threading.Thread(target=consume)
        t.start()
        s.submit(0)
        assert first.wait(timeout=60)  # the reader has taken a result: it will be back
        for x in range(1, 60):
            s.submit(x)
        t.join(timeout=60)
    assert got == [2 * (x + 1) for x in range(60)]


def test_stream_timeouts_are_checked_and_a_second_submitter_times_out_too():
    pipe = Pipeline([Stage(add1, executor_type="thread", n_jobs=1)])
    with pipe.stream(queue_size=1) as s:
        for bad in (-1, float("nan"), float("inf"), "1", True):
            with pytest.raises(ValueError, match="timeout"):
                s.get_result(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                s.submit(1, timeout=bad)
        with s.lock:  # another thread's submit() holds the stream
            with pytest.raises(TimeoutError, match="another thread"):
                s.submit(1, timeout=0.1)
        assert s.process_batch([1, 2, 3], timeout=60) == [2, 3, 4]


def test_a_dropped_stream_frees_its_threads_and_processes():
    """A stream never stopped, then dropped, ends its stage threads, its watcher, its process
    pool's threads and its worker processes: nothing the finalizer holds refers back to the
    stream, so dropping the last reference collects it."""
    import gc
    import weakref

    import psutil

    me = psutil.Process()
    children = {p.pid for p in me.children(recursive=True)}
    threads = set(threading.enumerate())
    pipe = Pipeline([Stage(spin_py, executor_type="process", n_jobs=2), add1])
    s = pipe.stream(queue_size=4)
    assert s.process_batch(range(8), timeout=60) == [x + 1 for x in range(8)]
    s.submit(100)  # one left in flight
    started = [t for t in threading.enumerate() if t not in threads]
    assert any(t.name == "autopar-pipeline-watch" for t in started) and len(started) >= 4
    assert {p.pid for p in me.children(recursive=True)} - children  # the stage's workers
    ref = weakref.ref(s)
    del s
    assert ref() is None  # dropped at once: no cycle through the finalizer
    gc.collect()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left_threads = [t.name for t in started if t.is_alive()]
        left_children = [p.pid for p in me.children(recursive=True)
                         if p.pid not in children and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not left_threads and not left_children:
            break
        time.sleep(0.05)
    assert not left_threads and not left_children


@pytest.mark.parametrize("call, match", [
    (lambda p: p.stream(errors="ignore"), "errors"),
    (lambda p: p.stream(queue_size=0), "queue_size"),
    (lambda p: p.stream(queue_size=2.5), "queue_size"),
    (lambda p: p.stream(ordered="yes"), "ordered"),
    (lambda p: p.stream(plan="fused"), "plan"),
    (lambda p: p.stream(config=[("thread", 1)]), "each of the 2 stages"),
    (lambda p: p.stream(config=[("gpu", 1), ("thread", 1)]), "executor_type"),
    (lambda p: p.stream(config=[("thread", 0), ("thread", 1)]), "n_jobs"),
    (lambda p: p.stream(config=[("thread", 1), ("thread", 2)]), "pinned"),
    (lambda p: p.execute(range(4), errors="ignore"), "errors"),
    (lambda p: p.execute(range(4), queue_size=-1), "queue_size"),
    (lambda p: p.execute(range(4), plan=object()), "plan"),
    (lambda p: p.execute(42), "iterable"),
    (lambda p: p.execute_iter(range(4), errors="skip"), "errors"),
    (lambda p: p.optimize(range(4), errors="ignore"), "errors"),
    (lambda p: p.optimize(range(4), sample_time=-1), "sample_time"),
    (lambda p: p.optimize(range(4), cache="yes"), "cache"),
    (lambda p: p.optimize(range(4), queue_size=0), "queue_size"),
])
def test_pipeline_arguments_are_checked_before_anything_runs(call, match):
    ran: list[int] = []

    def track(x):
        ran.append(x)
        return x

    pipe = Pipeline([track, Stage(add1, n_jobs=1)])
    with pytest.raises((ValueError, TypeError), match=match):
        call(pipe)
    assert ran == []  # refused before any item ran, and no stream left running


@pytest.mark.parametrize("pinned", [True, False])
def test_a_failure_the_sample_collected_raises_in_a_run_that_does_not_collect(pinned):
    """optimize(errors="collect") then execute(items): the failing item the sample kept in
    its place raises (the run did not ask to collect), naming its stage and index."""
    pipe = Pipeline([add1, double, fail_on_14, Stage(str, n_jobs=1) if pinned else str])
    items = list(range(20))
    plan = pipe.optimize(items, errors="collect")
    assert plan.mode == ("staged" if pinned else "fused")
    with pytest.raises(ValueError, match="bad value 14") as info:
        pipe.execute(items)
    assert info.value.autopar_item_index == 6 and info.value.autopar_stage == "fail_on_14"
    out = pipe.execute(items, plan=plan, errors="collect")  # the plan's sample is spent: all run again
    assert isinstance(out[6], ItemFailed) and out[6].index == 6
