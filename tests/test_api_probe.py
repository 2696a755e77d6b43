"""What a stranger's probe of the API found (issue 24): each test failed before its fix.

Results from other data never come back; a function asked to run in processes never runs in
the caller (a crash takes a worker, not the caller); a time limit holds wherever the item
runs; bad arguments fail before any work with an error that names them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from autopar import ItemFailed, execute, execute_iter, optimize
from autopar.errors import ItemTimeout

from helpers import sleep_first


def double(x):
    return x * 2


class Counter:
    """A function that counts its calls (thread-safe; serial and thread runs only)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.calls += 1
        return x * 2


# -- results from other data -----------------------------------------------------------------


def test_a_result_from_other_data_is_not_reused():
    # A range sampled and dropped leaves its id to the next range made: a stash matched by
    # id handed the old range's results to the new one.
    for start in range(1000, 1010):
        r = optimize(double, range(100))
        assert execute(double, range(start, start + 500), result=r) == [x * 2 for x in range(start, start + 500)]
        r = optimize(double, range(20000))
        assert execute(double, range(start, start + 5), result=r) == [x * 2 for x in range(start, start + 5)]


def test_a_list_refilled_in_place_runs_again():
    buf = list(range(100))
    r = optimize(double, buf)
    buf[:] = range(500, 600)
    assert execute(double, buf, result=r) == [x * 2 for x in range(500, 600)]
    buf = list(range(100))
    r = optimize(double, buf)
    del buf[3:]  # shorter than what the sample ran
    assert execute(double, buf, result=r) == [0, 2, 4]


@pytest.mark.parametrize("shape", [(200,), (100, 3)])
def test_an_array_written_over_in_place_runs_again(shape):
    a = np.arange(float(np.prod(shape))).reshape(shape)
    r = optimize(double, a)
    a[:] = 7.0
    out = execute(double, a, result=r)
    assert len(out) == shape[0]
    assert all(np.all(v == 14.0) for v in out)


class Box:
    def __init__(self, v):
        self.v = v


def first(x):
    return x[0]


def test_items_changed_in_place_run_again():
    # The list untouched, its items changed: the same objects with other contents.
    data = [[i] for i in range(100)]
    r = optimize(first, data)
    for x in data:
        x[0] += 1000
    assert execute(first, data, result=r) == [i + 1000 for i in range(100)]
    value = lambda d: d["v"]  # noqa: E731
    data = [{"v": i} for i in range(100)]
    r = optimize(value, data)
    data[0]["v"] = -1
    assert execute(value, data, result=r)[0] == -1
    boxes = [Box(i) for i in range(100)]
    get = lambda b: b.v  # noqa: E731
    r = optimize(get, boxes)
    boxes[1].v = -1
    assert execute(get, boxes, result=r)[:3] == [0, -1, 2]


def test_values_equal_but_not_the_same_run_again():
    # Equal is not the same: (1,) == (1.0,) and 0.0 == -0.0 gave the old results back.
    data = [(i,) for i in range(100)]
    r = optimize(str, data)
    data[:] = [(float(i),) for i in range(100)]
    assert execute(str, data, result=r)[:2] == ["(0.0,)", "(1.0,)"]
    zeros = [0.0] * 50
    r = optimize(str, zeros)
    zeros[:] = [-0.0] * 50
    assert execute(str, zeros, result=r)[0] == "-0.0"


def test_object_arrays_and_structured_elements_changed_in_place_run_again():
    a = np.empty(60, dtype=object)
    for i in range(60):
        a[i] = [i]
    r = optimize(first, a)
    for x in a:
        x[0] += 1000
    assert execute(first, a, result=r)[:2] == [1000, 1001]
    rec = np.zeros(60, dtype=[("x", float)])
    rows = list(rec)  # np.void elements: views into rec
    get = lambda v: float(v["x"])  # noqa: E731
    r = optimize(get, rows)
    rec["x"] += 7
    assert execute(get, rows, result=r)[:2] == [7.0, 7.0]


def test_changeable_items_left_as_they_were_reuse_the_sampled_results():
    f = Counter()

    def g(x):
        time.sleep(0.0005)  # (longer than pickling the item: worth proving the same)
        return f(x[0])

    data = [[i] for i in range(300)]
    r = optimize(g, data, executor_type="serial")
    sampled = f.calls
    assert sampled > 0
    out, report = execute(g, data, result=r, return_report=True)
    assert out == [i * 2 for i in range(300)]
    assert f.calls == len(data) and report.n_from_sample == sampled


class SlowToPickle:
    """An item whose pickling computes for 5 ms (counted: how often it was pickled)."""

    pickled = 0

    def __init__(self, v: int) -> None:
        self.v = v

    def __reduce__(self):
        type(self).pickled += 1
        end = time.thread_time() + 0.005
        while time.thread_time() < end:
            pass
        return (SlowToPickle, (self.v,))


def test_items_too_costly_to_prove_the_same_are_not_pickled_at_all(monkeypatch):
    # Proving the sampled items unchanged would pickle each (5 ms) against half their own
    # time (1 ms each): it cannot pay, and one item left unproven runs them all again, so
    # optimize() pickles none of them (it pickled a few and then gave up), and execute()
    # runs every item, each once.
    from autopar.tune.sample import stash as S

    during = []
    real = S.SampleStash.freeze

    def freeze(self, *a, **k):
        before = SlowToPickle.pickled
        real(self, *a, **k)
        during.append(SlowToPickle.pickled - before)

    monkeypatch.setattr(S.SampleStash, "freeze", freeze)

    def value(b):
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        return b.v

    data = [SlowToPickle(i) for i in range(200)]
    r = optimize(value, data, executor_type="serial")
    assert r.profile.n_sampled >= 2 and during == [0]
    out, report = execute(value, data, result=r, return_report=True)
    assert out == list(range(200)) and report.n_from_sample == 0


def append_one(x):
    x.append(1)
    return len(x)


@pytest.mark.parametrize("kind", [None, "serial", "thread"])
def test_a_function_changing_its_own_items_runs_each_once(kind):
    # Within one execute() nothing comes between the sample and the run: the items the
    # function changed as it ran are not taken for other items (and run again).
    data = [[] for _ in range(400)]
    assert execute(append_one, data, executor_type=kind) == [1] * 400
    assert all(x == [1] for x in data)


def test_the_same_items_reuse_the_sampled_results():
    f = Counter()
    data = list(range(3000))
    r = optimize(f, data, executor_type="serial")
    sampled = f.calls
    assert sampled > 0
    out, report = execute(f, data, result=r, return_report=True)
    assert out == [x * 2 for x in data]
    assert f.calls == len(data)  # each item once: the sampled ones were not run again
    assert report.n_from_sample == sampled


def test_a_generator_sampled_then_executed_loses_nothing():
    gen = (i for i in range(500))
    r = optimize(double, gen)
    assert execute(double, gen, result=r) == [x * 2 for x in range(500)]


# -- processes asked for ---------------------------------------------------------------------


def _run_script(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(body)
    env = dict(os.environ, AUTOPAR_CACHE="off")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)


def test_a_worker_crash_under_process_never_kills_the_caller():
    done = _run_script(
        """
        import os
        from autopar import execute, optimize
        from autopar.errors import WorkerDied

        def crash(x):
            if x == 10:
                os._exit(7)
            return x

        def crash_first(x):
            if x == 0:
                os._exit(7)
            return x

        try:
            execute(crash, range(20), executor_type="process", n_jobs=2, retries=1)
        except WorkerDied as exc:
            assert exc.items == (10,), exc.items
            assert "status 7" in str(exc), exc
            print("named", exc.items)
        r = optimize(crash_first, range(200), executor_type="process")
        print("optimized", r.executor_type, r.chunksize)
        assert any("did not come back" in w for w in r.warnings), r.warnings  # said, not buried
        try:
            execute(crash_first, range(200), executor_type="process", retries=1)
        except WorkerDied as exc:
            print("named", exc.items)
        print("caller alive")
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["named (10,)", "optimized process 1", "named (0,)", "caller alive"]


def test_process_means_the_function_never_runs_in_the_caller():
    out = execute(os.getpid, [None] * 0, executor_type="process")  # nothing to run
    assert out == []
    pids = execute(_pid, range(300), executor_type="process")
    assert len(pids) == 300
    assert os.getpid() not in pids
    r = optimize(_pid, range(300), executor_type="process")
    pids = execute(_pid, range(300), result=r)
    assert os.getpid() not in pids


def _pid(_):
    return os.getpid()


# -- time limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [None, "thread", "process"])
def test_a_time_limit_holds_for_the_items_the_sample_runs(kind):
    t0 = time.monotonic()
    out, report = execute(
        sleep_first, range(40), timeout=0.5, errors="collect", executor_type=kind, return_report=True
    )
    assert time.monotonic() - t0 < 20  # item 0 sleeps 30 s
    assert isinstance(out[0], ItemFailed) and isinstance(out[0].exception, ItemTimeout)
    assert out[1:] == list(range(1, 40))
    assert report.failures == [0]


def _slow_at_150(x):
    if x == 150:
        time.sleep(2)  # in C: stopped when it returns
    return x


def test_a_thread_item_past_its_limit_fails_alone_whatever_the_chunksize():
    out, report = execute(
        _slow_at_150, range(300), executor_type="thread", n_jobs=2, chunksize=21, timeout=0.3,
        errors="collect", return_report=True,
    )
    assert report.failures == [150]
    assert isinstance(out[150].exception, ItemTimeout)
    assert [v for i, v in enumerate(out) if i != 150] == [x for x in range(300) if x != 150]


def _spin_at_3(x):
    if x == 3:
        while True:  # pure Python: stopped at its next bytecode past the limit
            pass
    return x


def test_a_time_limit_off_the_main_thread_works_for_serial_and_threads():
    got: dict[str, object] = {}

    def call() -> None:
        try:
            got["auto"] = execute(double, range(30), timeout=1)
            got["serial"] = execute(_spin_at_3, range(10), timeout=0.3, executor_type="serial", errors="collect")
        except Exception as exc:  # pragma: no cover - the failure is the assertion below
            got["error"] = exc

    t = threading.Thread(target=call)
    t.start()
    t.join(60)
    assert "error" not in got, got.get("error")
    assert got["auto"] == [x * 2 for x in range(30)]
    serial = got["serial"]
    assert isinstance(serial[3], ItemFailed) and isinstance(serial[3].exception, ItemTimeout)
    assert [v for i, v in enumerate(serial) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


# -- arguments -------------------------------------------------------------------------------


def test_an_endless_timeout_is_no_limit_and_nan_is_refused():
    assert execute(double, range(5), timeout=float("inf")) == [0, 2, 4, 6, 8]
    assert execute(double, range(5), timeout=1e12, executor_type="serial") == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="timeout"):
        execute(double, range(5), timeout=float("nan"))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"pool": object()}, TypeError, "pool must be"),
        ({"result": "x"}, TypeError, "result must be"),
        ({"progress": 5}, TypeError, "progress must be"),
        ({"progress": "yes"}, TypeError, "progress must be"),
        ({"sample_time": float("nan")}, ValueError, "sample_time must be"),
        ({"retry_backoff": float("inf")}, ValueError, "retry_backoff must be"),
        ({"adapt": "no"}, ValueError, "adapt must be"),
        ({"return_report": "yes"}, ValueError, "return_report must be"),
        ({"desc": 5, "progress": True}, TypeError, "desc must be"),
    ],
)
def test_bad_arguments_fail_before_any_item_runs(kwargs, error, words):
    f = Counter()
    with pytest.raises(error, match=words):
        execute(f, range(50), **kwargs)
    assert f.calls == 0


class _ByLabel:
    def __len__(self):
        return 3

    def __getitem__(self, key):
        return {"a": 1, "b": 2, "c": 3}[key]


def test_data_indexed_by_label_is_named():
    with pytest.raises(TypeError, match=r"data \(_ByLabel\) has no __iter__"):
        execute(double, _ByLabel())


# -- an input that fails part way --------------------------------------------------------------


def _failing_input(n: int):
    for i in range(n):
        yield i
    raise ValueError(f"the input broke after {n} items")


def _nap_double(x):
    time.sleep(0.002)
    return x * 2


@pytest.mark.parametrize("kind", [None, "serial"])
@pytest.mark.parametrize("func, n", [(double, 300), (_nap_double, 60)])
def test_every_result_before_a_failing_input_comes_back_first(kind, func, n):
    # As a plain loop: every result before the input's own error, in order, then the error.
    got = []
    with pytest.raises(ValueError, match=f"broke after {n} items"):
        for value in execute_iter(func, _failing_input(n), executor_type=kind):
            got.append(value)
    assert got == [x * 2 for x in range(n)]
    gen = _failing_input(n)
    r = optimize(func, gen, executor_type=kind)
    with pytest.raises(ValueError, match=f"broke after {n} items"):
        execute(func, gen, result=r)


_RELEASE = threading.Event()
_RETURNED = threading.Event()


def _stuck_in_c_at_150(x):
    if x == 150:
        _RELEASE.wait(20)  # a lock wait: in C until the test lets it go
        _RETURNED.set()
    return x


def test_a_thread_item_stuck_in_c_past_its_limit_raises_without_waiting_for_it():
    _RELEASE.clear()
    _RETURNED.clear()
    try:
        with pytest.raises(ItemTimeout, match="threads cannot be stopped"):
            execute(_stuck_in_c_at_150, range(300), executor_type="thread", n_jobs=2, chunksize=100, timeout=0.3)
        assert not _RETURNED.is_set()  # raised while the item was still stuck
    finally:
        _RELEASE.set()


def test_ctrl_c_in_optimize_leaves_no_thread_running_the_function():
    """Interrupted while the sample's probe runs items on its threads: optimize() raises once
    no thread runs the function any more (none goes on with the items left)."""
    from helpers import CtrlCFrom

    data = np.random.default_rng(0).random(200_000)  # a sort: NumPy lets the GIL go
    waits = CtrlCFrom(lambda x: float(np.sort(data)[x]), "autopar-probe")
    interrupted = waits.run(lambda: optimize(waits, list(range(1000)), cache=False))
    waits.assert_none_after(1000)
    assert interrupted
