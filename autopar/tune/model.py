"""The cost model's choice among the candidates :mod:`autopar.tune.predict` predicts.

Serial wins unless the best parallel candidate is clearly faster (``MIN_SPEEDUP`` and
``MIN_SAVING``), a process candidate even with its pickling at ``TRANSFER_DOUBT`` times the
measured cost; threads win over processes within ``THREAD_PREFERENCE`` (no copies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from . import constants
from .costs import PoolCosts
from .predict import (  # noqa: F401  (_makespan_items, dask_chunksize: imported from here too)
    Candidate, _makespan_items, _predict, best_chunksize, best_dask, dask_chunksize, dask_threads_advice, gil_share,
    predict_dask, shared_resource,
)
from .sample import Profile
from .system import SystemInfo

__all__ = ["Candidate", "Decision", "decide", "best_chunksize", "workload_type"]


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
    if cpu_ratio >= constants.CPU_RATIO_CPU:
        return "cpu"
    if cpu_ratio <= constants.CPU_RATIO_IO:
        return "io"
    return "mixed"


def _with_blas_capped(p: Profile, reasons: list[str]) -> tuple[Profile, float]:
    """(the profile pools are modelled on, serial's item time): where the sample timed items
    with BLAS capped, pools get that time at one core an item, serial where it is faster."""
    if not p.single_blas_time:
        return p, p.item_time_mean
    reasons.append(
        f"native (BLAS) threads capped at one per worker: items took {p.single_blas_time * 1e3:.3g} ms "
        f"so, {p.item_time_mean * 1e3:.3g} ms with the default threads"
    )
    ratio = p.single_blas_time / p.item_time_mean
    capped = replace(
        p, item_time_mean=p.single_blas_time, item_time_std=p.item_time_std * ratio,
        item_time_max=p.item_time_max * ratio, cpu_ratio=min(p.cpu_ratio, 1.0),
    )
    return capped, serial_blas_time(p) or p.item_time_mean


def serial_blas_time(p: Profile) -> float | None:
    """Item time of a serial run with BLAS capped at one thread, where that is clearly faster,
    or, beside other processes' work (see ``_blas_step``), not slower."""
    if p.single_blas_time and p.single_blas_time < constants.BLAS_FASTER * p.item_time_mean:
        return p.single_blas_time
    if p.single_blas_time and p.others_cores > 0 and p.single_blas_time <= p.item_time_mean:
        return p.single_blas_time
    return None


def _dask_candidate(p: Profile, cluster: Any, remaining: int, chunksize: int | None, gil_enabled: bool, reasons: list[str]) -> Candidate:
    """The cluster as a candidate (at ``chunksize``, else its best), with its advice."""
    g = gil_share(p, gil_enabled)
    advice = dask_threads_advice(p, cluster, g)
    if advice is not None:
        reasons.append(advice)
    return predict_dask(chunksize, remaining, p, cluster, g) if chunksize else best_dask(remaining, p, cluster, g)


def _n_options(limit: int, cores: int) -> list[int]:
    opts = {cores, limit}  # the limit: e.g. one worker per remaining item
    n = 1
    while n <= limit:
        opts.add(n)
        n *= 2
    return sorted(o for o in opts if 1 <= o <= limit)


def _fewest_workers(best: Candidate, ranked: list[Candidate], cpu_ratio: float = 1.0) -> Candidate:
    """Within ``FEWER_WORKERS`` of ``best``'s time, the same kind with the fewest workers
    (the most, for threads of work that computes but also waits)."""
    close = [
        c
        for c in ranked
        if c.executor_type == best.executor_type and c.predicted_time <= best.predicted_time * constants.FEWER_WORKERS
    ]
    if best.executor_type == "thread" and constants.CPU_RATIO_IO < cpu_ratio < constants.PURE_CPU:
        return max(close, key=lambda c: (c.n_jobs, -c.predicted_time))
    return min(close, key=lambda c: (c.n_jobs, c.predicted_time))


def _worker_limits(
    p: Profile, system: SystemInfo, costs: PoolCosts, remaining: int, wtype: str, max_jobs: int | None,
    reasons: list[str], warnings: list[str],
) -> tuple[int, int, int]:
    """(thread limit, process limit, memory cap): n workers must hold n items at their peak."""
    cores = system.usable_cores
    per_worker = max(p.peak_memory_per_item, int(p.item_bytes + p.result_bytes))
    memory_cap = constants.MAX_THREADS
    if per_worker > 0:
        memory_cap = max(1, int(constants.MEMORY_SHARE * system.available_memory // per_worker))
    proc_cap = max(1, int(constants.MEMORY_SHARE * system.available_memory // (per_worker + costs.process_worker_memory + 1)))
    results_total = (p.n_done + remaining) * p.result_bytes
    if results_total > 0.5 * system.available_memory:
        warnings.append(
            f"the results will take about {results_total / 2**30:.1f} GiB, more than half of the "
            f"{system.available_memory / 2**30:.1f} GiB available; consider execute_iter() to stream them"
        )
    thread_limit = min(remaining, constants.MAX_THREADS, memory_cap)
    # A few items left: one worker each, sharing the cores, ends them together.
    few = remaining if remaining <= constants.FEW_ITEMS * cores else 0
    if wtype != "io" and not (p.thread_scaling and p.probe_threads > cores and p.thread_scaling > cores):
        # No more threads than cores unless the probe measured a gain; 2 * cores / r for waits.
        r = max(p.cpu_ratio, 1e-3)
        thread_limit = min(thread_limit, max(cores if r >= constants.PURE_CPU else math.ceil(2 * cores / r), few))
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
    """A process candidate again with its pickling at ``TRANSFER_DOUBT`` times the cost."""
    if c.executor_type != "process":
        return c
    d = constants.TRANSFER_DOUBT
    doubted = replace(
        p, item_pickle_time=p.item_pickle_time * d, item_load_time=p.item_load_time * d,
        result_pickle_time=p.result_pickle_time * d, result_load_time=p.result_load_time * d,
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
        if local is not None and local.predicted_time <= best.predicted_time * constants.LOCAL_PREFERENCE:
            reasons.append(
                f"{local.label()} is predicted within {round((constants.LOCAL_PREFERENCE - 1) * 100)}% of the cluster "
                f"({local.predicted_time:.3g} s against {best.predicted_time:.3g} s): local wins, nothing leaves the machine"
            )
            best = _fewest_workers(local, ranked, cpu_ratio)
    if best.executor_type == "process":
        margin = constants.THREAD_PREFERENCE if cpu_ratio >= constants.PURE_CPU else constants.WAITING_THREAD_PREFERENCE
        thread_alt = next((c for c in ranked if c.executor_type == "thread"), None)
        if thread_alt is not None and thread_alt.predicted_time <= best.predicted_time * margin:
            best = _fewest_workers(thread_alt, ranked, cpu_ratio)
            reasons.append(
                f"threads and processes are predicted within {round((margin - 1) * 100)}%: threads win (no copies)"
            )
    if best.executor_type != "serial" and serial_allowed:
        saving = serial.predicted_time - best.predicted_time
        doubted = doubt(best)
        if serial.predicted_time < best.predicted_time * constants.MIN_SPEEDUP or saving < constants.MIN_SAVING:
            reasons.append(
                f"serial: the best parallel choice, {best.label()}, is not clearly faster "
                f"({best.predicted_time:.3g} s against {serial.predicted_time:.3g} s serial)"
            )
            best = serial
        elif serial.predicted_time < doubted.predicted_time * constants.MIN_SPEEDUP:
            reasons.append(
                f"serial: {best.label()} is predicted {best.predicted_time:.3g} s against "
                f"{serial.predicted_time:.3g} s serial, but {doubted.predicted_time:.3g} s if pickling costs "
                f"{constants.TRANSFER_DOUBT:g}x as much in the workers as here (objects built in a forked worker cost more)"
            )
            best = serial
    return best


def _remaining(p: Profile, warnings: list[str]) -> int:
    """Items left; for input of unknown length, at least UNKNOWN_SECONDS of work, warned."""
    if p.n_remaining is not None:
        return p.n_remaining
    remaining = max(10 * p.n_done, 100, math.ceil(constants.UNKNOWN_SECONDS / max(p.item_time_mean, 1e-9)))
    warnings.append(
        f"the number of items is unknown; the model assumed {remaining} more "
        "(pass n_items= for a better estimate)"
    )
    return remaining


def decide(
    profile: Profile, system: SystemInfo, costs: PoolCosts, *,
    executor_types: Iterable[str] = ("serial", "thread", "process"), prefer_threads_for_io: bool = True,
    max_jobs: int | None = None, n_jobs: int | None = None, chunksize: int | None = None, cluster: Any = None,
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
    if (remaining > 0 and serial.predicted_time >= constants.MIN_SAVING) or "serial" not in allowed:
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
    return Decision(best, serial, tuple(ranked), remaining, assumed, wtype, tuple(reasons), tuple(warnings), memory_cap)
