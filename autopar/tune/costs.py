"""Pool costs on this machine (start, round trip, CPU a task on a full machine, bytes moved),
measured with real pools once per machine, Python and start method, cached as JSON in the
user's cache directory (``AUTOPAR_CACHE_DIR`` overrides it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing as mp
import os
import platform
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

from .._atomic import atomic_write
from .measure import rss
from .system import START_METHODS, default_start_method, usable_cores

__all__ = ["PoolCosts", "cache_dir", "pool_costs"]

_COSTS_VERSION = 7


@dataclass(frozen=True)
class PoolCosts:
    """Measured costs of the pools on this machine, for one start method.

    Seconds. ``*_start``: creating the pool, every worker's first task and the shutdown.
    ``process_task_overhead``: wall time per pipelined task; ``process_task_cpu``: core time
    a task costs when the workers fill every core; ``thread_chunk_cost``: one more chunk of
    autopar's own thread run; ``process_fork_per_byte``: a forked worker's start and exit per
    byte the parent holds beyond ``measured_rss`` (:meth:`for_parent` applies it).
    """

    start_method: str
    process_start_base: float
    process_start_per_worker: float
    process_task_overhead: float
    process_task_cpu: float
    process_seconds_per_byte: float
    process_worker_memory: int
    thread_start_base: float
    thread_start_per_worker: float
    thread_task_overhead: float
    thread_chunk_cost: float
    process_fork_per_byte: float
    measured_rss: int
    measured_at: float
    measure_time: float

    def process_start(self, n_jobs: int) -> float:
        return self.process_start_base + self.process_start_per_worker * n_jobs

    def thread_start(self, n_jobs: int) -> float:
        return self.thread_start_base + self.thread_start_per_worker * n_jobs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_parent(self, resident: int) -> "PoolCosts":
        """These costs for a parent of ``resident`` bytes (forked workers cost more the more it holds)."""
        extra = max(resident - self.measured_rss, 0) * self.process_fork_per_byte
        if self.start_method != "fork" or extra <= 0:
            return self
        return replace(self, process_start_per_worker=self.process_start_per_worker + extra)


def cache_dir() -> Path:
    """Where autopar keeps measured machine costs (``AUTOPAR_CACHE_DIR`` overrides)."""
    override = os.environ.get("AUTOPAR_CACHE_DIR")
    if override:
        return Path(override)
    if sys.platform.startswith("linux"):
        # platformdirs' rule on Linux, without importing it (8 ms of a first optimize()).
        base = os.environ.get("XDG_CACHE_HOME", "")
        return Path(base if os.path.isabs(base) else os.path.expanduser("~/.cache")) / "autopar"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("autopar", appauthor=False))


def _cache_file(start_method: str) -> Path:
    ident = "|".join(
        [platform.node(), sys.executable, platform.python_version(), start_method, str(usable_cores()), str(_COSTS_VERSION)]
    )
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir() / f"pool-costs-{start_method}-{digest}.json"


def _hold(seconds: float) -> None:
    time.sleep(seconds)


def _noop(x: Any) -> Any:
    return x


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _loaded_task_cost(ctx: Any, n: int, spin: float = 5e-4, tasks: int = 400) -> float:
    """Core-seconds lost per task when n workers keep every core busy: every second beyond
    the ideal wall time is charged to the tasks."""
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx)
    try:
        list(pool.map(_spin, [spin] * n))  # start every worker
        t0 = time.perf_counter()
        for f in [pool.submit(_spin, spin) for _ in range(tasks)]:
            f.result()
        wall = time.perf_counter() - t0
    finally:
        pool.shutdown(wait=True)
    ideal = tasks * spin / min(n, usable_cores())
    return max(wall - ideal, 0.0) * min(n, usable_cores()) / tasks


def _time_pool_start(make_pool: Any, n: int, hold: float) -> float:
    """Seconds to start a pool of n workers, have each run one task, and shut it down."""
    t0 = time.perf_counter()
    pool = make_pool(n)
    try:
        list(pool.map(_hold, [hold] * n))  # each task holds its worker: all n start
    finally:
        pool.shutdown(wait=True)
    return time.perf_counter() - t0 - hold


def _task_overhead(pool: Any, n_tasks: int) -> float:
    t0 = time.perf_counter()
    futures = [pool.submit(_noop, i) for i in range(n_tasks)]
    for f in futures:
        f.result()
    return (time.perf_counter() - t0) / n_tasks


# Workers of the second point of the process start line. The caller forks or spawns each in
# turn whatever the cores, but on 2 cores a line through 1 and 2 workers read no cost a worker
# (a pool of 2 no slower than one), where pools timed in the caller took 18.1 ms for 4 workers
# and 108 ms for 32 (docs/decisions.md, session 17): every count beyond 2 was priced as one.
PROCESS_LINE_WORKERS = 4

FORK_BALLAST = 512 << 20  # bytes held while timing forks from a larger parent


def _fork_per_byte(make_pool: Any, n: int, hold: float, small: float) -> float:
    """Seconds per worker and byte of the parent's resident memory that a forked pool of n
    costs more to start and stop: timed again with ``FORK_BALLAST`` (at most an eighth of the
    available memory) more resident than ``small``'s timing."""
    size = min(FORK_BALLAST, psutil.virtual_memory().available // 8)
    if size < 64 << 20:
        return 0.0
    ballast = b"\1" * size  # written, so resident
    try:
        big = _median([_time_pool_start(make_pool, n, hold) for _ in range(3)])
    finally:
        del ballast
    return max(big - small, 0.0) / (n * size)


# The runner (autopar.execute), handed in by autopar/__init__.py: the thread chunk cost is
# timed through it (it needs no costs when told every choice).
_runner: list[Callable[..., Any]] = []


def use_runner(execute: Callable[..., Any]) -> None:
    """Time the thread chunk cost through ``execute`` (autopar's runner, ``autopar.execute``)."""
    _runner[:] = [execute]


def _thread_chunk_cost(n: int, items: int = 400, big: int = 100) -> float:
    """Seconds one more chunk costs a run on n threads: the same no-op items through
    autopar's runner in chunks of 1 and of ``big``, the difference per chunk."""
    if not _runner:
        raise RuntimeError("measuring pool costs needs autopar's runner: import autopar first")
    execute = _runner[0]
    data = list(range(items))

    def run(cs: int) -> float:
        t0 = time.perf_counter()
        execute(_noop, data, executor_type="thread", n_jobs=n, chunksize=cs, adapt=False)
        return time.perf_counter() - t0

    run(1)  # warm
    small = _median([run(1) for _ in range(3)])
    large = _median([run(big) for _ in range(3)])
    return max(small - large, 0.0) / (items - -(-items // big))


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def _measure(start_method: str) -> PoolCosts:
    t_begin = time.perf_counter()
    ctx = mp.get_context(start_method)
    n_hi = max(2, min(usable_cores(), 4))
    hold = 0.02
    make_proc = functools.partial(ProcessPoolExecutor, mp_context=ctx)  # make_proc(n): n workers
    # Start cost at 1 and PROCESS_LINE_WORKERS workers, whatever the cores (the caller starts
    # them one after another); a line through the medians.
    resident = rss()
    p1 = _median([_time_pool_start(make_proc, 1, hold) for _ in range(2)])
    phi = _median([_time_pool_start(make_proc, PROCESS_LINE_WORKERS, hold) for _ in range(3)])
    per_worker = max((phi - p1) / (PROCESS_LINE_WORKERS - 1), 0.0)
    base = max(p1 - per_worker, 0.0)
    fork_per_byte = _fork_per_byte(make_proc, PROCESS_LINE_WORKERS, hold, phi) if start_method == "fork" else 0.0

    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    try:
        pid = pool.submit(os.getpid).result()
        _task_overhead(pool, 20)  # warm
        worker = psutil.Process(pid)
        w0, c0 = sum(worker.cpu_times()[:2]), time.process_time()
        task = _median([_task_overhead(pool, 300) for _ in range(3)])
        # CPU per task, parent and worker together, on an idle pool.
        task_cpu = (sum(worker.cpu_times()[:2]) - w0 + time.process_time() - c0) / 900
        payload = b"\0" * (4 << 20)
        t0 = time.perf_counter()
        for _ in range(4):
            pool.submit(_noop, payload).result()
        per_byte = max((time.perf_counter() - t0) / 4 - task, 0.0) / (2 * len(payload))
        try:
            worker_mem = psutil.Process(pid).memory_full_info().uss
        except (psutil.Error, AttributeError):
            worker_mem = 0
    finally:
        pool.shutdown(wait=True)

    # On a full machine (what the model charges per chunk): at least the idle figure.
    task_cpu = max(task_cpu, _median([_loaded_task_cost(ctx, usable_cores()) for _ in range(3)]))

    t1 = _median([_time_pool_start(ThreadPoolExecutor, 1, 0.0) for _ in range(3)])
    thi = _median([_time_pool_start(ThreadPoolExecutor, n_hi, 0.0) for _ in range(3)])
    t_per_worker = max((thi - t1) / (n_hi - 1), 0.0)
    with ThreadPoolExecutor(max_workers=1) as tpool:
        _task_overhead(tpool, 50)
        t_task = _median([_task_overhead(tpool, 500) for _ in range(3)])
    t_chunk = max(_thread_chunk_cost(2 * n_hi), t_task)

    return PoolCosts(
        start_method=start_method, process_start_base=base, process_start_per_worker=per_worker,
        process_task_overhead=task, process_task_cpu=task_cpu, process_seconds_per_byte=per_byte,
        process_worker_memory=int(worker_mem), thread_start_base=max(t1 - t_per_worker, 0.0),
        thread_start_per_worker=t_per_worker, thread_task_overhead=t_task, thread_chunk_cost=t_chunk,
        process_fork_per_byte=fork_per_byte, measured_rss=resident, measured_at=time.time(),
        measure_time=time.perf_counter() - t_begin,
    )


_unwritten = [0]  # calls inside kept_in_memory(): measured costs are not written to the cache folder
_unwritten_lock = threading.Lock()


@contextlib.contextmanager
def kept_in_memory() -> Iterator[None]:
    """Pool costs measured meanwhile stay in this process (a dry run writes nothing)."""
    with _unwritten_lock:
        _unwritten[0] += 1
    try:
        yield
    finally:
        with _unwritten_lock:
            _unwritten[0] -= 1


@functools.lru_cache(maxsize=None)
def _pool_costs_cached(start_method: str) -> PoolCosts:
    path = _cache_file(start_method)
    try:
        data = json.loads(path.read_text())
        return PoolCosts(**data)
    except (OSError, ValueError, TypeError):
        pass
    costs = _measure(start_method)
    if _unwritten[0]:
        return costs
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as fh:  # another process never reads half a file
            json.dump(costs.to_dict(), fh, indent=1)
    except OSError:
        pass  # a read-only cache directory only costs a re-measure next time
    return costs


def pool_costs(start_method: str | None = None, *, refresh: bool = False) -> PoolCosts:
    """Measured pool costs for ``start_method`` (default: autopar's default start method).

    The first call on a machine measures real pools (about a second); later calls, in this
    process or others, read the cached figures. ``refresh=True`` measures again.
    """
    method = start_method or default_start_method()
    if method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {method!r}")
    if refresh:
        _pool_costs_cached.cache_clear()
        try:
            _cache_file(method).unlink()
        except OSError:
            pass
    return _pool_costs_cached(method)
