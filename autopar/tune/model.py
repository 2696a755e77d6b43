"""The cost model: predicted wall time of the remaining work for every candidate configuration.

For ``R`` remaining items of mean time ``t`` (spread ``sd``), CPU/wall ratio ``r`` and ``c``
usable cores::

    serial          R * t
    threads  x n    start(n) + makespan(R, cs, n) * t_eff + chunks * chunk_cost
    processes x n   start(n) + max(makespan(R, cs, n) * w_eff,  parent_serial) [+ tail]

* ``makespan`` counts the items the busiest worker runs when chunks of ``cs`` items are handed
  out dynamically; a spread term ``sd * sqrt(cs) * sqrt(2 ln n)`` adds the expected tail of
  skewed items, so skewed work gets smaller chunks.
* ``t_eff = t * n / S(n)`` is an item's time when n workers share the machine. For threads,
  ``S(n) = min(n, 1 / (g + (1 - g) / n), c / r)`` where ``g``, the share of an item that holds
  the GIL, comes from the measured thread scaling of the concurrency probe. For processes,
  ``S(n) = min(n, c / r)``: no GIL, but no more CPU than the machine has.
* Processes also pay per item: unpickling the item and pickling the result in the worker
  (inside ``w``), and in the parent, which does it for all workers through one pipe each way,
  pickling items, unpickling results and moving the bytes (``parent_serial``).
* No candidate beats the CPU it needs: items, pickling both ways and per-chunk dispatch CPU
  (parent and worker, measured) divided by the cores. On a machine the workers fill, the
  parent's dispatch work is taken from theirs, which makes tiny chunks cost more than their
  idle-pool round trip suggests.
* Every figure is measured: ``t``, ``sd``, ``r``, pickle sizes and times and thread scaling by
  the sample; start costs, task overhead and seconds per byte by :mod:`autopar.tune.costs`.

Serial wins unless the best parallel candidate is clearly faster (``MIN_SPEEDUP`` and
``MIN_SAVING``), a process candidate even with its pickling at ``TRANSFER_DOUBT`` times the
measured cost; between a thread and a process candidate within ``THREAD_PREFERENCE`` of each
other, threads win (no copies, no pickling).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable

from .sample import BLAS_FASTER, MIN_SAVING, PARALLEL_SCALING, SHARED_RESOURCE_SCALING, UNKNOWN_SECONDS, Profile
from .costs import PoolCosts
from .system import SystemInfo

__all__ = ["Candidate", "Decision", "decide", "best_chunksize", "workload_type"]

MIN_SPEEDUP = 1.1
# Pickling measured in the caller understates it in a forked worker: objects built there land
# on pages shared with the caller, each first write a copy. JSON round trips of 100 KB dicts
# loaded in 0.6 ms in a worker against 0.4 ms in the caller and ran 1.2-1.6x slower on a
# worker's first pass; processes predicted x1.3 ran no faster than serial.
TRANSFER_DOUBT = 2.0
THREAD_PREFERENCE = 1.05
# Work that waits (CPU/wall under PURE_CPU): what process workers contend for while they wait
# (a disk's journal, the parent's copies) is in no figure of the model. File writes and reads:
# process x4 predicted a hair ahead of thread x6, ran 1.8x slower than thread x8.
WAITING_THREAD_PREFERENCE = 1.15
CPU_RATIO_CPU = 0.75
CPU_RATIO_IO = 0.3
MEMORY_SHARE = 0.8  # share of available memory the workers may take
MAX_THREADS = 64
CHUNK_SECONDS = 0.2  # a chunk holds about this much work at most, unless the model needs more
FEW_ITEMS = 4  # items a core, up to which every item may get a worker of its own
PURE_CPU = 0.95  # CPU/wall from here on: the item never waits
FEWER_WORKERS = 1.03  # candidates of one kind this close in time: the fewest workers win


@dataclass(frozen=True)
class Candidate:
    """One configuration and its predicted wall time (seconds) for the remaining items."""

    executor_type: str
    n_jobs: int
    chunksize: int
    predicted_time: float
    start: float = 0.0
    work: float = 0.0
    transfer: float = 0.0
    dispatch: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        if self.executor_type == "serial":
            return "serial"
        return f"{self.executor_type} x{self.n_jobs} (chunksize {self.chunksize})"


@dataclass(frozen=True)
class Decision:
    best: Candidate
    serial: Candidate
    ranked: tuple[Candidate, ...]
    remaining: int
    assumed_remaining: bool
    workload_type: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    memory_cap: int


def workload_type(cpu_ratio: float) -> str:
    if cpu_ratio >= CPU_RATIO_CPU:
        return "cpu"
    if cpu_ratio <= CPU_RATIO_IO:
        return "io"
    return "mixed"


def _with_blas_capped(p: Profile, reasons: list[str]) -> tuple[Profile, float]:
    """(the profile pools are modelled on, serial's item time). Pools cap native (BLAS)
    threads at cores // n a worker: where the sample timed items so, pools get that time
    at one core an item. Serial runs so too where it is faster."""
    if not p.single_blas_time:
        return p, p.item_time_mean
    reasons.append(
        f"native (BLAS) threads capped at one per worker: items took {p.single_blas_time * 1e3:.3g} ms "
        f"so, {p.item_time_mean * 1e3:.3g} ms with the default threads"
    )
    ratio = p.single_blas_time / p.item_time_mean
    capped = replace(
        p,
        item_time_mean=p.single_blas_time,
        item_time_std=p.item_time_std * ratio,
        item_time_max=p.item_time_max * ratio,
        cpu_ratio=min(p.cpu_ratio, 1.0),
    )
    return capped, serial_blas_time(p) or p.item_time_mean


def serial_blas_time(p: Profile) -> float | None:
    """Item time of a serial run with BLAS capped at one thread, where that is clearly faster."""
    if p.single_blas_time and p.single_blas_time < BLAS_FASTER * p.item_time_mean:
        return p.single_blas_time
    return None


def gil_share(profile: Profile, gil_enabled: bool = True) -> float:
    """Share of an item's time that holds the GIL, from the measured thread scaling.

    On a free-threaded build (no GIL) nothing holds it unless the probe measured otherwise."""
    s, k = profile.thread_scaling, profile.probe_threads
    if s is None or k < 2:
        if not gil_enabled:
            return 0.0
        # Not measured: assume the CPU-busy share holds the GIL (pure Python, the safe side).
        return min(max(profile.cpu_ratio, 0.0), 1.0)
    if s >= PARALLEL_SCALING * k:
        # A probe round lasts milliseconds: a thread the scheduler has yet to move to a
        # free core, or a moment of other work on the machine, reads as GIL. lzma and
        # Pillow, measured at x1.65-1.9 on 2 threads, ran x1.96 in a pool of 2.
        return 0.0
    g = min(max((k / s - 1.0) / (k - 1.0), 0.0), 1.0)
    # An item cannot hold the GIL for longer than it keeps a core busy.
    return min(g, max(profile.cpu_ratio, 0.0))


def _makespan_items(remaining: int, cs: int, n: int) -> int:
    """Items run by the busiest of n workers taking chunks of cs items as they free up."""
    n_chunks = -(-remaining // cs)
    part = remaining % cs
    q, rem = divmod(n_chunks, n)
    if part == 0:
        return (q + (rem > 0)) * cs
    if rem == 0:
        return q * cs if n > 1 else (q - 1) * cs + part
    if rem == 1:
        return q * cs + part
    return (q + 1) * cs


def _chunk_options(remaining: int, n: int) -> list[int]:
    opts = {1, max(1, -(-remaining // n)), max(1, -(-remaining // (4 * n)))}
    cs = 2
    while cs < remaining / n:
        opts.add(cs)
        cs *= 2
    return sorted(o for o in opts if o <= max(1, remaining))


def _thread_speedup(n: int, g: float, cores: int, r: float) -> float:
    amdahl = 1.0 / (g + (1.0 - g) / n)
    cpu_cap = cores / r if r > 1e-3 else float("inf")
    return max(min(float(n), amdahl, cpu_cap), 1e-3)


def shared_resource(p: Profile) -> bool:
    """Threads ran slower together than one alone, and not for the GIL: work that is not
    pure computing (CPU/wall under 0.9) contends for something outside Python (a disk's
    journal, a lock, memory bandwidth), which processes would share too. Pure Python reads
    about 1.0 here, GIL-free work k."""
    s = p.thread_scaling
    return s is not None and p.probe_threads >= 2 and s < SHARED_RESOURCE_SCALING and p.cpu_ratio < 0.9


def _process_speedup(n: int, cores: int, r: float) -> float:
    cpu_cap = cores / r if r > 1e-3 else float("inf")
    return max(min(float(n), cpu_cap), 1e-3)


def _predict(
    kind: str,
    n: int,
    cs: int,
    remaining: int,
    p: Profile,
    costs: PoolCosts,
    cores: int,
    g: float,
) -> Candidate:
    t, r = p.item_time_mean, max(p.cpu_ratio, 0.0)
    n_chunks = -(-remaining // cs)
    busiest = _makespan_items(remaining, cs, n)
    tail = _tail(p, cs, n)
    # Workers beyond the chunks have nothing to run and take no share of the cores: 7 zlib
    # items of 27 ms ran in 0.10 s on 8 threads (all at once, the cores shared), 0.11 s on 2.
    active = min(n, n_chunks)
    if kind == "thread":
        speedup = 1.0 if shared_resource(p) else _thread_speedup(active, g, cores, r)
        t_eff = t * active / speedup
        start = costs.thread_start(n)
        work = busiest * t_eff + tail * active / speedup
        dispatch = n_chunks * costs.thread_chunk_cost
        return Candidate(kind, n, cs, start + work + dispatch, start, work, 0.0, dispatch)
    item_pickle, item_load, item_bytes, worker_side, parent_side = _pickling(p, cs)
    w = t + worker_side
    # With a shared resource the workers queue on what slowed the threads: no gain from n.
    w_eff = w * active / (1.0 if shared_resource(p) else _process_speedup(active, cores, r))
    start = costs.process_start(n)
    work = busiest * w_eff + tail
    per_byte = costs.process_seconds_per_byte
    transfer = remaining * (parent_side + (item_bytes + p.result_bytes) * per_byte)
    dispatch = n_chunks * (costs.process_task_overhead + p.func_bytes * per_byte)
    parent = transfer + dispatch
    # The busiest worker also waits for its first chunk to arrive.
    first_chunk = cs * ((item_pickle - item_load) + item_bytes * per_byte)
    # All the CPU the run needs, items, pickling both ways and dispatch, shares the cores.
    cpu = remaining * (t * min(r, 1.0) + item_pickle + p.result_pickle_time) + n_chunks * costs.process_task_cpu
    total = start + max(work + first_chunk, parent, cpu / cores)
    return Candidate(kind, n, cs, total, start, work, transfer, dispatch)


def _tail(p: Profile, cs: int, n: int) -> float:
    """The skew tail: the slowest of n chunks of cs items beyond the mean."""
    return p.item_time_std * math.sqrt(cs) * math.sqrt(2.0 * math.log(n)) if n > 1 else 0.0


def _pickling(p: Profile, cs: int) -> tuple[float, float, float, float, float]:
    """Pickling for a worker in another process, per item, in chunks of cs: (item dump +
    load, item load, item bytes, the worker's side, the caller's side). The worker loads
    the item and dumps the result, the caller the other halves; one object as every item
    travels once a chunk."""
    share = 1.0 / cs if p.items_shared else 1.0
    item_pickle, item_bytes = p.item_pickle_time * share, p.item_bytes * share
    item_load = (p.item_load_time or 0.5 * p.item_pickle_time) * share
    result_load = p.result_load_time or 0.5 * p.result_pickle_time
    worker_side = item_load + (p.result_pickle_time - result_load)
    parent_side = (item_pickle - item_load) + result_load
    return item_pickle, item_load, item_bytes, worker_side, parent_side


def best_chunksize(
    kind: str, n: int, remaining: int, p: Profile, costs: PoolCosts, cores: int, gil_enabled: bool = True
) -> Candidate:
    """The best chunksize for ``kind`` x ``n``: the largest within 2% of the fastest, up to
    a quarter of each worker's share (at least 4 chunks a worker, for balance and so the run
    can still correct itself) and about ``CHUNK_SECONDS`` of work, a quarter of that for
    input of unknown length (progress, retries and the fallback act per chunk). Fewer, larger chunks cost less dispatch than the model's
    per-task figures show on a full machine."""
    g = gil_share(p, gil_enabled)
    cands = [_predict(kind, n, cs, remaining, p, costs, cores, g) for cs in _chunk_options(remaining, n)]
    fastest = min(c.predicted_time for c in cands)
    # Input of unknown length: its end, and so the run's tail of one chunk, comes unannounced.
    seconds = CHUNK_SECONDS if p.n_items is not None else CHUNK_SECONDS / 4
    cap = max(1, min(-(-remaining // (4 * n)), int(seconds / max(p.item_time_mean, 1e-9))))
    capped = [c for c in cands if c.chunksize <= cap]
    close = [c for c in capped if c.predicted_time <= fastest * 1.02]
    if close:
        return max(close, key=lambda c: c.chunksize)
    # Nothing within 2% under the cap: the fastest under it. One chunk a worker is predicted
    # fastest wherever items look alike (no tail in the model), and a worker left with half
    # the job in one chunk has nothing to give the other when it runs slow (SVD of 76 items:
    # chunks of 29 took 1.36x the best, chunks of 10).
    return min(capped or cands, key=lambda c: c.predicted_time)


DASK_TASK_SECONDS = 1e-3  # a task's round trip through a Dask scheduler: 0.2-1 ms by Dask's own figures
DASK_TASK_SHARE = 0.05  # a task's round trip at most this share of its work, where items allow
LOCAL_PREFERENCE = 1.2  # a local pool within this of the cluster wins: nothing leaves the machine


def predict_dask(cs: int, remaining: int, p: Profile, cluster: Any, g: float | None = None) -> Candidate:
    """A run on a Dask cluster (``cluster``: :class:`~autopar.backends.dask.ClusterCosts`):
    the cluster's threads each run tasks of ``cs`` items as a process worker would (the
    worker unpickles items and pickles results, the caller the other halves); the bytes
    travel at the measured bandwidth; each task costs what one did with many queued (the
    scheduler's and the client's share: tasks run behind the 2n+1 in flight), and the first
    one a full round trip. No start cost: the cluster is up. A worker's threads share one
    GIL: a worker with k tasks running runs them as k local threads would (``g``, the share
    of an item that holds the GIL, from the thread probe), each thread that much slower
    (k: its threads, or fewer where there are fewer tasks than threads)."""
    n = max(1, cluster.threads)
    t = p.item_time_mean
    n_tasks = -(-remaining // cs)
    busiest = _makespan_items(remaining, cs, n)
    _, _, item_bytes, worker_side, parent_side = _pickling(p, cs)
    # Threads busy in a worker at once: fewer tasks than threads spread over the workers.
    busy = min(threads_per_worker(cluster), -(-n_tasks // max(cluster.workers, 1)))
    g = gil_share(p) if g is None else g
    slower = busy / _thread_speedup(busy, g, busy, p.cpu_ratio)
    work = (busiest * (t + worker_side) + _tail(p, cs, n)) * slower
    to_workers = (remaining * item_bytes + n_tasks * p.func_bytes) / max(cluster.bytes_per_second_to, 1.0)
    from_workers = remaining * p.result_bytes / max(cluster.bytes_per_second_from, 1.0)
    transfer = to_workers + from_workers
    dispatch = n_tasks * cluster.task_share_seconds
    parent = remaining * parent_side + dispatch
    total = cluster.task_seconds + max(work, parent, transfer)
    return Candidate("dask", n, cs, total, 0.0, work, transfer, dispatch)


def threads_per_worker(cluster: Any) -> int:
    return max(1, round(cluster.threads / max(cluster.workers, 1)))


def dask_threads_advice(p: Profile, cluster: Any, g: float) -> str | None:
    """What explain() says about the cluster's threads per worker for this work: a function
    that holds the GIL computes on one thread a worker at a time."""
    per_worker = threads_per_worker(cluster)
    if p.thread_scaling is None or p.probe_threads < 2:
        return None
    useful = _thread_speedup(per_worker, g, per_worker, p.cpu_ratio)
    if per_worker > 1 and useful < 0.75 * per_worker:
        return (
            f"dask: the function holds the GIL ({p.probe_threads} threads ran x{p.thread_scaling:.2f}), so each "
            f"of the cluster's workers computes about x{useful:.1f} with its {per_worker} threads; workers of one "
            f"thread each (dask worker --nthreads 1 --nworkers {per_worker}; LocalCluster(threads_per_worker=1)) "
            f"would run x{per_worker / useful:.1f} faster"
        )
    if per_worker == 1 and cluster.workers > 1 and g < 0.1 and p.cpu_ratio > 0.5:
        return (
            f"dask: the function releases the GIL ({p.probe_threads} threads ran x{p.thread_scaling:.2f}): workers "
            "with several threads each would do as well as one-thread workers, in fewer processes and less memory"
        )
    return None


def _dask_candidate(p: Profile, cluster: Any, remaining: int, chunksize: int | None, gil_enabled: bool, reasons: list[str]) -> Candidate:
    """The cluster as a candidate (at ``chunksize``, else its best task size), with the
    advice on its threads per worker among the reasons."""
    g = gil_share(p, gil_enabled)
    advice = dask_threads_advice(p, cluster, g)
    if advice is not None:
        reasons.append(advice)
    return predict_dask(chunksize, remaining, p, cluster, g) if chunksize else best_dask(remaining, p, cluster, g)


def best_dask(remaining: int, p: Profile, cluster: Any, g: float | None = None) -> Candidate:
    """The best task size on ``cluster``: within 2% of the fastest, the largest that leaves
    at least 4 tasks a thread (a lost worker costs a task, and balance), else the fastest:
    on a cluster of 1,600 threads, 4 tasks a thread made the scheduler the bottleneck."""
    n = max(1, cluster.threads)
    sizes = set(_chunk_options(remaining, n)) | {dask_chunksize(p, remaining, n, cluster.task_seconds)}
    sizes |= {2**k for k in range(max(1, remaining).bit_length())}  # fewer tasks than threads too
    cap = max(1, -(-remaining // (4 * n)))
    cands = [predict_dask(cs, remaining, p, cluster, g) for cs in sorted(sizes)]
    fastest = min(c.predicted_time for c in cands)
    close = [c for c in cands if c.predicted_time <= fastest * 1.02 and c.chunksize <= cap]
    return max(close, key=lambda c: c.chunksize) if close else min(cands, key=lambda c: c.predicted_time)


def dask_chunksize(p: Profile, remaining: int, threads: int, task_seconds: float = DASK_TASK_SECONDS) -> int:
    """Items per task on a Dask cluster of ``threads`` worker threads: each task's work at
    least ``1 / DASK_TASK_SHARE`` times its round trip (100,000 tiny items as one task each
    cost Dask's scheduler seconds), and at least 4 tasks a thread where the job is that long
    (balance, and a lost worker costs a task, not a share of the job)."""
    item = max(p.item_time_mean, 1e-9)
    enough = math.ceil(task_seconds / DASK_TASK_SHARE / item)
    balanced = max(1, -(-remaining // (4 * threads)))
    return max(1, min(enough, balanced))


def _n_options(limit: int, cores: int) -> list[int]:
    opts = {cores, limit}  # the limit: e.g. one worker per remaining item
    n = 1
    while n <= limit:
        opts.add(n)
        n *= 2
    return sorted(o for o in opts if 1 <= o <= limit)


def _fewest_workers(best: Candidate, ranked: list[Candidate], cpu_ratio: float = 1.0) -> Candidate:
    """Within ``FEWER_WORKERS`` of ``best``'s time, the same kind with the fewest workers:
    a near tie is noise in the model, and extra workers cost memory and contention. Threads
    for work that computes but also waits are the exception: the most threads in the tie
    (up to the ``2 * cores / r`` limit). The model overlaps waits perfectly up to
    ``cores / r``; waits that vary need more threads to hide them (file writes and reads:
    thread x8 0.40 s, x4 0.69 s, both predicted alike)."""
    close = [
        c
        for c in ranked
        if c.executor_type == best.executor_type and c.predicted_time <= best.predicted_time * FEWER_WORKERS
    ]
    if best.executor_type == "thread" and CPU_RATIO_IO < cpu_ratio < PURE_CPU:
        return max(close, key=lambda c: (c.n_jobs, -c.predicted_time))
    return min(close, key=lambda c: (c.n_jobs, c.predicted_time))


def _worker_limits(
    p: Profile,
    system: SystemInfo,
    costs: PoolCosts,
    remaining: int,
    wtype: str,
    max_jobs: int | None,
    reasons: list[str],
    warnings: list[str],
) -> tuple[int, int, int]:
    """(thread limit, process limit, memory cap): n workers must hold n items at their peak."""
    cores = system.usable_cores
    per_worker = max(p.peak_memory_per_item, int(p.item_bytes + p.result_bytes))
    memory_cap = MAX_THREADS
    if per_worker > 0:
        memory_cap = max(1, int(MEMORY_SHARE * system.available_memory // per_worker))
    proc_cap = max(1, int(MEMORY_SHARE * system.available_memory // (per_worker + costs.process_worker_memory + 1)))
    results_total = (p.n_done + remaining) * p.result_bytes
    if results_total > 0.5 * system.available_memory:
        warnings.append(
            f"the results will take about {results_total / 2**30:.1f} GiB, more than half of the "
            f"{system.available_memory / 2**30:.1f} GiB available; consider execute_iter() to stream them"
        )
    thread_limit = min(remaining, MAX_THREADS, memory_cap)
    # A few items left, not a multiple of the cores: one worker each, sharing the cores, ends
    # them together (7 zlib items of 27 ms: 0.10 s on 8 threads, 0.11 s on 2 in 4 rounds).
    few = remaining if remaining <= FEW_ITEMS * cores else 0
    if wtype != "io" and not (p.thread_scaling and p.probe_threads > cores and p.thread_scaling > cores):
        # Computing work gets no more threads than cores unless the probe measured a gain;
        # work that also waits (CPU/wall r) needs about cores / r to keep the cores busy,
        # twice that for the GIL and the spread of the waits.
        r = max(p.cpu_ratio, 1e-3)
        thread_limit = min(thread_limit, max(cores if r >= PURE_CPU else math.ceil(2 * cores / r), few))
    proc_limit = min(remaining, proc_cap, max(cores if wtype == "cpu" else 2 * cores, few))
    if max_jobs is not None:
        thread_limit, proc_limit = min(thread_limit, max_jobs), min(proc_limit, max_jobs)
    if memory_cap < min(remaining, cores):
        reasons.append(
            f"memory caps the workers at {memory_cap}: {p.peak_memory_per_item / 2**20:.0f} MiB "
            f"peak per item against {system.available_memory / 2**30:.1f} GiB available"
        )
    return thread_limit, proc_limit, memory_cap


def _doubted(c: Candidate, remaining: int, p: Profile, costs: PoolCosts, cores: int, gil_enabled: bool) -> Candidate:
    """A process candidate predicted again with its pickling at ``TRANSFER_DOUBT`` times
    the measured cost (other candidates as they are)."""
    if c.executor_type != "process":
        return c
    d = TRANSFER_DOUBT
    doubted = replace(
        p,
        item_pickle_time=p.item_pickle_time * d,
        item_load_time=p.item_load_time * d,
        result_pickle_time=p.result_pickle_time * d,
        result_load_time=p.result_load_time * d,
    )
    return _predict("process", c.n_jobs, c.chunksize, remaining, doubted, costs, cores, gil_share(p, gil_enabled))


def _choose(
    ranked: list[Candidate], serial: Candidate, serial_allowed: bool, cpu_ratio: float, reasons: list[str],
    doubt: "Callable[[Candidate], Candidate]" = lambda c: c,
) -> Candidate:
    """The fastest, with the fewest workers in a near tie; threads over processes within
    ``THREAD_PREFERENCE`` (``WAITING_THREAD_PREFERENCE`` for work that also waits); serial
    unless parallel is clearly faster."""
    best = _fewest_workers(ranked[0], ranked, cpu_ratio)
    if best.executor_type == "dask":
        local = next((c for c in ranked if c.executor_type != "dask"), None)
        if local is not None and local.predicted_time <= best.predicted_time * LOCAL_PREFERENCE:
            reasons.append(
                f"{local.label()} is predicted within {round((LOCAL_PREFERENCE - 1) * 100)}% of the cluster "
                f"({local.predicted_time:.3g} s against {best.predicted_time:.3g} s): local wins, nothing leaves the machine"
            )
            best = _fewest_workers(local, ranked, cpu_ratio)
    if best.executor_type == "process":
        margin = THREAD_PREFERENCE if cpu_ratio >= PURE_CPU else WAITING_THREAD_PREFERENCE
        thread_alt = next((c for c in ranked if c.executor_type == "thread"), None)
        if thread_alt is not None and thread_alt.predicted_time <= best.predicted_time * margin:
            best = _fewest_workers(thread_alt, ranked, cpu_ratio)
            reasons.append(
                f"threads and processes are predicted within {round((margin - 1) * 100)}%: threads win (no copies)"
            )
    if best.executor_type != "serial" and serial_allowed:
        saving = serial.predicted_time - best.predicted_time
        doubted = doubt(best)
        if serial.predicted_time < best.predicted_time * MIN_SPEEDUP or saving < MIN_SAVING:
            reasons.append(
                f"serial: the best parallel choice, {best.label()}, is not clearly faster "
                f"({best.predicted_time:.3g} s against {serial.predicted_time:.3g} s serial)"
            )
            best = serial
        elif serial.predicted_time < doubted.predicted_time * MIN_SPEEDUP:
            reasons.append(
                f"serial: {best.label()} is predicted {best.predicted_time:.3g} s against "
                f"{serial.predicted_time:.3g} s serial, but {doubted.predicted_time:.3g} s if pickling costs "
                f"{TRANSFER_DOUBT:g}x as much in the workers as here (objects built in a forked worker cost more)"
            )
            best = serial
    return best


def _remaining(p: Profile, warnings: list[str]) -> int:
    """Items left; for input of unknown length, at least UNKNOWN_SECONDS of work (the
    sample's assumption too; see there), with a warning."""
    if p.n_remaining is not None:
        return p.n_remaining
    remaining = max(10 * p.n_done, 100, math.ceil(UNKNOWN_SECONDS / max(p.item_time_mean, 1e-9)))
    warnings.append(
        f"the number of items is unknown; the model assumed {remaining} more "
        "(pass n_items= for a better estimate)"
    )
    return remaining


def decide(
    profile: Profile,
    system: SystemInfo,
    costs: PoolCosts,
    *,
    executor_types: Iterable[str] = ("serial", "thread", "process"),
    prefer_threads_for_io: bool = True,
    max_jobs: int | None = None,
    n_jobs: int | None = None,
    chunksize: int | None = None,
    cluster: Any = None,
) -> Decision:
    """Rank the candidates for the remaining work and pick one; with ``cluster`` (a Dask
    cluster's measured costs) and ``"dask"`` among the types, the cluster is a candidate."""
    allowed = set(executor_types)
    reasons: list[str] = []
    warnings: list[str] = []
    p = profile
    cores = system.usable_cores
    wtype = workload_type(p.cpu_ratio)

    assumed = p.n_remaining is None
    remaining = _remaining(p, warnings)
    p, serial_item = _with_blas_capped(p, reasons)
    serial = Candidate("serial", 1, 1, remaining * serial_item, work=remaining * serial_item)

    thread_limit, proc_limit, memory_cap = _worker_limits(p, system, costs, remaining, wtype, max_jobs, reasons, warnings)

    if allowed & {"process", "dask"} and profile.transport is None:
        allowed -= {"process", "dask"}
        warnings.append(f"processes ruled out: nothing can serialize the work ({p.pickle_error})")
    if "thread" in allowed and not prefer_threads_for_io and wtype == "io":
        allowed.discard("thread")
        reasons.append("prefer_threads_for_io=False: I/O-bound work is not sent to threads")

    cands: list[Candidate] = []
    # Under MIN_SAVING of work left, no pool can save MIN_SAVING: serial, unranked.
    if (remaining > 0 and serial.predicted_time >= MIN_SAVING) or "serial" not in allowed:
        remaining = max(remaining, 1)
        for kind, limit in (("thread", thread_limit), ("process", proc_limit)):
            if kind not in allowed:
                continue
            ns = [n_jobs] if n_jobs is not None else _n_options(max(limit, 1), cores)  # (a kind asked: one at least)
            for n in ns:
                if chunksize is not None:
                    g = gil_share(p, system.gil_enabled)
                    cands.append(_predict(kind, n, chunksize, remaining, p, costs, cores, g))
                else:
                    cands.append(best_chunksize(kind, n, remaining, p, costs, cores, system.gil_enabled))
        if cluster is not None and "dask" in allowed:
            cands.append(_dask_candidate(p, cluster, remaining, chunksize, system.gil_enabled, reasons))
    ranked = sorted(cands + ([serial] if "serial" in allowed or not cands else []), key=lambda c: c.predicted_time)

    if shared_resource(p):
        reasons.append(
            f"{p.probe_threads} threads ran x{p.thread_scaling:.2f} as fast as one, and not for the GIL "
            "(the work is not pure computing): a shared resource, which processes would queue on too"
        )
    best = _choose(
        ranked, serial, "serial" in allowed, p.cpu_ratio, reasons,
        lambda c: _doubted(c, remaining, p, costs, cores, system.gil_enabled),
    )
    if not system.gil_enabled and "thread" in allowed:
        reasons.append("this Python runs without a GIL: threads compute in parallel")

    if remaining == 0:
        reasons.append(f"the sample already ran all {p.n_done} items")
    return Decision(
        best=best,
        serial=serial,
        ranked=tuple(ranked),
        remaining=remaining,
        assumed_remaining=assumed,
        workload_type=wtype,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        memory_cap=memory_cap,
    )
