"""The fault matrix: every fault, on threads and on process pools with each start method.

Where a case runs is the suite's one executor x start-method matrix (``where``, narrowed by
``@pytest.mark.matrix``: tests/conftest.py). Each case runs execute() with its own pool (the
pool is what a fault breaks); a second run of a fault that leaves its pool whole (an error
collected, an item or result that cannot be pickled) takes the session's shared pool of that
place (``pool``) instead of starting another. The leak guard in conftest.py fails any case
that leaves a process, thread or temp file behind, and every test has a deadlock timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

import autopar
from autopar import ItemFailed, ItemTimeout, WorkerDied, execute
from autopar.backends.pools import sigint_deferred

import helpers
from conftest import START_METHODS, Where

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(90)



def run_on(where, func, data, pool=None, **kw):
    """execute() on its own pool of 2 at ``where`` (a conftest.Where), or on ``pool`` (the
    session's shared one of that place), in chunks of 2."""
    kw.setdefault("chunksize", 2)
    if pool is not None:
        return execute(func, data, pool=pool, **kw)
    kw.setdefault("n_jobs", 2)
    return execute(func, data, **where.kw, **kw)


# -- an exception in the function ----------------------------------------------------------


def test_exception_raises_with_index(where):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="bad item 7") as info:
        run_on(where, helpers.fail_on, range(200))
    assert info.value.autopar_item_index == 7
    assert time.monotonic() - t0 < 10


def test_exception_collected(where, pool):
    out, report = run_on(where, helpers.fail_on, range(20), pool=pool, errors="collect", return_report=True)
    assert [x for i, x in enumerate(out) if i != 7] == [i for i in range(20) if i != 7]
    failed = out[7]
    assert isinstance(failed, ItemFailed) and failed.index == 7
    assert isinstance(failed.exception, ValueError) and "bad item 7" in str(failed.exception)
    assert report.failures == [7]
    if where.kind == "process":
        assert "fail_on" in failed.traceback


# -- a worker process that dies -------------------------------------------------------------

DEATHS = [
    (helpers.crash_exit, "exited with status 3"),
    (helpers.crash_kill, "killed by SIGKILL"),
    (helpers.crash_segv, "killed by SIGSEGV"),
]


@pytest.mark.matrix("process")
@pytest.mark.parametrize("func, how", DEATHS, ids=["os._exit", "SIGKILL", "segfault"])
def test_worker_death_is_named(where, func, how):
    t0 = time.monotonic()
    with pytest.raises(WorkerDied) as info:
        run_on(where, func, range(12))
    assert time.monotonic() - t0 < 20
    assert how in str(info.value)
    assert 5 in info.value.items


@pytest.mark.matrix("process")
def test_retries_pin_the_item_down(where):
    with pytest.raises(WorkerDied) as info:
        run_on(where, helpers.crash_kill, range(12), retries=2, retry_backoff=0.01)
    assert info.value.items == (5,)  # items run alone on retry: only the culprit is left
    assert "after 2 retries" in str(info.value)


@pytest.mark.matrix("process")
def test_retries_with_collect_lose_only_the_culprit(where):
    out, report = run_on(
        where, helpers.crash_exit, range(12), retries=1, retry_backoff=0.01,
        errors="collect", return_report=True,
    )
    assert isinstance(out[5], ItemFailed) and isinstance(out[5].exception, WorkerDied)
    assert [x for i, x in enumerate(out) if i != 5] == [i for i in range(12) if i != 5]
    assert report.failures == [5]
    assert 5 in report.retried


def test_thread_worker_death_takes_the_caller_down():
    # Threads share the caller's process: os._exit in one ends it all. Shown in a child.
    code = "import autopar, helpers; autopar.execute(helpers.crash_exit, range(12), executor_type='thread', n_jobs=2, chunksize=2)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, timeout=60)
    assert out.returncode == 3


# -- an item that hangs ---------------------------------------------------------------------


@pytest.mark.matrix("process")
def test_process_item_timeout_raises(where):
    t0 = time.monotonic()
    with pytest.raises(ItemTimeout) as info:
        run_on(where, helpers.hang, range(8), timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert info.value.autopar_item_index == 3


@pytest.mark.matrix("process")
def test_process_item_timeout_collected(where):
    out = run_on(where, helpers.hang, range(8), timeout=0.5, errors="collect")
    assert isinstance(out[3], ItemFailed) and isinstance(out[3].exception, ItemTimeout)
    assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


@pytest.mark.matrix("process")
def test_item_beyond_signals_gets_its_worker_killed(where):
    t0 = time.monotonic()
    out = run_on(where, helpers.blocks_signals, range(8), timeout=0.5, chunksize=1, errors="collect")
    assert time.monotonic() - t0 < 20
    assert isinstance(out[3], ItemFailed) and "worker was killed" in str(out[3].exception)
    assert [x for i, x in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


def test_an_item_deaf_to_sigterm_too_is_stopped_soon_after_its_limit():
    # A forked worker is up at once: the sample's worker gave its first batch 30 s more for
    # a start (a spawned worker's imports), and a stopped pool gave each worker 5 s to end on
    # SIGTERM before SIGKILL: an item blocking both took 17-32 s past timeout=0.5.
    t0 = time.monotonic()
    out = execute(helpers.blocks_alarm_and_term, range(6), executor_type="process", n_jobs=2, timeout=0.5,
                  errors="collect", start_method="fork")
    took = time.monotonic() - t0
    assert isinstance(out[0], ItemFailed) and out[1:] == [1, 2, 3, 4, 5]
    assert took < 15, took


def test_a_stopped_pool_kills_a_worker_deaf_to_sigterm_after_one_short_wait(monkeypatch):
    from autopar.backends import process

    monkeypatch.setattr(process, "TERM_WAIT", 0.2)
    pool = process.make_process_pool(2, "fork", 1)
    futures = [pool.submit(helpers.blocks_alarm_and_term, 0) for _ in range(2)]
    time.sleep(0.5)  # both workers inside the item, SIGTERM blocked
    assert not any(f.done() for f in futures)
    t0 = time.monotonic()
    process.terminate(pool)
    assert time.monotonic() - t0 < 3.0  # one wait of 0.2 s for both, then SIGKILL (was 5 s each)


def test_a_worker_slow_to_start_is_not_killed_for_its_first_item():
    # A spawned worker imports before it runs anything (here 2 s, as a loaded machine's
    # imports may take): the watchdog counted that against the first item's 0.5 s limit and
    # killed a worker that had not started it.
    import slow_start

    out = execute(slow_start.ident, range(4), executor_type="process", n_jobs=1, chunksize=1, timeout=0.5,
                  errors="collect", start_method="spawn")
    assert out == [0, 1, 2, 3]


def test_thread_item_timeout_raises_and_says_the_thread_goes_on():
    helpers.HANG_DONE.clear()
    with pytest.raises(ItemTimeout, match="threads cannot be stopped"):
        run_on(Where("thread"), helpers.hang_briefly, range(8), timeout=0.3, chunksize=1)
    assert not helpers.HANG_DONE.is_set()  # raised while the stuck call was still running
    assert helpers.HANG_DONE.wait(10)  # and that call does finish, in the background


def test_serial_item_timeout():
    with pytest.raises(ItemTimeout):
        execute(helpers.hang, range(8), executor_type="serial", timeout=0.3)


# -- Ctrl-C in the caller --------------------------------------------------------------------


@pytest.mark.matrix("process")
def test_sigint_stops_every_worker(where):
    method = where.method
    script = textwrap.dedent(
        f"""
        import os, sys, time, autopar, helpers
        def report(done, total):
            if done == 2:
                import psutil
                kids = [p.pid for p in psutil.Process().children(recursive=True)]
                print("PIDS", *kids, flush=True)
        autopar.execute(helpers.nap, [0.2] * 400, executor_type="process", n_jobs=2, chunksize=1,
                        start_method="{method}", progress=report)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT / "tests", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=helpers.sigint_on)
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), proc.stderr.read()
    pids = [int(p) for p in line.split()[1:]]
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < deadline, "workers outlived the caller's Ctrl-C"
        time.sleep(0.05)


# -- things that cannot be pickled ----------------------------------------------------------


def test_ctrl_c_during_a_pool_call_is_held_until_the_call_is_done():
    # Ctrl-C inside a pool's submit once left the pool's queue lock taken (a hang at exit,
    # about 1 in 100): pool calls run with Ctrl-C held back, then raise it.
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("the test runner has its own SIGINT handler")
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecode boundaries, where Python would run a handler
                time.sleep(0)
            reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_holding_ctrl_c_back_leaves_other_handlers_and_threads_alone():
    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGINT, mine)
    try:
        with sigint_deferred():
            assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, old)
    seen = []

    def in_thread():
        with sigint_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [old]


@pytest.mark.matrix("process")
def test_unpicklable_function_is_refused_before_work(where):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be sent to a process worker"):
        run_on(where, lambda x: (lock, x)[1], range(10))


@pytest.mark.matrix("process")
def test_unpicklable_item_names_the_items(where, request):
    items = [i if i != 3 else helpers.Unpicklable(i) for i in range(8)]
    with pytest.raises(TypeError, match="item 3 cannot be sent to a process worker") as info:
        run_on(where, helpers.square_or_value, items)
    assert info.value.autopar_item_index == 3
    pool = request.getfixturevalue("pool")  # (taken after its own pool: see conftest._SharedPools)
    out = run_on(where, helpers.square_or_value, items, pool=pool, errors="collect")
    assert isinstance(out[3], ItemFailed)
    assert [x for i, x in enumerate(out) if i != 3] == [i * i for i in range(8) if i != 3]


@pytest.mark.matrix("process")
def test_unpicklable_result(where, request):
    with pytest.raises(Exception) as info:
        run_on(where, helpers.bad_result, range(8), chunksize=1)
    assert any("items 4-4" in n for n in getattr(info.value, "__notes__", []))
    pool = request.getfixturevalue("pool")  # (taken after its own pool: see conftest._SharedPools)
    out = run_on(where, helpers.bad_result, range(8), pool=pool, chunksize=1, errors="collect")
    assert isinstance(out[4], ItemFailed)
    assert [x for i, x in enumerate(out) if i != 4] == [0, 1, 2, 3, 5, 6, 7]


def test_optimize_rules_out_processes_for_unpicklable_results():
    r = autopar.optimize(helpers.lock_result, range(200))
    assert r.executor_type != "process"
    assert any("processes ruled out" in w for w in r.warnings)
    # Asked for processes, the function runs in a worker even in the sample: results that
    # cannot come back are an error naming the items, not a serial run in the caller.
    with pytest.raises(TypeError, match="cannot be sent back from a process worker"):
        autopar.optimize(helpers.lock_result, range(200), executor_type="process")


# -- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(errors="ignore"), "errors must be"),
        (dict(timeout=0), "timeout must be"),
        (dict(timeout="5"), "timeout must be"),
        (dict(retries=-1), "retries must be"),
        (dict(retry_backoff=-1), "retry_backoff"),
    ],
)
def test_bad_run_arguments(kw, words):
    with pytest.raises(ValueError, match=words):
        execute(helpers.square, range(3), executor_type="thread", n_jobs=2, chunksize=1, **kw)


# -- repeated use ----------------------------------------------------------------------------


def _resources():
    me = psutil.Process()
    return len(me.children(recursive=True)), threading.active_count(), me.num_fds(), _own_shm()


def _own_shm() -> set[str]:
    """Shared-memory files this process maps (semaphores, shared memory): other processes'
    files in /dev/shm are not this test's."""
    try:
        with open("/proc/self/maps") as fh:
            return {line.split(None, 5)[-1].strip() for line in fh if "/dev/shm/" in line}
    except OSError:
        return set()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_500_calls_leave_nothing_behind():
    # Repeated use, not the matrix: a rotation over its kinds, the process pool under the
    # first start method the platform has (fork where there is one: 100 pool starts are
    # cheap only forked).
    kinds = [Where("serial"), Where("thread"), Where("process", START_METHODS[0]), Where("thread"), Where("serial")]
    for i in range(20):  # warm up imports and caches
        execute(helpers.square, range(20), **kinds[i % len(kinds)].kw, n_jobs=2, chunksize=5)
    before = _resources()
    for i in range(500):
        assert execute(helpers.square, range(20), **kinds[i % len(kinds)].kw, n_jobs=2, chunksize=5) == [
            x * x for x in range(20)
        ]
    time.sleep(0.5)
    kids, threads, fds, shm = _resources()
    assert kids <= before[0] and threads <= before[1]
    assert fds <= before[2] + 2, (before[2], fds)
    assert shm <= before[3]


def test_a_pool_broken_before_a_submit_is_a_worker_died_error():
    # A worker that dies between harvests breaks the pool before the next submit: that goes
    # to recovery too (here a given pool: WorkerDied naming what happened), not a raw
    # BrokenProcessPool out of submit().
    from autopar.backends.process import worker_processes

    with autopar.get_executor("process", 2, start_method="fork") as ex:
        list(ex.map(abs, range(4)))  # the workers are up
        for proc in worker_processes(ex).values():
            os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not getattr(ex, "_broken", False) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(WorkerDied):
            execute(abs, range(20), pool=ex, chunksize=2)


# -- an input that fails part way --------------------------------------------------------------


def _input_failing_at(n: int):
    yield from range(n)
    raise LookupError(f"the input broke after {n} items")


@pytest.mark.matrix("thread", "process", cost="expensive")  # three pools a case
def test_every_result_before_a_failing_input_comes_back_before_its_error(where):
    # As a plain loop does: the items read before the input failed all run and come back in
    # order, then the input's own error.
    got = []
    it = autopar.execute_iter(helpers.square, _input_failing_at(300), **where.kw, n_jobs=2, chunksize=7)
    with pytest.raises(LookupError, match="after 300 items"):
        for value in it:
            got.append(value)
    assert got == [x * x for x in range(300)]
    with pytest.raises(LookupError, match="after 300 items"):
        execute(helpers.square, _input_failing_at(300), **where.kw, n_jobs=2, chunksize=7)
    # An item that fails before the input does is the error, as in a plain loop.
    with pytest.raises(ValueError, match="bad item 7"):
        execute(helpers.fail_on, _input_failing_at(20), **where.kw, n_jobs=2, chunksize=7)


def test_terminate_leaves_no_feeder_thread_and_no_pipe_open():
    # Workers busy, the call queue full and its feeder thread blocked writing a large item:
    # when terminate() returns, the pool's threads have ended and its pipes are closed.
    from autopar.backends.process import make_process_pool, terminate

    pool = make_process_pool(2, "fork", 1)
    futures = [pool.submit(time.sleep, 60) for _ in range(2)]
    futures += [pool.submit(len, b"x" * (8 << 20)) for _ in range(3)]
    deadline = time.monotonic() + 10
    while any(not f.running() for f in futures[:2]) and time.monotonic() < deadline:
        time.sleep(0.01)
    call_queue, result_queue = pool._call_queue, pool._result_queue
    manager, wakeup = pool._executor_manager_thread, pool._executor_manager_thread_wakeup
    feeder = call_queue._thread
    assert feeder is not None and feeder.is_alive()
    terminate(pool)
    assert not manager.is_alive() and not feeder.is_alive()
    pipes = [call_queue._reader, call_queue._writer, result_queue._reader, result_queue._writer]
    pipes += [wakeup._reader, wakeup._writer]
    assert [c.closed for c in pipes] == [True] * len(pipes)
    assert all(f.done() for f in futures)


def test_failing_process_runs_keep_no_pipes_open_for_the_garbage_collector():
    # A failed run's traceback holds the run's frames; no cycle through it (nor the workers'
    # Process objects, two pipe ends each) may wait for the collector.
    import gc

    def failing_run():
        with pytest.raises(ValueError, match="bad item 7"):
            execute(helpers.fail_on, range(20), executor_type="process", n_jobs=2, chunksize=1)

    failing_run()  # (imports, the resource tracker)
    me = psutil.Process()
    gc.collect()
    gc.disable()
    try:
        before = me.num_fds()
        for _ in range(30):
            failing_run()
        after = me.num_fds()
    finally:
        gc.enable()
    assert after <= before + 2, f"{after - before} more file descriptors after 30 failed runs"


@pytest.mark.matrix("thread", "process", cost="expensive")  # two pools a case
def test_a_failed_run_leaves_nothing_for_the_garbage_collector(where):
    # The exception's traceback holds the run (its input, results and pool): no cycle keeps
    # them once the caller lets the exception go.
    import gc
    import weakref

    class Items(list):
        pass  # (a list that a weak reference can watch)

    def failing_run():
        items = Items(range(20))
        try:
            execute(helpers.fail_on, items, **where.kw, n_jobs=2, chunksize=1)
        except ValueError as exc:
            assert "bad item 7" in str(exc)
        return weakref.ref(items)

    failing_run()  # (imports, the resource tracker)
    gc.collect()
    gc.disable()
    try:
        gone = failing_run()() is None
    finally:
        gc.enable()
    assert gone, "the failed run's input is kept until the garbage collector runs"


def _forever():
    i = 0
    while True:
        yield i
        i += 1


@pytest.mark.matrix("thread", "process", cost="expensive")  # its workers killed mid-chunk
def test_an_iterator_let_go_after_a_break_stops_its_pool(where):
    import gc

    me = psutil.Process()

    def started() -> tuple[set[int | None], set[int]]:
        return {t.ident for t in threading.enumerate()} - threads, {p.pid for p in me.children()} - kids

    threads, kids = {t.ident for t in threading.enumerate()}, {p.pid for p in me.children()}
    it = autopar.execute_iter(helpers.square, _forever(), **where.kw, n_jobs=2, chunksize=7)
    for value in it:
        break
    assert value == 0 and started() != (set(), set())  # the pool is up
    gc.disable()  # no cycle to wait for: dropping the last reference is enough
    try:
        del it
        deadline = time.monotonic() + 10
        while started() != (set(), set()) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        gc.enable()
    assert started() == (set(), set())


def test_blocks_read_after_the_iterator_is_let_go_run_to_the_end():
    blocks = autopar.execute_iter(helpers.square, range(100), executor_type="thread", n_jobs=2, chunksize=7).blocks()
    assert [x for block in blocks for x in block] == [x * x for x in range(100)]
