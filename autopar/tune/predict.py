"""What one candidate costs: predicted wall time of the remaining work on ``n`` threads,
processes or a Dask cluster's threads, in chunks of ``cs`` items.

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
  ``S(n) = min(n, c / r)``: no GIL, but no more CPU than the machine has. Beside other
  processes' work (``o`` busy cores, measured while the sample ran), ``c / r`` becomes the
  workers' fair share of the cores over serial's: ``P(n) / P(1)`` with
  ``P(n) = n`` while ``n r + o <= c``, else ``c n / (n r + o)``.
* Processes also pay per item: unpickling the item and pickling the result in the worker
  (inside ``w``), and in the parent, which does it for all workers through one pipe each way,
  pickling items, unpickling results and moving the bytes (``parent_serial``).
* No candidate beats the CPU it needs: items, pickling both ways and per-chunk dispatch CPU
  (parent and worker, measured) divided by the cores. On a machine the workers fill, the
  parent's dispatch work is taken from theirs, which makes tiny chunks cost more than their
  idle-pool round trip suggests.
* A first call's one-time cost (``Profile.warmup_time``) is paid again by each spawn or
  forkserver worker: added to the process pool's start.
* Every figure is measured: ``t``, ``sd``, ``r``, pickle sizes and times and thread scaling by
  the sample; start costs, task overhead and seconds per byte by :mod:`autopar.tune.costs`.

:mod:`autopar.tune.model` ranks the candidates and chooses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from . import constants
from .costs import PoolCosts
from .sample import Profile

__all__ = ["Candidate", "best_chunksize", "best_dask", "dask_chunksize", "gil_share", "predict_dask", "shared_resource"]


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


def gil_share(profile: Profile, gil_enabled: bool = True) -> float:
    """Share of an item's time that holds the GIL, from the measured thread scaling.

    On a free-threaded build (no GIL) nothing holds it unless the probe measured otherwise."""
    s, k = profile.thread_scaling, profile.probe_threads
    if s is None or k < 2:
        if not gil_enabled:
            return 0.0
        # Not measured: assume the CPU-busy share holds the GIL (pure Python, the safe side).
        return min(max(profile.cpu_ratio, 0.0), 1.0)
    if s >= constants.PARALLEL_SCALING * k:
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


def _progress(n: int, r: float, cores: int, others: float) -> float:
    """Items' worth of progress n workers computing a share ``r`` of the time make at once,
    in units of one worker alone on an idle machine: n while the cores go round, else their
    fair share of the cores beside ``others`` (other processes' busy cores; each runnable
    thread gets an equal share of the CPU) over ``r``."""
    demand = n * r + others
    return float(n) if demand <= cores else cores * n / demand


def _cpu_cap(n: int, r: float, cores: int, others: float) -> float:
    """How much faster n workers run the items than one serial run on the same machine:
    ``cores / r`` on an idle machine (no more CPU than there is); beside other processes'
    work, n workers' fair share of the cores over serial's (the sample's item time was
    measured at serial's share). Three spinning processes on 2 cores: 2 workers get 0.8 of
    a core, serial 0.5: x1.6, not x2."""
    if r <= 1e-3:
        return float("inf")
    if others <= 0.0:
        return cores / r
    return _progress(n, r, cores, others) / _progress(1, r, cores, others)


def _thread_speedup(n: int, g: float, cores: int, r: float, others: float = 0.0) -> float:
    amdahl = 1.0 / (g + (1.0 - g) / n)
    return max(min(float(n), amdahl, _cpu_cap(n, r, cores, others)), 1e-3)


def shared_resource(p: Profile) -> bool:
    """Threads ran slower together than one alone, and not for the GIL: work that is not
    pure computing (CPU/wall under 0.9) contends for something outside Python (a disk's
    journal, a lock, memory bandwidth), which processes would share too. Pure Python reads
    about 1.0 here, GIL-free work k."""
    s = p.thread_scaling
    return s is not None and p.probe_threads >= 2 and s < constants.SHARED_RESOURCE_SCALING and p.cpu_ratio < 0.9


def _process_speedup(n: int, cores: int, r: float, others: float = 0.0) -> float:
    return max(min(float(n), _cpu_cap(n, r, cores, others)), 1e-3)


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
        speedup = 1.0 if shared_resource(p) else _thread_speedup(active, g, cores, r, p.others_cores)
        t_eff = t * active / speedup
        start = costs.thread_start(n)
        work = busiest * t_eff + tail * active / speedup
        dispatch = n_chunks * costs.thread_chunk_cost
        return Candidate(kind, n, cs, start + work + dispatch, start, work, 0.0, dispatch)
    item_pickle, item_load, item_bytes, worker_side, parent_side = _pickling(p, cs)
    w = t + worker_side
    # With a shared resource the workers queue on what slowed the threads: no gain from n.
    w_eff = w * active / (1.0 if shared_resource(p) else _process_speedup(active, cores, r, p.others_cores))
    start = costs.process_start(n) + _worker_warmup(p, costs)
    work = busiest * w_eff + tail
    per_byte = costs.process_seconds_per_byte
    transfer = remaining * (parent_side + (item_bytes + p.result_bytes) * per_byte)
    dispatch = n_chunks * (costs.process_task_overhead + p.func_bytes * per_byte)
    parent = transfer + dispatch
    # The busiest worker also waits for its first chunk to arrive.
    first_chunk = cs * ((item_pickle - item_load) + item_bytes * per_byte)
    # All the CPU the run needs, items, pickling both ways and dispatch, shares the cores.
    cpu = remaining * (t * min(r, 1.0) + item_pickle + p.result_pickle_time) + n_chunks * costs.process_task_cpu
    # (beside other processes' work, the share of the cores n workers and the caller get)
    usable = cores if p.others_cores <= 0 else min(cores, cores * (active + 1) / (active + 1 + p.others_cores))
    total = start + max(work + first_chunk, parent, cpu / usable)
    return Candidate(kind, n, cs, total, start, work, transfer, dispatch)


def _worker_warmup(p: Profile, costs: PoolCosts) -> float:
    """A first call's one-time cost (an import inside the function, a table it builds), paid
    again by every worker that does not inherit the caller's memory: spawn and forkserver
    workers start from a fresh interpreter (a forked one has what the sample's first call
    left). The workers pay it side by side: once in the wall time."""
    if p.warmup_time is None or costs.start_method == "fork":
        return 0.0
    return max(p.warmup_time - p.item_time_mean, 0.0)


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
    seconds = constants.CHUNK_SECONDS if p.n_items is not None else constants.CHUNK_SECONDS / 4
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


def dask_chunksize(p: Profile, remaining: int, threads: int, task_seconds: float | None = None) -> int:
    """Items per task on a Dask cluster of ``threads`` worker threads: each task's work at
    least ``1 / DASK_TASK_SHARE`` times its round trip (100,000 tiny items as one task each
    cost Dask's scheduler seconds), and at least 4 tasks a thread where the job is that long
    (balance, and a lost worker costs a task, not a share of the job). ``task_seconds``: the
    cluster's round trip, ``DASK_TASK_SECONDS`` where not measured."""
    if task_seconds is None:
        task_seconds = constants.DASK_TASK_SECONDS
    item = max(p.item_time_mean, 1e-9)
    enough = math.ceil(task_seconds / constants.DASK_TASK_SHARE / item)
    balanced = max(1, -(-remaining // (4 * threads)))
    return max(1, min(enough, balanced))
