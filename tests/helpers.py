"""Functions the tests send to pools: importable, so every start method can run them."""

from __future__ import annotations

import os
import signal
import threading
import time


def square(x: int) -> int:
    return x * x


def fail_on(x: int, bad: int = 7) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def fail_every(x: int, period: int = 9973) -> int:
    """Fails on items 5, 5 + period, 5 + 2 * period, ...: failures spread over a long job."""
    if x % period == 5:
        raise ValueError(f"bad item {x}")
    return x + 1


class Unpicklable:
    """An item no serializer can send (it holds a lock)."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.lock = threading.Lock()


def value_of(obj: Unpicklable) -> int:
    return obj.value


def blas_threads(_: object) -> int:
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    info = threadpool_info()
    return min((p["num_threads"] for p in info), default=-1)


def blas_threads_after_busy(_: object) -> int:
    """Two milliseconds of computing, then the BLAS threads this item saw."""
    return _busy_then_blas(0.002)


def blas_threads_after_nap(_: object) -> int:
    """Two milliseconds of waiting and one of computing, then the BLAS threads it saw."""
    time.sleep(0.002)
    return _busy_then_blas(0.001)


def _busy_then_blas(seconds: float) -> int:
    t0 = time.thread_time()
    while time.thread_time() - t0 < seconds:
        pass
    return blas_threads(None)


def spin_wall(seconds: float) -> float:
    """Computes for ``seconds`` of wall time, however the machine shares its cores."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def hash_blocks(n: int) -> str:
    """Hashes ``n`` blocks of 1 MB with the GIL released (hashlib lets it go for buffers over
    2 KB): computing work that threads run at once."""
    import hashlib

    h = hashlib.sha256()
    block = b"\1" * (1 << 20)
    for _ in range(n):
        h.update(block)
    return h.hexdigest()[:8]


def wait_then_busy(n: int) -> int:
    """Waits 4 ms, then runs a pure-Python loop of ``n`` steps holding the GIL: mixed work
    whose computing part threads cannot run at once."""
    time.sleep(0.004)
    return busy(n)


def spin_big_result(seconds: float) -> bytes:
    """Computes for ``seconds`` of wall time and returns 2 MB, which costs to pickle."""
    spin_wall(seconds)
    return b"\1" * (2 << 20)


def busy(n: int) -> int:
    total = 0
    for i in range(n):
        total += i % 7
    return total


def pid(_: object) -> int:
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def crash(x: int, bad: int = 5, how: str = "exit") -> int:
    """Ends its worker process on item ``bad``: os._exit, SIGKILL or a segfault."""
    if x == bad:
        if how == "exit":
            os._exit(3)
        if how == "kill":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if how == "segv":
            import faulthandler

            faulthandler.disable()  # no dump on stderr: the crash is the test
            import ctypes

            ctypes.string_at(0)
    return x


def crash_exit(x: int) -> int:
    return crash(x, how="exit")


def crash_kill(x: int) -> int:
    return crash(x, how="kill")


def crash_segv(x: int) -> int:
    return crash(x, how="segv")


def hang(x: int, bad: int = 3, seconds: float = 30.0) -> int:
    """Sleeps far past any timeout on item ``bad``."""
    if x == bad:
        time.sleep(seconds)
    return x


HANG_DONE = threading.Event()  # set when hang_briefly's stuck call returns (threads only)


def hang_briefly(x: int) -> int:
    """Stuck for 1.5 s on item 3: long enough to time out, short enough to end by itself
    (HANG_DONE is set when the call ends, by returning or by the time limit raised into it
    as the sleep returns)."""
    try:
        return hang(x, seconds=1.5)
    finally:
        if x == 3:
            HANG_DONE.set()


def blocks_signals(x: int, bad: int = 3) -> int:
    """Stuck where SIGALRM cannot reach (the way C code that masks signals is)."""
    if x == bad:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(30)
    return x


def blocks_alarm_and_term(x: int, bad: int = 0) -> int:
    """Stuck where neither SIGALRM nor SIGTERM reaches (only SIGKILL ends its worker)."""
    if x == bad:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
        time.sleep(60)
    return x


class BadResult:
    def __init__(self) -> None:
        self.lock = threading.Lock()


def bad_result(x: int) -> object:
    return BadResult() if x == 4 else x


def lock_result(x: int) -> object:
    return BadResult()


def square_or_value(x: "int | Unpicklable") -> int:
    return x.value if isinstance(x, Unpicklable) else x * x


def sleep_tagged(item: "tuple[int, float]") -> int:
    """Sleeps the item's seconds and returns its index: a lost or repeated item shows."""
    index, seconds = item
    if seconds:
        time.sleep(seconds)
    return index


def spin_on_helper_thread(seconds: float) -> float:
    """Waits for a thread it starts itself, which computes: the function's own CPU."""

    def spin() -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    t = threading.Thread(target=spin)
    t.start()
    t.join()
    return seconds



def threads_not_pythons(_: object) -> int:
    """Threads of this process that Python did not start (a BLAS pool's, once started)."""
    from autopar.tune.measure import native_threads

    return native_threads()


def stop_at(x: int, bad: int = 3) -> int:
    """Raises StopIteration for item ``bad``: a failure like any other, not the end of the items."""
    if x == bad:
        raise StopIteration(f"item {x}")
    return x + 1


def slower_off_main(x: int | Unpicklable) -> tuple[int, int]:
    """4 ms of waiting on a process's main thread, 8 ms on any other thread: a thread pool
    that delivers half of what a pool of processes does, whatever the machine. Returns the
    item (an :class:`Unpicklable`'s value) and the process it ran in."""
    x = getattr(x, "value", x)
    time.sleep(0.004 if threading.current_thread() is threading.main_thread() else 0.008)
    return x, os.getpid()


def slower_in_children(item: tuple[int, int]) -> tuple[int, int]:
    """Item ``(x, parent_pid)``: 4 ms of waiting in the parent process, 8 ms in any other:
    a process pool that delivers less than the parent's threads. Returns x and the process."""
    x, parent = item
    time.sleep(0.004 if os.getpid() == parent else 0.008)
    return x, os.getpid()


def sleep_first(x: int) -> int:
    """Item 0 sleeps 30 s (a time limit must stop it); the others return at once."""
    if x == 0:
        time.sleep(30)
    return x


def spin_tagged(item: "tuple[int, float]") -> int:
    """Computes for its item's seconds of wall time and returns its index, so that a lost or
    repeated item shows."""
    index, seconds = item
    spin_wall(seconds)
    return index


def sigint_on() -> None:
    """``preexec_fn`` for a child a test interrupts: Ctrl-C raises KeyboardInterrupt there even
    where the test run itself started with SIGINT ignored (a shell's background job, nohup),
    which a child would inherit, and Python then installs no handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class CtrlCFrom:
    """Wraps ``func`` so that its first call on a thread whose name starts with ``prefix``
    presses Ctrl-C (a real SIGINT to the main thread), ``delay`` seconds into that call; every
    call is counted. ``run(call)`` runs ``call()`` with Python's own SIGINT handler (a test run
    may have started with SIGINT ignored) and says whether it raised KeyboardInterrupt;
    ``assert_none_after(n)`` checks that the press came, that no call started once ``run``
    returned (of ``n`` items) and that no autopar thread is left."""

    def __init__(self, func, prefix: str, delay: float = 0.0) -> None:
        self.func, self.prefix, self.delay = func, prefix, delay
        self.calls: list = []
        self.pressed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, x):
        with self._lock:
            self.calls.append(x)
            press = threading.current_thread().name.startswith(self.prefix) and not self.pressed.is_set()
            if press:
                self.pressed.set()
        if press:
            if self.delay:
                time.sleep(self.delay)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return self.func(x)

    def run(self, call) -> bool:
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            call()
        except KeyboardInterrupt:
            return True
        finally:
            signal.signal(signal.SIGINT, old)
        return False

    def assert_none_after(self, n_items: int) -> None:
        ran = len(self.calls)
        time.sleep(0.3)
        assert self.pressed.is_set(), f"no call ran on a thread named {self.prefix}*"
        assert len(self.calls) == ran < n_items  # nothing started after the interrupt returned
        assert not [t.name for t in threading.enumerate() if t.name.startswith("autopar-")]
