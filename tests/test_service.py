"""The service API: routing, counts, retries by a fake clock, the breaker, cancellation, time
limits, the fallback to threads, throttling, the loop never blocked, and nothing left behind."""

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


def stuck(seconds: float) -> None:
    """A call SIGALRM cannot reach (as one long call into C would be)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    time.sleep(seconds)


def die() -> None:
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
def manager():
    m = Manager(cpu_workers=2, io_workers=4, throttle=False)
    yield m
    m.shutdown()


def test_clear_cut_functions_are_routed_by_what_they_measured(manager):
    for _ in range(3):
        assert manager.submit(nap, 0.01).result() == 0.01
        assert manager.submit(spin, 0.02).result() > 0
        assert manager.submit(square, 7).result() == 49
    routes = manager.routes_info()
    assert routes["nap"]["lane"] == "thread" and "waits" in routes["nap"]["why"]
    assert routes["spin"]["lane"] == "process" and "GIL" in routes["spin"]["why"]
    assert routes["square"]["lane"] == "inline"
    stats = manager.stats()
    assert stats["cpu"]["completed"] >= 1  # spin went to the processes after its first call
    assert stats["inline"]["completed"] >= 1
    assert sum(s["completed"] for s in stats.values()) == 9


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


def test_a_waiting_call_never_starts_and_a_running_one_is_stopped():
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

    with Manager(cpu_workers=1, io_workers=1, throttle=False) as m:
        took = asyncio.run(main(m))
        assert ran == ["first"]
        assert took < 20
        assert m.stats()["io"]["cancelled"] == 1 and m.stats()["cpu"]["cancelled"] == 1


def test_time_limits_stop_calls_even_stuck_ones(manager):
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


def test_a_worker_that_dies_fails_its_own_call_only(manager):
    beside = manager.submit_cpu(nap, 0.5)
    time.sleep(0.1)
    with pytest.raises(WorkerDied, match="died while running it"):
        manager.submit_cpu(die).result(timeout=15)
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
        "    print(any('cannot be started' in str(x.message) for x in w))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["499500", "45", "2", "0", "True"], out.stdout


def test_the_event_loop_is_never_blocked():
    async def main(m):
        lag = [0.0]
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.01)
                lag[0] = max(lag[0], time.perf_counter() - t0 - 0.01)

        tick = asyncio.ensure_future(ticker())
        work = [m.run_cpu(spin, 0.2) for _ in range(4)] + [m.run_io(nap, 0.2) for _ in range(8)]
        work += [m.run(spin, 0.1) for _ in range(4)]
        await asyncio.gather(*work)
        out = await m.map(square, range(2000))
        stop.set()
        await tick
        return lag[0], out

    with Manager(cpu_workers=2, io_workers=4, throttle=False) as m:
        lag, out = asyncio.run(main(m))
    assert out == [x * x for x in range(2000)]
    assert lag < 0.15, f"the loop stalled {lag:.3f} s"


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


def _hog(stop):
    while not stop.is_set():
        pass


@pytest.mark.slow
def test_a_cpu_hog_throttles_admission_and_its_end_lifts_it():
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    stop = ctx.Event()
    with Manager(cpu_workers=2, io_workers=8, throttle=True) as m:
        hogs = [ctx.Process(target=_hog, args=(stop,)) for _ in range(autopar.usable_cores())]
        for h in hogs:
            h.start()
        try:
            deadline = time.monotonic() + 10
            while m.throttle.factor == 1.0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert m.throttle.factor < 1.0 and m.gates["thread"].limit < 8, m.throttle.reason
        finally:
            stop.set()
            for h in hogs:
                h.join(10)
        deadline = time.monotonic() + 10
        while m.throttle.factor < 1.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert m.throttle.factor == 1.0 and m.gates["thread"].limit == 8


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
