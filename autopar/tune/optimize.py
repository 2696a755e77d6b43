"""optimize(): sample the work, feed the cost model, return an OptimizationResult."""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import replace
from typing import Any, Callable, Iterable

from .._words import scaling_words
from ..backends.dask import cluster_costs
from .model import Candidate, Decision, decide
from .predict import gil_share
from .result import OptimizationResult
from . import constants, wisdom
from .sample import SampleStash, known_length, one_shot, sample
from .costs import pool_costs
from .measure import native_threads, rss
from .system import default_start_method, system_info, threaded_blas_loaded
from ..options import EXECUTOR_TYPES, Options, check_func_and_data

__all__ = ["optimize", "optimize_with", "pending_result"]

# One-shot iterators optimize() has read from, for execute(func, it) without the result (weakly).
_pending: "weakref.WeakKeyDictionary[Any, OptimizationResult]" = weakref.WeakKeyDictionary()
LOST_ITEM_TIME = 1.0  # item time assumed where the sample's worker lost its first item: chunks of one


def pending_result(data: Any) -> OptimizationResult | None:
    """The result of an earlier optimize() on the one-shot iterator ``data``, if still unused."""
    try:
        result = _pending.get(data)
    except TypeError:  # not weak-referenceable (or not hashable)
        return None
    if result is None or result.stash is None or not result.stash.matches(data):
        return None
    return result


def _main_reason(d: Decision, profile: Any) -> str:
    best = d.best
    scaling = profile.thread_scaling
    probe = (
        scaling_words(profile.probe_threads, scaling)
        if scaling is not None
        else "thread scaling not measured"
    )
    if best.executor_type == "serial":
        if d.remaining == 0:
            return "serial: nothing is left to run"
        if any(r.startswith("serial:") for r in d.reasons):  # the model said why
            return "serial: no pool is predicted to be clearly faster than running the items here"
        return (
            f"serial: the remaining work ({d.serial.predicted_time:.3g} s) is too small for a pool "
            "to pay for its start and dispatch costs"
        )
    if best.executor_type == "dask":
        return (
            f"dask: the cluster's {best.n_jobs} threads beat every local pool by more than its round trips "
            f"and transfers cost ({best.predicted_time:.3g} s against {d.serial.predicted_time:.3g} s serial)"
        )
    if best.executor_type == "thread":
        why = "the work releases the GIL"
        if d.workload_type == "io":
            why = "the work waits more than it computes"
        elif d.workload_type == "mixed" and gil_share(profile) > 0.0:  # the model's reading of the probe
            why = "the work waits part of its time, and threads overlap the waits"
        return f"threads: {why} ({probe}), and threads copy nothing"
    return (
        f"processes: the work is {d.workload_type}-bound and threads do not run it in parallel "
        f"({probe}); pickling and pool start are paid back"
    )


def optimize(
    func: Callable[[Any], Any],
    data: Iterable[Any],
    *,
    prefer_threads_for_io: bool = True,
    executor_type: str | None = None,
    n_jobs: int | None = None,
    chunksize: int | None = None,
    n_items: int | None = None,
    start_method: str | None = None,
    max_jobs: int | None = None,
    sample_time: float = 0.2,
    errors: str = "raise",
    cluster: Any = None,
    cache: bool = True,
) -> OptimizationResult:
    """Measure ``func`` on a sample of ``data`` and choose how to run the rest.

    Parameters
    ----------
    func, data
        The work: ``[func(x) for x in data]``. ``data`` may be a one-shot iterator; the items
        the sample consumes are kept with their results for :func:`autopar.execute`.
    prefer_threads_for_io
        ``False`` never sends I/O-bound work to threads.
    executor_type, n_jobs, chunksize
        Fix part of the answer (``"serial"``, ``"thread"`` or ``"process"``); the model chooses
        the rest.
    n_items
        The number of items, when ``data`` has no ``len()``.
    start_method
        Start method of process pools (default: the platform's, or ``AUTOPAR_START_METHOD``).
    max_jobs
        An upper bound on the number of workers.
    sample_time
        Most seconds the serial sample may take (less for small jobs: 2.5% of the estimated
        total).
    errors
        ``"collect"``: an item that fails in the sample gets an ``ItemFailed`` in its place
        (as :func:`autopar.execute` does) instead of raising.
    cluster
        A Dask ``distributed.Client``: its cluster is a candidate too (``executor_type``
        ``"dask"``), its costs measured once per scheduler; a local pool predicted within
        20% of it wins. ``execute(func, data, result=result)`` then runs on that scheduler.
    cache
        Use the tuning cache (also off with ``AUTOPAR_CACHE=off``): a job measured before
        (same function and code, same kind of data, same machine) is decided from the kept
        figures without a sample; a new one's sample is kept. ``result.cache`` says "hit"
        or "miss" (None: no key, e.g. no items). A one-shot iterator (a generator) is known
        by its type, where a generator's code is and ``n_items``; on a hit its first items
        (about 50 ms of work) are taken, not run, and handed to ``execute()``.
    """
    check_func_and_data(func, data)
    opts = Options.of(locals())
    if opts.on_dask and opts.cluster is None:
        raise ValueError("optimize(executor_type='dask') needs cluster=<distributed.Client>")
    result = optimize_with(func, data, opts)
    if result.stash is not None:  # the caller has the items back, and may change them before execute()
        p = result.profile
        result.stash.freeze(data, budget=0.5 * p.item_time_mean * result.stash.n_done, per_item=p.item_pickle_time or 0.0)
    return result


def _without_losers(types: tuple[str, ...], verdicts: dict[str, Any], kind: str | None) -> tuple[str, ...]:
    """Without the kinds whose runs of this job lost to serial, unless asked for (threads
    aside: their verdict corrects the profile instead)."""
    if kind is not None or not verdicts:
        return types
    return tuple(t for t in types if t == "thread" or t not in verdicts)


def _verdict_notes(verdicts: dict[str, Any]) -> tuple[str, ...]:
    notes = []
    for k, v in sorted(verdicts.items()):
        what = "its figures replace the probe's" if k == "thread" else "not a candidate again"
        notes.append(f"an earlier run of this job on {k} x{int(v['n_jobs'])} was slower than serial (x{v['speedup']:.2f}): {what}")
    return tuple(notes)


def optimize_with(func: Callable[[Any], Any], data: Iterable[Any], opts: Options) -> OptimizationResult:
    """optimize() with its options already checked (execute() calls this)."""
    t0 = time.perf_counter()
    kind = opts.executor_type
    cluster = cluster_costs(opts.cluster) if opts.cluster is not None else None  # once per scheduler
    types = EXECUTOR_TYPES + (("dask",) if cluster is not None else ()) if kind is None else (kind,)
    method = opts.start_method or default_start_method()
    system = system_info(blas=False)
    costs = pool_costs(method).for_parent(rss())  # a large parent forks slowly
    key = _cache_key(func, data, opts, system, method, cluster)
    entry = wisdom.lookup(key) if key is not None else None
    verdicts = entry.verdicts if entry is not None else wisdom.verdicts(key) if key is not None else {}
    types = _without_losers(types, verdicts, kind)
    stash, lost = None, False
    if entry is not None:  # measured before: decide again from the kept figures, no sample
        n = known_length(data, opts.n_items)
        if n is None and one_shot(data):
            # A one-shot input of no known length: its first items, taken (not run) and handed
            # back to execute(), tell a short or empty one from a long one.
            stash, n = _peek(func, data, entry.profile.item_time_mean)
        # Whether a BLAS pool is running is this process's state now, not the cached one's.
        blas_live = entry.profile.cpu_ratio >= constants.CPU_BOUND and native_threads() > 0 and threaded_blas_loaded()
        profile = replace(
            entry.profile, n_sampled=0, n_probed=0, n_items=n, exhausted=False, sample_time=0.0, blas_live=blas_live,
            others_cores=0.0,  # (the load while that sample ran, not now)
        )
    else:
        profile, stash = sample(
            func, data, n_items=opts.n_items, budget=opts.sample_time, probe_threads=max(2, min(system.usable_cores, 4)),
            cores=system.usable_cores,
            probe=kind in (None, "thread"),  # helper threads only where threads are candidates
            collect=opts.collect, finish=kind in (None, "serial"), timeout=opts.timeout,
            in_process=method if kind == "process" else None,  # processes asked for: never in the caller
        )
        lost = kind == "process" and not profile.n_sampled and not profile.exhausted
        if lost:  # nothing came back from the sample's worker: take the items as slow
            profile = replace(profile, item_time_mean=LOST_ITEM_TIME, item_time_max=LOST_ITEM_TIME, cpu_ratio=1.0)
        elif key is not None and wisdom.worth_keeping(profile):
            wisdom.store(key, wisdom.func_name(func), profile)
        profile = wisdom.corrected(profile, verdicts)
    d = decide(
        profile, system, costs, executor_types=types, prefer_threads_for_io=opts.prefer_threads_for_io,
        max_jobs=opts.max_jobs, n_jobs=opts.n_jobs, chunksize=opts.chunksize, cluster=cluster,
    )
    result = _result(d, profile, stash, system, costs, method, kind, time.perf_counter() - t0)
    if entry is None and lost:
        note = (
            "the sample's first item did not come back from its worker process (a crash, a hang, or it cannot be sent): "
            f"nothing measured; items taken as {LOST_ITEM_TIME:g} s each, chunks of one"
        )
        result = replace(result, warnings=result.warnings + (note,))
    if cluster is not None:
        result = replace(result, scheduler=cluster.address)
    if key is not None:
        result = replace(
            result, cache_key=key, cache="hit" if entry is not None else "miss", cache_runs=entry.runs if entry is not None else 0
        )
        if entry is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.created))
            runs = f", {entry.runs} runs since" if entry.runs else ""
            note = f"figures from the tuning cache (measured {when}{runs}; key {key[:12]}): no sample taken"
            result = replace(result, reasons=result.reasons + (note,))
    result = replace(result, reasons=result.reasons + _verdict_notes(verdicts))
    if stash is not None and stash.input_error is not None:
        err = stash.input_error
        warnings = (
            f"the input raised {type(err).__name__}: {err} after {stash.n_done + len(stash.ahead)} items; execute() gives "
            "the results before it, then raises it",
        )
        result = replace(result, warnings=result.warnings + warnings)
    if stash is not None and stash.one_shot:
        try:
            _pending[data] = result
        except TypeError:
            pass  # not weak-referenceable: the caller must pass the result to execute()
    return result


PEEK_WORK = 0.05  # seconds of work (at the kept item time), and of waiting, a hit takes ahead from a one-shot input of unknown length


def _peek(func: Callable[[Any], Any], data: Any, item_time: float) -> tuple[SampleStash, int | None]:
    """The first items of a one-shot input, about ``PEEK_WORK`` of work at ``item_time`` (at
    least 2, at most 10,000) and for at most ``PEEK_WORK`` seconds of waiting for them (a
    live feed), taken and not run, in a stash for execute(); the item count where the input
    ended within them (or raised: the count before it), else None."""
    want = min(max(math.ceil(PEEK_WORK / max(item_time, 1e-9)), 2), 10_000)
    items: list[Any] = []
    error: Exception | None = None
    ended = False
    t0 = time.perf_counter()
    try:
        while len(items) < want and (not items or time.perf_counter() - t0 < PEEK_WORK):
            items.append(next(data))
    except StopIteration:
        ended = True
    except Exception as exc:  # the input itself failed: execute() raises it after these
        ended, error = True, exc
    stash = SampleStash(
        func=func, data=data, one_shot=True, item_blocks=[], result_blocks=[], ahead=items, exhausted=ended,
        failures=[], input_error=error,
    )
    return stash, len(items) if ended else None


def _cache_key(func: Callable[[Any], Any], data: Iterable[Any], opts: Options, system: Any, method: str, cluster: Any) -> str | None:
    """The job's key in the tuning cache (None: the cache is off, or the job has none)."""
    if not wisdom.enabled(opts.cache):
        return None
    bounds = (
        opts.executor_type, opts.n_jobs, opts.chunksize, opts.max_jobs, opts.prefer_threads_for_io, opts.errors,
        cluster.address if cluster is not None else None,
    )
    return wisdom.job_key(func, data, opts.n_items, system, method, bounds)


def _runner_ups(d: Decision) -> tuple[Candidate, ...]:
    """The best candidate of each other (kind, n_jobs), five at most, always with the best of
    the other pool kind (a run losing on its pool may switch to it)."""
    seen: set[tuple[str, int]] = {(d.best.executor_type, d.best.n_jobs)}
    out: list[Candidate] = []
    for c in d.ranked:
        if (c.executor_type, c.n_jobs) not in seen:
            seen.add((c.executor_type, c.n_jobs))
            out.append(c)
    other = {"thread": "process", "process": "thread"}.get(d.best.executor_type)
    alt = next((c for c in out if c.executor_type == other), None)
    top = out[:5]
    if alt is not None and alt not in top:
        top[-1] = alt
    return tuple(top)


def _result(d: Decision, profile: Any, stash: Any, system: Any, costs: Any, method: str, kind: str | None, elapsed: float) -> OptimizationResult:
    best = d.best
    reasons = (_main_reason(d, profile),) + d.reasons
    if kind is not None:
        reasons += (f"executor_type={kind!r} was given",)
    if best.executor_type == "thread":
        start_cost = costs.thread_start(best.n_jobs)
    elif best.executor_type == "dask":
        start_cost = 0.0  # the cluster is up
    else:  # a process pool's (serial: one on every core)
        start_cost = costs.process_start(best.n_jobs if best.executor_type == "process" else system.usable_cores)
    return OptimizationResult(
        executor_type=best.executor_type, n_jobs=best.n_jobs, chunksize=best.chunksize,
        estimated_speedup=d.serial.predicted_time / best.predicted_time if best.predicted_time > 0 else 1.0,
        workload_type=d.workload_type, cpu_ratio=profile.cpu_ratio, predicted_time=best.predicted_time,
        serial_time=d.serial.predicted_time, n_remaining=d.remaining, start_method=method,
        usable_cores=system.usable_cores, profile=profile, start_cost=start_cost, runner_ups=_runner_ups(d),
        reasons=reasons, warnings=d.warnings, optimize_time=elapsed, _stash=stash,
    )
