"""The service API: routing, counts, retries by a fake clock, the breaker, cancellation, time
limits, the fallback to threads, throttling, the loop never blocked, and nothing left behind.

Tests of the process lane run it under each start method: the suite's executor x
start-method matrix (``where``, process cases: tests/conftest.py); those that wait on their
workers for seconds or replace them on the matrix's expensive subset."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import random
import signal
import threading
import time

import pytest

import autopar
from autopar import CircuitBreaker, CircuitOpen, ItemTimeout, Manager, Retry, WorkerDied
from autopar.service.policy import Timer
from autopar.service.throttle import Load, Throttle



def spin(seconds: float) -> int:
    """Pure Python for ``seconds`` (holds the GIL)."""
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += 1
    return n


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def square(x: int) -> int:
    return x * x


def fail_on(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def bad(x: int) -> int:
    raise ValueError(f"bad item {x}")


def stuck(seconds: float) -> None:
    """A call SIGALRM cannot reach (as one long call into C would be)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    time.sleep(seconds)


# The test run's own process, as its workers see it too (a spawned worker imports this
# module afresh, and inherits the environment).
os.environ.setdefault("AUTOPAR_TESTS_PID", str(os.getpid()))


def die() -> None:
    if os.getpid() == int(os.environ["AUTOPAR_TESTS_PID"]):  # a failure, not the run's end
        raise RuntimeError("die() ran in the test process, not in a worker")
    os._exit(3)


def pid() -> int:
    return os.getpid()


class FakeTimer:
    """The manager's timer on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, object]] = []
        self.delays: list[float] = []

    def call_later(self, delay, callback):
        self.delays.append(delay)
        self.due.append((self.now + delay, callback))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        ready = [cb for t, cb in self.due if t <= self.now]
        self.due = [(t, cb) for t, cb in self.due if t > self.now]
        for cb in ready:
            cb()

    def close(self):
        left, self.due = [cb for _, cb in self.due], []
        return left


@pytest.fixture
def manager(request):
    """A manager of 2 processes and 4 threads; its process lane under the test's start
    method where the test takes the matrix (``where``), else the default."""
    method = request.getfixturevalue("where").method if "where" in request.fixturenames else None
    m = Manager(cpu_workers=2, io_workers=4, throttle=False, start_method=method)
    yield m
    m.shutdown()


@pytest.mark.matrix("process")
def test_clear_cut_functions_are_routed_by_what_they_measured(where, manager):
    # What a call measures on any machine, loaded or not: a sleep uses no CPU, a
    # multiplication takes microseconds. How much CPU a loop gets depends on the load, so the
    # computing case is a profile handed to the router (below), sent to a real process.
    for _ in range(3):
        assert manager.submit(nap, 0.01).result() == 0.01
        assert manager.submit(square, 7).result() == 49
    routes = manager.routes_info()
    assert routes["nap"]["lane"] == "thread" and "waits" in routes["nap"]["why"]
    assert routes["square"]["lane"] == "inline"
    manager.routes.get(pid).observe(0.02, 0.02, True)  # measured: 20 ms, all of it computing
    assert manager.routes_info()["pid"]["lane"] == "process" and "GIL" in manager.routes_info()["pid"]["why"]
    assert manager.submit(pid).result(timeout=30) != os.getpid()
    stats = manager.stats()
    assert stats["cpu"]["completed"] == 1 and stats["inline"]["completed"] >= 1
    assert sum(s["completed"] for s in stats.values()) == 7


def test_the_routing_table_on_given_profiles():
    from autopar.service.routes import Route

    def route(func, wall, cpu, **facts):
        r = Route(func)
        r.observe(wall, cpu, True)
        for k, v in facts.items():
            setattr(r, k, v)
        return r.choose()

    assert route(spin, 0.02, 0.019)[0] == "process"
    lane, why = route(nap, 0.01, 0.0001)
    assert lane == "thread" and "waits" in why
    assert route(square, 2e-6, 2e-6)[0] == "inline"
    assert route(spin, 0.02, 0.02, gil_free=True)[0] == "thread"
    assert route(spin, 0.02, 0.02, ship_time=0.01)[0] == "thread"
    assert route(spin, 0.0005, 0.0005)[0] == "thread"  # a process round trip costs more
    lock = threading.Lock()
    lane, why = route(lambda: lock, 0.02, 0.02)
    assert lane == "thread" and "cannot be pickled" in why
    r = Route(square)
    r.observe(40e-6, 40e-6, True)  # a first call's one-time cost (a freshly forked process)
    r.observe(2e-6, 2e-6, True)
    assert r.choose()[0] == "inline" and r.wall == 2e-6
    r = Route(spin)
    r.observe(0.02, 0.02, False)  # beside other calls: its CPU share says nothing
    assert r.cpu_ratio is None and r.choose()[0] == "thread"


def test_what_a_map_measured_becomes_the_functions_route(manager):
    out = manager.map_sync(nap, [0.005] * 40)
    assert out == [0.005] * 40
    route = manager.routes_info()["nap"]  # no single call yet: map's sample made the route
    assert route["calls"] >= 1 and route["lane"] == "thread" and "waits" in route["why"]
    assert manager.stats()["inline"]["submitted"] + manager.stats()["io"]["submitted"] == 40


def test_counts_are_exact(manager):
    futs = [manager.submit_io(fail_on, x) for x in range(6)]
    done = [f.exception() for f in futs]
    assert sum(e is None for e in done) == 5 and isinstance(done[3], ValueError)
    s = manager.stats()["io"]
    assert (s["submitted"], s["completed"], s["failed"], s["cancelled"]) == (6, 5, 1, 0)
    assert s["success_rate"] == pytest.approx(5 / 6)
    assert s["max_concurrent"] <= 4 and s["avg_time"] > 0


def test_retries_back_off_exponentially_on_the_timer():
    timer = FakeTimer()
    attempts: list[int] = []

    def flaky(x):
        attempts.append(x)
        if len(attempts) < 3:
            raise OSError("not yet")
        return x

    with Manager(io_workers=2, throttle=False, timer=timer) as m:
        retry = Retry(attempts=4, backoff=0.1, max_backoff=0.15, jitter=0.0)
        fut = m.submit_io(flaky, 5, retry=retry)
        deadline = time.monotonic() + 10
        while len(timer.due) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(attempts) == 1 and not fut.done()  # waiting for the clock
        timer.advance(0.05)
        assert len(attempts) == 1  # not due yet
        timer.advance(0.05)
        while len(timer.due) < 1 and not fut.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        timer.advance(0.15)
        assert fut.result(timeout=10) == 5
        assert timer.delays == [0.1, 0.15]  # 0.1, then 0.2 capped at max_backoff
        assert m.stats()["io"]["retried"] == 2
        # Not retried: an exception outside ``on``.
        fut = m.submit_io(fail_on, 3, retry=Retry(attempts=5, on=(OSError,)))
        assert isinstance(fut.exception(timeout=10), ValueError)


def test_backoff_with_jitter_stays_within_its_bounds():
    r = Retry(attempts=6, backoff=0.1, max_backoff=1.0, jitter=0.5, rng=random.Random(7))
    delays = list(r.delays())
    assert len(delays) == 5
    for k, d in enumerate(delays, start=1):
        bound = min(1.0, 0.1 * 2 ** (k - 1))
        assert 0.5 * bound <= d <= bound
    assert not r.retries(cf.CancelledError(), 1) and not r.retries(asyncio.CancelledError(), 1)
    assert not r.retries(OSError(), 6) and r.retries(OSError(), 5)
    with pytest.raises(ValueError):
        Retry(attempts=0)


def test_the_breaker_opens_half_opens_and_closes():
    clock = [0.0]
    b = CircuitBreaker(failure_threshold=3, recovery_timeout=10, clock=lambda: clock[0], name="db")
    calls = []

    def boom():
        calls.append(1)
        raise OSError("down")

    for _ in range(3):
        with pytest.raises(OSError):
            b.call(boom)
    assert b.state == "open"
    with pytest.raises(CircuitOpen, match="'db' is open"):
        b.call(boom)
    assert len(calls) == 3  # refused without calling
    clock[0] = 10.0
    assert b.state == "half-open"
    b.check()  # the one trial
    with pytest.raises(CircuitOpen):
        b.check()  # a second caller meanwhile
    b.record(OSError("still down"))
    assert b.state == "open"
    clock[0] = 20.0
    assert b.call(lambda: 42) == 42 and b.state == "closed"

    async def ok():
        return 1

    assert asyncio.run(b.call_async(ok)) == 1


def test_the_manager_refuses_calls_at_once_while_a_breaker_is_open(manager):
    b = CircuitBreaker(failure_threshold=2, recovery_timeout=60)
    ran = []

    def down(x):
        ran.append(x)
        raise OSError("down")

    for x in range(2):
        assert isinstance(manager.submit_io(down, x, breaker=b).exception(timeout=10), OSError)
    fut = manager.submit_io(down, 9, breaker=b)
    assert fut.done() and isinstance(fut.exception(), CircuitOpen) and ran == [0, 1]


def test_the_managers_breaker_is_a_template_one_breaker_a_function():
    def down(x):
        raise OSError("down")

    with Manager(io_workers=2, throttle=False, breaker=CircuitBreaker(failure_threshold=2, recovery_timeout=60)) as m:
        for x in range(2):
            assert isinstance(m.submit_io(down, x).exception(timeout=10), OSError)
        assert isinstance(m.submit_io(down, 3).exception(timeout=10), CircuitOpen)
        assert m.submit_io(square, 3).result(timeout=10) == 9  # another function: its own, closed


@pytest.mark.matrix("process", cost="expensive")  # a worker killed and replaced
def test_a_waiting_call_never_starts_and_a_running_one_is_stopped(where):
    ran: list[str] = []
    gate = threading.Event()

    def hold(tag):
        ran.append(tag)
        gate.wait(10)
        return tag

    async def main(m):
        first = asyncio.ensure_future(m.run_io(hold, "first"))
        second = asyncio.ensure_future(m.run_io(hold, "second"))
        await asyncio.sleep(0.2)
        second.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        assert await first == "first"
        with pytest.raises(asyncio.CancelledError):
            await second
        # A running process call, stopped (a loop of pure Python in the worker).
        t0 = time.monotonic()
        task = asyncio.ensure_future(m.run_cpu(spin, 30.0))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await m.run_cpu(square, 3) == 9  # the pool still serves
        return time.monotonic() - t0

    with Manager(cpu_workers=1, io_workers=1, throttle=False, start_method=where.method) as m:
        took = asyncio.run(main(m))
        assert ran == ["first"]
        assert took < 20
        assert m.stats()["io"]["cancelled"] == 1 and m.stats()["cpu"]["cancelled"] == 1


def totals(m: Manager) -> tuple[int, int, int, int]:
    """(submitted, completed, failed, cancelled) over the three lanes."""
    s = m.stats().values()
    return tuple(sum(x[k] for x in s) for k in ("submitted", "completed", "failed", "cancelled"))  # type: ignore[return-value]


def test_cancelling_a_functions_first_call_while_it_waits_lets_its_other_calls_run():
    busy = threading.Event()

    def hold():
        busy.wait(10)

    def fresh(x):  # a function the manager has not seen: its first call measures it
        return x + 1

    def fresh_async(x):
        return x + 2

    with Manager(io_workers=1, throttle=False) as m:
        held = m.submit_io(hold)  # the one thread is taken: the first call of fresh waits
        first = m.submit(fresh, 1)
        second = m.submit(fresh, 2)  # waits for the first, which measures
        assert first.cancel()
        busy.set()
        assert second.result(timeout=10) == 3 and held.result(timeout=10) is None
        assert m.submit(fresh, 3).result(timeout=10) == 4
        route = m.routes.get(fresh)
        assert not route.probing and route.waiting == [] and route.calls >= 1
        assert totals(m) == (4, 3, 0, 1)

        async def main():  # the same through asyncio: wait_for cancels the waiting first call
            busy.clear()
            held = m.submit_io(hold)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(m.run(fresh_async, 1), 0.05)
            later = asyncio.ensure_future(m.run(fresh_async, 2))
            await asyncio.sleep(0)
            busy.set()
            assert held.result(timeout=10) is None
            return await asyncio.wait_for(later, 10)

        assert asyncio.run(main()) == 4
        assert totals(m) == (7, 5, 0, 2)
    # shutdown(wait=True) above returned: nothing was left waiting


def test_a_cancelled_half_open_trial_lets_the_next_call_be_the_trial():
    clock = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=10, clock=lambda: clock[0])
    started, release = threading.Event(), threading.Event()

    def down():
        raise OSError("down")

    def hold():
        started.set()
        release.wait(10)
        return "held"

    with Manager(io_workers=2, throttle=False) as m:
        assert isinstance(m.submit_io(down, breaker=breaker).exception(timeout=10), OSError)
        assert breaker.state == "open"
        clock[0] = 10.0  # half-open: one trial may go
        trial = m.submit_io(hold, breaker=breaker)
        assert started.wait(10)
        assert isinstance(m.submit_io(square, 2, breaker=breaker).exception(timeout=10), CircuitOpen)
        assert trial.cancel()  # cancelled, the trial tells nothing: the next call is the trial
        release.set()
        assert m.submit_io(square, 3, breaker=breaker).result(timeout=10) == 9
        assert breaker.state == "closed"
        # A trial cancelled while it waits for a thread does the same.
        clock[0] = 20.0
        assert isinstance(m.submit_io(down, breaker=breaker).exception(timeout=10), OSError)
        clock[0] = 30.0
        release.clear()
        started.clear()
        busy = [m.submit_io(hold), m.submit_io(hold)]  # both threads taken
        waiting = m.submit_io(square, 4, breaker=breaker)
        assert waiting.cancel()
        release.set()
        assert m.submit_io(square, 5, breaker=breaker).result(timeout=10) == 25
        assert [f.result(timeout=10) for f in busy] == ["held", "held"]


def test_a_thread_calls_time_limit_holds_while_it_waits_for_a_thread():
    timer = FakeTimer()
    release = threading.Event()
    ran: list[int] = []

    def slow(x):
        ran.append(x)
        release.wait(10)
        return x

    with Manager(io_workers=1, throttle=False, timer=timer) as m:
        # The lane's thread is busy with work the gate does not see (a map runs on the same
        # threads): the call is admitted, posted, and no thread takes it yet.
        beside = m.lanes["thread"].pool.submit(release.wait, 10)
        fut = m.submit_io(slow, 1, timeout=0.1)
        timer.advance(0.1)  # its limit passes while it waits
        assert isinstance(fut.exception(timeout=10), ItemTimeout)  # now, not when a thread comes
        release.set()
        assert beside.result(timeout=10) is True
        assert m.submit_io(square, 2).result(timeout=10) == 4  # its slot came back; it was skipped
        assert ran == []  # it never started
        assert m.stats()["io"]["timed_out"] == 1 and m.stats()["io"]["running"] == 0


def test_a_calls_time_limit_holds_while_it_waits_for_its_functions_first_call():
    # A new function's first call measures it; its other calls wait for that. A first call
    # stuck for long held each of them (and each next first call, stopped, told nothing).
    timer = FakeTimer()
    release = threading.Event()
    ran: list[int] = []

    def held(x):
        ran.append(x)
        release.wait(10)
        return x

    with Manager(io_workers=4, throttle=False, timer=timer) as m:
        first = m.submit(held, 0)
        waiting = [m.submit(held, i, timeout=0.1) for i in range(1, 4)]
        timer.advance(0.1)
        for fut in waiting:
            assert isinstance(fut.exception(timeout=10), ItemTimeout)  # now, not after the first call
        assert not first.done()
        release.set()
        assert first.result(timeout=10) == 0
        assert ran == [0]
        assert m.stats()["io"]["timed_out"] == 3


def test_an_endless_time_limit_is_no_limit_and_later_limits_still_hold():
    # A limit of 1e12 s reached the timer's thread as a wait it could not make (OverflowError):
    # the thread ended, and every later limit of that manager was ignored.
    with Manager(io_workers=2, throttle=False) as m:
        assert m.submit(square, 3, timeout=float("inf")).result(timeout=10) == 9
        assert m.submit(square, 4, timeout=1e12).result(timeout=10) == 16
    timer = Timer()
    fired = threading.Event()
    try:
        timer.call_later(1e12, lambda: None)
        timer.call_later(0.01, fired.set)
        assert fired.wait(10)
    finally:
        timer.close()
    with pytest.raises(ValueError, match="recovery_timeout"):
        CircuitBreaker(recovery_timeout=float("nan"))


def test_a_first_call_that_fails_at_once_does_not_route_its_function():
    # A fast failure measured as the function's first call sent the calls after it inline
    # (the caller's submit() ran a call that waits), then to processes ("computes").
    release = threading.Event()

    def fetch(x):
        if x == "down":
            raise OSError("down")
        release.wait(2)
        time.sleep(0.005)  # (waits, every call)
        return x

    with Manager(io_workers=2, throttle=False) as m:
        with pytest.raises(OSError):
            m.submit(fetch, "down").result(timeout=10)
        fut = m.submit(fetch, 1)
        assert not fut.done()  # on a thread, not run by submit()
        release.set()
        assert fut.result(timeout=10) == 1
        assert [m.submit(fetch, i).result(timeout=10) for i in range(3)] == [0, 1, 2]
        route = next(v for k, v in m.routes_info().items() if k.endswith("fetch"))
        assert route["lane"] == "thread" and route["cpu_ratio"] < 0.25, route  # from its returns alone


def touch(path: str) -> str:
    open(path, "w").close()
    return path


@pytest.mark.matrix("process", cost="expensive")  # its worker busy for a second
def test_a_process_calls_time_limit_holds_while_it_waits_for_a_worker(where, tmp_path):
    timer = FakeTimer()  # the kill at the limit + grace never comes: the worker keeps the limit
    with Manager(cpu_workers=1, throttle=False, timer=timer, start_method=where.method) as m:
        # The one worker is busy with work the gate does not see (a map runs on the same pool)
        # for far longer than the call's limit (five times: a sleep, however loaded the
        # machine): the call waits in the pool's queue meanwhile.
        beside = m.lanes["process"]._current().executor.submit(time.sleep, 1.0)
        fut = m.submit_cpu(touch, str(tmp_path / "ran"), timeout=0.2)
        assert isinstance(fut.exception(timeout=30), ItemTimeout)
        assert beside.result(timeout=30) is None
        assert not (tmp_path / "ran").exists()  # it never started
        assert m.submit_cpu(touch, str(tmp_path / "next")).result(timeout=30)  # the worker serves
        assert m.stats()["cpu"]["timed_out"] == 1


def test_map_counts_are_exact(manager):
    release = threading.Event()

    def gated(x):
        if x >= 20:
            release.wait(10)
        return x

    async def cancel_a_map():
        task = asyncio.ensure_future(manager.map(gated, range(200)))
        for _ in range(5):
            await asyncio.sleep(0.01)
        task.cancel()  # it cannot have finished: item 20 on waits for the release
        await asyncio.sleep(0)  # the task takes the cancellation (it is first in the loop's queue): the map stops
        await asyncio.sleep(0)
        release.set()  # the items go on; the map ends at its next result
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_a_map())
    submitted, completed, failed, cancelled = totals(manager)
    assert submitted == 200 and failed == 0 and completed < 200 and completed + cancelled == 200
    before = totals(manager)
    with pytest.raises(ValueError, match="bad item"):  # every item fails: the sample's first does
        manager.map_sync(bad, range(4))
    assert tuple(b - a for a, b in zip(before, totals(manager))) == (4, 0, 1, 3)
    before = totals(manager)
    out = manager.map_sync(fail_on, range(6), errors="collect")
    assert isinstance(out[3], autopar.ItemFailed)
    assert tuple(b - a for a, b in zip(before, totals(manager))) == (6, 5, 1, 0)


@pytest.mark.matrix("process", cost="expensive")  # a worker killed and replaced
def test_time_limits_stop_calls_even_stuck_ones(where, manager):
    with pytest.raises(ItemTimeout):
        manager.submit_cpu(nap, 10, timeout=0.3).result(timeout=10)
    # Stuck where the alarm cannot reach: its worker is killed; a call beside it runs again.
    other = manager.submit_cpu(nap, 0.5)
    fut = manager.submit_cpu(stuck, 20, timeout=0.3)
    with pytest.raises(ItemTimeout):
        fut.result(timeout=15)
    assert other.result(timeout=15) == 0.5
    assert manager.submit_cpu(square, 4).result(timeout=15) == 16
    assert manager.stats()["cpu"]["timed_out"] == 2
    with pytest.raises(ItemTimeout):
        manager.submit_io(spin, 10, timeout=0.3).result(timeout=10)  # on a thread


@pytest.mark.matrix("process", cost="expensive")  # a worker dies and is replaced
def test_a_worker_that_dies_fails_its_own_call_only(where, manager):
    beside = manager.submit_cpu(nap, 0.5)
    time.sleep(0.1)
    with pytest.raises(WorkerDied, match=r"died while running it \(worker \d+ exited with status 3\)"):
        manager.submit_cpu(die).result(timeout=15)  # how it ended, as execute() says it
    assert beside.result(timeout=15) == 0.5
    assert manager.submit_cpu(square, 5).result(timeout=15) == 25
    # The crash was blamed on its own call: the others ran again in processes, not on threads.
    assert manager.lanes["process"].unusable is None
    assert manager.stats()["cpu"]["completed"] == 2 and manager.stats()["io"]["submitted"] == 0


def test_what_cannot_be_pickled_runs_on_threads_with_a_warning(manager):
    lock = threading.Lock()

    def locked(x):
        with lock:
            return x + 1

    with pytest.warns(RuntimeWarning, match="runs on threads"):
        assert manager.submit_cpu(locked, 1).result(timeout=10) == 2
    with pytest.warns(RuntimeWarning, match="arguments cannot be pickled"):
        assert manager.submit_cpu(type, threading.Lock()).result(timeout=10) is type(threading.Lock())


def test_where_no_process_can_start_cpu_calls_run_on_threads(tmp_path):
    # A real failure to start a worker: the interpreter to spawn does not exist.
    script = tmp_path / "noproc.py"
    script.write_text(
        "import multiprocessing as mp, warnings\n"
        "mp.set_executable('/nonexistent/python')\n"
        "import autopar\n"
        "def work(x):\n"
        "    return sum(range(x))\n"
        "if __name__ == '__main__':\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        with autopar.Manager(start_method='spawn', throttle=False) as m:\n"
        "            print(m.submit_cpu(work, 1000).result(timeout=60), m.submit_cpu(work, 10).result(timeout=60))\n"
        "            print(m.stats()['io']['completed'], m.stats()['cpu']['submitted'])\n"
        # Which way it shows depends on timing: the start fails at submit, or the workers die
        # before serving a call (the pool breaks twice); either way the calls run on threads.
        "    print(any(('cannot be started' in str(x.message) or 'die before serving a call' in str(x.message))\n"
        "              and 'runs on threads' in str(x.message) for x in w))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["499500", "45", "2", "0", "True"], out.stdout


def until(path: str) -> bool:
    """Waits (up to 30 s) for ``path`` to exist: True once it does."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.matrix("process")
def test_the_event_loop_is_never_blocked(where, tmp_path):
    # Every kind of call waits for a file that only the event loop makes, after the calls
    # are out: a call that held the loop would wait in vain (False), on any machine.
    flag = str(tmp_path / "go")

    async def main(m):
        calls = [m.run_cpu(until, flag), m.run_io(until, flag), m.run(until, flag), m.map(until, [flag] * 20)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        for _ in range(10):
            await asyncio.sleep(0.01)
        open(flag, "w").close()
        return await asyncio.gather(*tasks)

    with Manager(cpu_workers=2, io_workers=4, throttle=False, start_method=where.method) as m:
        out = asyncio.run(main(m))
    assert out == [True, True, True, [True] * 20]


def test_as_completed_yields_every_index_and_leaving_early_cancels_the_rest(manager):
    async def main():
        seen = {}
        async for i, y in manager.as_completed(square, range(50)):
            seen[i] = y
        assert seen == {i: i * i for i in range(50)}
        got = 0
        async for _ in manager.as_completed(nap, [0.05] * 40):
            got += 1
            if got == 3:
                break
        with pytest.raises(ValueError) as err:
            async for _ in manager.as_completed(fail_on, range(6)):
                pass
        assert err.value.autopar_item_index == 3

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while manager.stats()["io"]["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert manager.stats()["io"]["running"] == 0


def test_map_keeps_order_and_names_a_failing_item(manager):
    assert manager.map_sync(square, range(300)) == [x * x for x in range(300)]
    with pytest.raises(ValueError, match="bad item 3"):
        manager.map_sync(fail_on, range(10))
    out = manager.map_sync(fail_on, range(6), errors="collect")
    assert isinstance(out[3], autopar.ItemFailed) and out[5] == 5


def test_the_throttle_follows_the_load():
    heard = []
    t = Throttle(85, 80, listener=heard.append)
    assert t.update(Load(cpu=40, others=30, memory=50)) == 1.0
    t.update(Load(cpu=100, others=95, memory=50))
    assert t.update(Load(cpu=100, others=95, memory=50)) < 0.1 and "other processes" in t.reason
    # Its own work does not throttle the manager.
    t.update(Load(cpu=100, others=5, memory=50))
    assert t.update(Load(cpu=100, others=5, memory=50)) == 1.0
    t.update(Load(cpu=10, others=5, memory=90))
    assert t.update(Load(cpu=10, others=5, memory=90)) == 0.5 and "memory" in t.reason
    assert heard and heard[-1] == 0.5


def test_thresholds_from_the_environment(monkeypatch):
    monkeypatch.setenv("AUTOPAR_CPU_THRESHOLD", "60")
    monkeypatch.setenv("AUTOPAR_MEMORY_THRESHOLD", "95")
    t = Throttle()
    assert (t.cpu_threshold, t.memory_threshold) == (60.0, 95.0)
    monkeypatch.setenv("AUTOPAR_CPU_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="AUTOPAR_CPU_THRESHOLD"):
        Throttle()


def test_the_throttle_admits_fewer_calls_and_lifting_it_admits_the_waiting_ones():
    started = [threading.Event() for _ in range(4)]
    release = threading.Event()

    def hold(i):
        started[i].set()
        release.wait(10)
        return i

    with Manager(io_workers=8, throttle=False) as m:
        for load in (Load(cpu=100, others=95, memory=50),) * 2:  # others use 95% of the machine
            m.throttle.update(load)
        assert m.throttle.factor < 0.1 and m.gates["thread"].limit == 1
        futs = [m.submit_io(hold, i) for i in range(4)]
        assert started[0].wait(10)
        assert (m.gates["thread"].running, m.gates["thread"].waiting) == (1, 3)
        for load in (Load(cpu=20, others=10, memory=50),) * 2:  # the load went
            m.throttle.update(load)
        assert m.throttle.factor == 1.0 and m.gates["thread"].limit == 8
        assert all(e.wait(10) for e in started)  # the waiting calls started at once, beside the first
        assert m.gates["thread"].running == 4
        release.set()
        assert [f.result(timeout=10) for f in futs] == [0, 1, 2, 3]


def _burn(seconds, ready, go, done, leave):
    """Use ``seconds`` of CPU time once told, then stay (its CPU time stays readable)."""
    ready.set()
    go.wait(30)
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    done.set()
    leave.wait(30)


def test_the_load_counts_the_managers_workers_as_its_own_and_other_processes_as_others():
    # On CPU time, not speed: a worker's 0.2 s counts as the manager's own, another
    # process's 0.6 s (a child of this process too, as a hog in a test is) does not.
    import multiprocessing as mp

    from autopar.service.throttle import _Sampler

    ctx = mp.get_context("fork")
    go, leave = ctx.Event(), ctx.Event()
    ready = [ctx.Event(), ctx.Event()]
    done = [ctx.Event(), ctx.Event()]
    procs = [ctx.Process(target=_burn, args=(t, ready[i], go, done[i], leave)) for i, t in enumerate((0.2, 0.6))]
    for p in procs:
        p.start()
    try:
        assert all(e.wait(30) for e in ready)
        sampler = _Sampler(workers=lambda: [procs[0].pid])
        own0 = sampler.last[2]
        go.set()
        assert all(e.wait(60) for e in done)
        own = sampler._own_cpu() - own0
        assert 0.15 <= own < 0.5, own
        load = sampler.sample()
        assert 0.0 <= load.others <= load.cpu <= 100.0 and 0.0 < load.memory <= 100.0
    finally:
        leave.set()
        for p in procs:
            p.join(10)


def test_shutdown_stops_everything_and_refuses_new_calls():
    m = Manager(cpu_workers=1, io_workers=1, throttle=False)
    running = m.submit_io(spin, 30)
    waiting = m.submit_io(nap, 0.01)
    time.sleep(0.2)
    t0 = time.monotonic()
    m.shutdown(wait=False)
    assert time.monotonic() - t0 < 5
    assert waiting.cancelled() and running.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        m.submit(square, 1)
    m.shutdown()  # again: nothing to do


def test_the_process_wide_manager():
    m = autopar.get_manager()
    try:
        assert autopar.get_manager() is m
        assert m.submit(square, 6).result(timeout=10) == 36
    finally:
        m.shutdown()
    assert autopar.get_manager() is not m
    autopar.get_manager().shutdown()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="cpu_workers"):
        Manager(cpu_workers=0, throttle=False)
    with pytest.raises(TypeError, match="retry="):
        Manager(retry=3, throttle=False)
    with Manager(throttle=False) as m:
        with pytest.raises(TypeError, match="callable"):
            m.submit(42)
        with pytest.raises(ValueError, match="timeout"):
            m.submit(square, 1, timeout=-1)


# ---- on every supported Python: public APIs only, no fork beside the manager's threads ------


def _stdlib_privates() -> set[str]:
    """The private attributes of the stdlib objects the service works with (a Future, a thread
    pool, a process pool), as this Python has them: none may be read or written."""
    names = set()
    pools = [cf.ThreadPoolExecutor(1), cf.ProcessPoolExecutor(1)]
    for obj in [cf.Future(), *pools]:
        names |= set(vars(obj))
        names |= {n for klass in type(obj).__mro__ if klass is not object for n in vars(klass)}
    for pool in pools:
        pool.shutdown()
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_the_service_uses_no_private_name_of_the_standard_library():
    import ast
    import pathlib

    import autopar.service

    privates = _stdlib_privates()
    assert {"_state", "_waiters", "_work_queue", "_broken"} <= privates  # what it looks for
    found = []
    for path in sorted(pathlib.Path(autopar.service.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in privates:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if any(part.startswith("_") and not part.startswith("__") for part in node.module.split(".")) or any(a.name.startswith("_") for a in node.names):
                    if not node.module.startswith("autopar"):
                        found.append(f"{path.name}:{node.lineno} from {node.module}")
    assert not found, found


class _Unusable:
    def __init__(self, *args, **kwargs):
        raise AssertionError("the stdlib's thread pool machinery was used")


def test_the_thread_lane_needs_no_stdlib_work_item_nor_worker_loop(monkeypatch):
    # Whatever a Python version's ThreadPoolExecutor does inside (3.14's worker loop calls
    # ``work_item.run(ctx)``), the lane does not go through it: calls, a map on the lane's
    # threads, a time limit and a cancel work with both replaced by things that fail.
    import concurrent.futures.thread as stdlib_thread

    from autopar.tune.costs import pool_costs

    pool_costs()  # optimize()'s measure of pools (stdlib ones, not the lane's), taken first
    monkeypatch.setattr(stdlib_thread, "_WorkItem", _Unusable)
    monkeypatch.setattr(stdlib_thread, "_worker", _Unusable)
    release = threading.Event()
    started: list[int] = []

    def take(x):
        started.append(x)
        release.wait(10)
        return x

    with Manager(io_workers=2, throttle=False) as m:
        assert m.submit_io(square, 4).result(timeout=10) == 16
        futs = [m.submit_io(take, x) for x in range(6)]
        cancelled = m.submit_io(take, 99)
        assert cancelled.cancel() and cancelled.cancel()  # twice: the same answer, counted once
        deadline = time.monotonic() + 10
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sorted(started) == [0, 1]  # the first two, on the lane's two threads; the rest wait
        release.set()
        assert [f.result(timeout=10) for f in futs] == list(range(6))
        assert sorted(started) == list(range(6))
        with pytest.raises(ItemTimeout):
            m.submit_io(spin, 10, timeout=0.2).result(timeout=10)
        s = m.stats()["io"]
        assert (s["completed"], s["failed"], s["cancelled"], s["timed_out"]) == (7, 1, 1, 1)
        beside = m.lanes["thread"].pool.submit(square, 5)  # execute()'s way onto the lane
        assert beside.result(timeout=10) == 25
        assert m.map_sync(nap, [0.002] * 30, executor_type="thread", n_jobs=2) == [0.002] * 30
        assert m.stats()["io"]["completed"] == 7 + 30
        threads = [t for t in threading.enumerate() if t.name.startswith("autopar-io")]
        assert 1 <= len(threads) <= 2  # the lane's limit


def test_a_call_is_cancelled_once_whatever_its_state_and_says_so():
    release = threading.Event()
    with Manager(io_workers=1, throttle=False) as m:
        running = m.submit_io(release.wait, 10)
        waiting = m.submit_io(square, 3)
        deadline = time.monotonic() + 10
        while not running.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert running.running() and not waiting.running()
        for fut in (running, waiting):
            assert fut.cancel() and fut.cancel() and fut.cancelled() and fut.done()
        done, _ = cf.wait([running, waiting], timeout=10)  # wait() is woken by a cancel
        assert done == {running, waiting}
        release.set()
        assert m.submit_io(square, 4).result(timeout=10) == 16
        finished = m.submit_io(square, 5)
        assert finished.result(timeout=10) == 25 and not finished.cancel() and not finished.running()
        assert m.stats()["io"]["cancelled"] == 2 and "finished" in repr(finished)


def test_no_fork_while_the_managers_threads_run(monkeypatch):
    # On 3.12+ such a fork warns (DeprecationWarning: "This process ... is multi-threaded");
    # on every version it is what the manager must not do: each fork this process makes is
    # checked for other threads running at that moment.
    import warnings

    forks: list[int] = []
    real_fork = os.fork

    def fork():
        forks.append(threading.active_count())
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    alone = threading.active_count() == 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with Manager(cpu_workers=2, io_workers=2, throttle=True, start_method="fork") as m:
            # forked before its first thread where nothing else ran; forkserver otherwise
            assert m.lanes["process"].method() == ("fork" if alone else "forkserver")
            assert m.submit_io(nap, 0.01).result(timeout=30) == 0.01
            assert m.submit_cpu(pid).result(timeout=60) != os.getpid()
            assert m.submit_cpu(square, 6).result(timeout=60) == 36
            assert m.map_sync(square, range(200)) == [x * x for x in range(200)]  # optimize()'s measuring too
            # a pool replacing a broken one, made while the manager's threads run
            with pytest.raises(WorkerDied):
                m.submit_cpu(die).result(timeout=60)
            assert m.submit_cpu(square, 7).result(timeout=60) == 49
            assert m.lanes["process"].method() == "forkserver"
    assert all(n == 1 for n in forks), forks
    assert not [w for w in seen if "multi-threaded" in str(w.message)]
