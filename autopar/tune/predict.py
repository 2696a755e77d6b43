"""What one candidate costs: predicted wall time of the remaining work on ``n`` threads,
processes or a Dask cluster's threads, in chunks of ``cs`` items.

For ``R`` remaining items of mean time ``t`` (spread ``sd``), CPU/wall ratio ``r`` and ``c``
usable cores::

    serial          R * t
    threads  x n    start(n) + makespan(R, cs, n) * t_eff + chunks * chunk_cost
    processes x n   start(n) + max(makespan(R, cs, n) * w_eff,  parent_serial) [+ tail]

* ``makespan``: the items the busiest worker runs when chunks of ``cs`` items are handed out
  dynamically, plus a skew tail ``sd * sqrt(cs) * sqrt(2 ln n)`` (skewed work: smaller chunks).
* ``t_eff = t * n / S(n)``: threads ``S(n) = min(n, 1 / (g + (1 - g) / n), c / r)``, ``g`` the
  share of an item that holds the GIL (from the probe); processes ``S(n) = min(n, c / r)``.
  Beside other processes' work (``o`` busy cores), ``c / r`` becomes ``P(n) / P(1)`` with
  ``P(n) = n`` while ``n r + o <= c``, else ``c n / (n r + o)``.
* Processes pay per item: the worker's unpickling and pickling (inside ``w``), and the parent's
  halves and the bytes, for all workers through one pipe each way (``parent_serial``).
* No candidate beats the CPU it needs (items, pickling, per-chunk dispatch CPU) over the cores.
* Spawn and forkserver workers pay a first call's one-time cost (``Profile.warmup_time``) again.
* Every figure is measured: by the sample, or by :mod:`autopar.tune.costs`.

:mod:`autopar.tune.model` ranks the candidates and chooses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from . import constants
from .costs import PoolCosts
from .sample import Profile

__all__ = [
    "Candidate", "best_chunksize", "best_dask", "cores_beside", "dask_chunksize", "fair_progress", "gil_share", "predict_dask", "shared_resource",
]


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

    Unmeasured: none on a free-threaded build, else the CPU-busy share (the safe side)."""
    s, k = profile.thread_scaling, profile.probe_threads
    if s is None or k < 2:
        if not gil_enabled:
            return 0.0
        return min(max(profile.cpu_ratio, 0.0), 1.0)
    if s >= constants.PARALLEL_SCALING * k:
        return 0.0
    g = min(max((k / s - 1.0) / (k - 1.0), 0.0), 1.0)
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


def fair_progress(n: int, r: float, cores: int, others: float) -> float:
    """Progress of n workers computing a share ``r`` of the time, in one idle worker's units:
    n while the cores go round, else their fair share beside ``others`` busy cores."""
    demand = n * r + others
    return float(n) if demand <= cores else cores * n / demand


def cores_beside(n: int, cores: int, others: float) -> float:
    """The cores n busy workers and the caller get beside ``others`` cores' worth of other
    work: their fair share, all of them on an idle machine."""
    return float(cores) if others <= 0 else min(cores, cores * (n + 1) / (n + 1 + others))


def _cpu_cap(n: int, r: float, cores: int, others: float) -> float:
    """The most n workers can run faster than serial: ``cores / r`` on an idle machine, else
    their fair share of the cores over serial's."""
    if r <= 1e-3:
        return float("inf")
    if others <= 0.0:
        return cores / r
    return fair_progress(n, r, cores, others) / fair_progress(1, r, cores, others)


def _thread_speedup(n: int, g: float, cores: int, r: float, others: float = 0.0) -> float:
    amdahl = 1.0 / (g + (1.0 - g) / n)
    return max(min(float(n), amdahl, _cpu_cap(n, r, cores, others)), 1e-3)


def shared_resource(p: Profile) -> bool:
    """Threads ran slower together than one alone, and not for the GIL (CPU/wall under 0.9):
    something outside Python that processes would share too."""
    s = p.thread_scaling
    return s is not None and p.probe_threads >= 2 and s < constants.SHARED_RESOURCE_SCALING and p.cpu_ratio < 0.9


def _process_speedup(n: int, cores: int, r: float, others: float = 0.0) -> float:
    return max(min(float(n), _cpu_cap(n, r, cores, others)), 1e-3)


def _predict(
    kind: str, n: int, cs: int, remaining: int, p: Profile, costs: PoolCosts, cores: int, g: float
) -> Candidate:
    t, r = p.item_time_mean, max(p.cpu_ratio, 0.0)
    n_chunks = -(-remaining // cs)
    busiest = _makespan_items(remaining, cs, n)
    tail = _tail(p, cs, n)
    # Workers beyond the chunks have nothing to run and take no share of the cores.
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
    cpu = remaining * (t * min(r, 1.0) + item_pickle + p.result_pickle_time) + n_chunks * costs.process_task_cpu
    usable = cores_beside(active, cores, p.others_cores)
    total = start + max(work + first_chunk, parent, cpu / usable)
    return Candidate(kind, n, cs, total, start, work, transfer, dispatch)


def _worker_warmup(p: Profile, costs: PoolCosts) -> float:
    """A first call's one-time cost, paid again (side by side: once) by spawn and forkserver
    workers; a forked one inherits what the sample's first call left."""
    if p.warmup_time is None or costs.start_method == "fork":
        return 0.0
    return max(p.warmup_time - p.item_time_mean, 0.0)


def _tail(p: Profile, cs: int, n: int) -> float:
    """The skew tail: the slowest of n chunks of cs items beyond the mean."""
    return p.item_time_std * math.sqrt(cs) * math.sqrt(2.0 * math.log(n)) if n > 1 else 0.0


def _pickling(p: Profile, cs: int) -> tuple[float, float, float, float, float]:
    """Pickling per item in chunks of cs: (item dump + load, item load, item bytes, the
    worker's side, the caller's side); one object as every item travels once a chunk."""
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
    """The best chunksize for ``kind`` x ``n``: the largest within 2% of the fastest, up to a
    quarter of each worker's share and about ``CHUNK_SECONDS`` of work (a quarter of that for
    input of unknown length); else the fastest under that cap."""
    g = gil_share(p, gil_enabled)
    cands = [_predict(kind, n, cs, remaining, p, costs, cores, g) for cs in _chunk_options(remaining, n)]
    fastest = min(c.predicted_time for c in cands)
    seconds = constants.CHUNK_SECONDS if p.n_items is not None else constants.CHUNK_SECONDS / 4
    cap = max(1, min(-(-remaining // (4 * n)), int(seconds / max(p.item_time_mean, 1e-9))))
    capped = [c for c in cands if c.chunksize <= cap]
    close = [c for c in capped if c.predicted_time <= fastest * 1.02]
    if close:
        return max(close, key=lambda c: c.chunksize)
    return min(capped or cands, key=lambda c: c.predicted_time)


def predict_dask(cs: int, remaining: int, p: Profile, cluster: Any, g: float | None = None) -> Candidate:
    """A run on a Dask cluster (:class:`~autopar.backends.dask.ClusterCosts`) in tasks of
    ``cs`` items: pickling as for processes, the bytes at the measured bandwidth, each task
    its queued share of the scheduler (the first a full round trip), no start cost; a worker's
    busy threads share one GIL as local threads would (``g``)."""
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
    """What explain() says about the cluster's threads per worker for this work."""
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
    """The best task size: the largest within 2% of the fastest leaving 4 tasks a thread, else the fastest."""
    n = max(1, cluster.threads)
    sizes = set(_chunk_options(remaining, n)) | {dask_chunksize(p, remaining, n, cluster.task_seconds)}
    sizes |= {2**k for k in range(max(1, remaining).bit_length())}  # fewer tasks than threads too
    cap = max(1, -(-remaining // (4 * n)))
    cands = [predict_dask(cs, remaining, p, cluster, g) for cs in sorted(sizes)]
    fastest = min(c.predicted_time for c in cands)
    close = [c for c in cands if c.predicted_time <= fastest * 1.02 and c.chunksize <= cap]
    return max(close, key=lambda c: c.chunksize) if close else min(cands, key=lambda c: c.predicted_time)


def dask_chunksize(p: Profile, remaining: int, threads: int, task_seconds: float | None = None) -> int:
    """Items per task on ``threads`` worker threads: a task's work at least
    ``1 / DASK_TASK_SHARE`` times its round trip (``task_seconds``, else
    ``DASK_TASK_SECONDS``), and at least 4 tasks a thread where the job is that long."""
    if task_seconds is None:
        task_seconds = constants.DASK_TASK_SECONDS
    item = max(p.item_time_mean, 1e-9)
    enough = math.ceil(task_seconds / constants.DASK_TASK_SHARE / item)
    balanced = max(1, -(-remaining // (4 * threads)))
    return max(1, min(enough, balanced))
