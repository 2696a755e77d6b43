"""execute(): run the work with the chosen configuration, results in input order.

The public calls turn their keyword arguments into one :class:`~autopar.options.Options`,
take the items optimize()'s sample already ran (their results are handed back first, never
computed again), settle the configuration (the caller's overrides on top of the result) and
hand the rest to the serial loop here or to :class:`~autopar.run.dispatch.PoolRun`.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable, ContextManager, Iterable, Iterator

from ..backends.blas import blas_share, capped_blas
from ..backends.dask import DaskExecutor, cluster_costs, connect, is_client
from ..backends.pools import executor_kind, pool_size
from ..backends.worker import Limited, reads_in_place, run_items, take_some
from ..errors import ItemFailed, settle, unwrapped
from ..options import Options, check_flag, check_func_and_data
from ..tune import wisdom
from ..tune.costs import pool_costs
from ..tune.measure import rss
from ..tune.model import best_chunksize, best_dask, serial_blas_time
from ..tune.optimize import optimize_with, pending_result
from ..tune.result import OptimizationResult
from ..tune.sample import known_length
from ..tune.system import default_start_method, usable_cores
from .dispatch import Job, PoolRun
from .report import ExecutionIterator, ExecutionReport, Progress

__all__ = ["ExecutionIterator", "ExecutionReport", "execute", "execute_iter"]

# The serial loop's largest block where progress is shown or the input is held a block at a
# time: blocks stop doubling at 20 ms of work anyway, so this bounds only blocks of
# sub-microsecond items (65,536 of 50 ns: 3 ms), and an input whose items turn slow after
# many cheap ones. A list or tuple read in place with no one watching: QUIET_SERIAL_BLOCK.
MAX_SERIAL_BLOCK = 65536
QUIET_SERIAL_BLOCK = 1 << 20
MIN_CHECKED_RUN = 0.02  # a thread run predicted shorter is not judged on its time (noise)
# A pool run whose items take less serially is not judged against serial: a pool's start
# (2-20 ms here) and one scheduling hiccup are most of it.
MIN_LOST_RUN = 0.1


def _configure(result: OptimizationResult | None, opts: Options, pool: Executor | None = None) -> tuple[str, int, int]:
    """Final (executor_type, n_jobs, chunksize): the overrides on top of the result."""
    kind, n_jobs, chunksize = opts.executor_type, opts.n_jobs, opts.chunksize
    if result is None:
        assert kind is not None
        return kind, n_jobs or usable_cores(), chunksize or 1
    kind = kind or result.executor_type
    if kind == "serial":
        return "serial", 1, 1
    same = kind == result.executor_type
    n = n_jobs or (result.n_jobs if same else result.usable_cores)
    if chunksize is None and kind == "dask" and not same and isinstance(pool, DaskExecutor):
        # A local result run on a cluster: the model's task size for that cluster.
        chunksize = best_dask(max(result.n_remaining, 1), result.profile, cluster_costs(pool.client)).chunksize
    if chunksize is None:
        if same and n == result.n_jobs:
            chunksize = result.chunksize
        else:
            costs = pool_costs(result.start_method).for_parent(rss())
            remaining = max(result.n_remaining, 1)
            chunksize = best_chunksize(kind, n, remaining, result.profile, costs, result.usable_cores).chunksize
    return kind, n, chunksize


def execute_iter(
    func: Callable[[Any], Any],
    data: Iterable[Any],
    *,
    result: OptimizationResult | None = None,
    executor_type: str | None = None,
    n_jobs: int | None = None,
    chunksize: int | None = None,
    prefer_threads_for_io: bool = True,
    start_method: str | None = None,
    n_items: int | None = None,
    max_jobs: int | None = None,
    progress: Any = False,
    desc: str | None = None,
    pool: Executor | None = None,
    adapt: bool = True,
    sample_time: float = 0.2,
    errors: str = "raise",
    timeout: float | None = None,
    retries: int = 0,
    retry_backoff: float = 0.1,
    scheduler: str | None = None,
    cluster: Any = None,
    cache: bool = True,
) -> ExecutionIterator:
    """Like :func:`execute`, but yields results in input order as they are ready.

    An item that raises StopIteration fails like any other; where :func:`execute` raises
    the StopIteration itself, this iterator raises ``RuntimeError`` from it (as a generator
    does): a StopIteration out of ``__next__`` would end the caller's loop without a word.
    """
    t_begin = time.perf_counter()
    check_func_and_data(func, data)
    return run_with(func, data, Options.of(locals()), result, pool, t_begin)


def run_with(
    func: Callable[[Any], Any],
    data: Iterable[Any],
    opts: Options,
    result: OptimizationResult | None = None,
    pool: Executor | None = None,
    t_begin: float | None = None,
) -> ExecutionIterator:
    """execute_iter() with its options already checked."""
    t_begin = time.perf_counter() if t_begin is None else t_begin
    if result is not None and not isinstance(result, OptimizationResult):
        raise TypeError(f"result must be what optimize() returned (an OptimizationResult), got {type(result).__name__}")
    if pool is not None and not isinstance(pool, Executor) and not is_client(pool):
        raise TypeError(
            f"pool must be a concurrent.futures executor (see autopar.get_executor) or a Dask Client, got {type(pool).__name__}"
        )
    own_pool = False
    if pool is not None and opts.cluster is not None:
        raise ValueError("give pool= or cluster=, not both")
    if pool is not None and is_client(pool):
        pool = DaskExecutor(pool)
    elif pool is None and opts.cluster is not None and opts.on_dask:
        pool = DaskExecutor(opts.cluster)
    elif pool is None and opts.cluster is None and (
        opts.on_dask or (opts.executor_type is None and result is not None and result.executor_type == "dask")
    ):
        scheduler = opts.scheduler or (result.scheduler if result is not None else None)
        if scheduler is None:
            raise ValueError("executor_type='dask' needs scheduler='tcp://host:port' or pool=<distributed.Client>")
        pool, own_pool = connect(scheduler), True
    try:
        return _run_with(func, data, opts, result, pool, own_pool, t_begin)
    except BaseException:
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)  # type: ignore[union-attr]
        raise


def _run_with(
    func: Callable[[Any], Any],
    data: Iterable[Any],
    opts: Options,
    result: OptimizationResult | None,
    pool: Executor | None,
    own_pool: bool,
    t_begin: float,
) -> ExecutionIterator:
    if pool is not None:
        pkind = executor_kind(pool)
        if opts.executor_type is not None and opts.executor_type != pkind:
            raise ValueError(f"executor_type={opts.executor_type!r} does not match the given {pkind} pool")
        opts = replace(opts, executor_type=pkind, n_jobs=opts.n_jobs or pool_size(pool))
    if result is None:
        result = pending_result(data)
    if result is None and not opts.fully_given:
        # On Dask the model, told the cluster, sizes the tasks.
        cluster = pool.client if isinstance(pool, DaskExecutor) else None
        result = optimize_with(func, data, replace(opts, cluster=cluster, scheduler=None) if cluster is not None else opts)
    if pool is None and opts.cluster is not None and result is not None and result.executor_type == "dask":
        pool = DaskExecutor(opts.cluster)  # optimize() chose the cluster
    kind, n_jobs, chunksize = _configure(result, opts, pool)

    # Items the sample already ran: reuse their results (or re-run kept items for a new func).
    prefix: list[list[Any]] = []  # result blocks
    rest: Iterator[Any] = iter(data)
    stash = result.stash if result is not None else None
    total = known_length(data, opts.n_items)
    claimed = stash.claim(func, data) if stash is not None else None
    if claimed is not None:
        prefix, rest = claimed
        if total is None and result is not None:  # a one-shot iterator: the sample saw its end, or not
            total = result.profile.n_items
        if prefix and stash.failures and not opts.collect:  # type: ignore[union-attr]
            # the sample collected failures the caller did not ask to collect
            first = next(r for b in prefix for r in b if isinstance(r, ItemFailed))
            settle([(first.index, first.exception, first.traceback)], "serial (sample)", False)

    method = opts.start_method or (result.start_method if result else default_start_method())
    report = ExecutionReport(
        executor_type=kind,
        n_jobs=n_jobs,
        chunksize=chunksize,
        final_chunksize=chunksize,
        start_method=method if kind == "process" else None,
        optimize_time=time.perf_counter() - t_begin,
        n_from_sample=sum(map(len, prefix)),
        started_at=t_begin,
    )
    if prefix and stash is not None:
        report.failures.extend(stash.failures)
    if result is not None:
        report.predicted_time = result.predicted_time
        report.predicted_speedup = result.estimated_speedup
        report.predicted_item_time = result.profile.item_time_mean
    job = Job(func, kind, n_jobs, chunksize, method, opts, result, pool, Progress(opts.progress, total, opts.desc), report, own_pool)
    return ExecutionIterator(_run(job, prefix, rest, total, t_begin), report)


def execute(
    func: Callable[[Any], Any],
    data: Iterable[Any],
    *,
    result: OptimizationResult | None = None,
    executor_type: str | None = None,
    n_jobs: int | None = None,
    chunksize: int | None = None,
    prefer_threads_for_io: bool = True,
    start_method: str | None = None,
    n_items: int | None = None,
    max_jobs: int | None = None,
    progress: Any = False,
    desc: str | None = None,
    pool: Executor | None = None,
    adapt: bool = True,
    sample_time: float = 0.2,
    errors: str = "raise",
    timeout: float | None = None,
    retries: int = 0,
    retry_backoff: float = 0.1,
    scheduler: str | None = None,
    cluster: Any = None,
    cache: bool = True,
    return_report: bool = False,
) -> Any:
    """Run ``func`` over ``data`` the best way; the same list as ``[func(x) for x in data]``.

    Parameters
    ----------
    result
        An :class:`OptimizationResult` from :func:`optimize`; without one, ``execute`` calls
        ``optimize`` itself (unless the configuration is fully given). Results of the items
        ``optimize`` sampled are reused, not computed again.
    executor_type, n_jobs, chunksize
        Override the choice (``"serial"``, ``"thread"``, ``"process"`` or ``"auto"``).
    prefer_threads_for_io
        ``False`` never sends I/O-bound work to threads.
    progress
        ``True`` for a bar that counts items, or a callable ``f(done, total)``.
    pool, scheduler, cluster
        An executor to run on instead of a new pool (see :func:`get_executor`; a Dask
        ``distributed.Client``: chunks become tasks on its cluster; not shut down); a Dask
        scheduler's address (a client made and closed for the run); a Client whose cluster
        is one more candidate, used where the model predicts it fastest.
    cache
        The tuning cache (see :func:`optimize`); the run feeds back the item time it measured.
    adapt
        Correct the chunksize while running when chunk times leave the model's range.
    errors
        ``"raise"`` (the first failure stops the run) or ``"collect"``: a failed item's place in
        the results holds an :class:`ItemFailed` (index, exception, traceback) and the run goes
        on; ``report.failures`` lists the indices.
    timeout
        Seconds one item may run. A process worker stops the item (SIGALRM raises
        :class:`ItemTimeout` in it); an item stuck where no signal reaches it gets its worker
        killed and replaced. Threads cannot be stopped: the run raises ItemTimeout and the
        stuck call finishes in the background. On Dask: raised in the item's worker thread
        (a stuck call into C: its task cancelled, the call left to finish there).
    retries, retry_backoff
        When a process worker dies (killed, crashed, exited), run the items that were in flight
        again on a fresh pool, one at a time (a second crash names its item), up to ``retries``
        times, waiting ``retry_backoff * 2**attempt`` seconds first. Without retries the run raises
        :class:`WorkerDied` naming the items and how the worker ended (with ``errors="collect"``
        those items get a WorkerDied failure and the run goes on on a fresh pool).
    return_report
        Return ``(results, ExecutionReport)``.

    Raises
    ------
    Exception
        The exception ``func`` raised, with a note naming the item index (also in
        ``exc.autopar_item_index``) and, from a process worker, the worker's traceback as
        ``__cause__``. The rest of the work is cancelled.
    """
    check_func_and_data(func, data)
    check_flag("return_report", return_report)
    it = run_with(func, data, Options.of(locals()), result, pool, time.perf_counter())
    results = _collect(it)
    return (results, it.report) if return_report else results


def _collect(it: ExecutionIterator) -> list[Any]:
    """The run's results as one list; an item's StopIteration comes out as itself."""
    results: list[Any] | None = None
    try:
        with it:
            for block in it.blocks():
                if results is None:  # blocks are fresh lists: the first becomes the result (the
                    results = block  # sample's results of tiny items are most of them; no copy)
                else:
                    results.extend(block)
    except RuntimeError as exc:
        err = unwrapped(exc)
        if err is exc:
            raise
        raise err from err.__cause__  # the item's own cause (a worker's traceback) stays
    return [] if results is None else results


def _feed_back(job: Job, cpu: float, away: float = 0.0) -> None:
    """What the run measured goes back to the tuning cache: its item time in the workers for
    serial and process runs and a single thread. Several threads are judged on the run's wall
    time against the prediction instead: an item's time in a thread holds the other threads'
    share of the GIL, or not (a chunk of a few ms often runs within one switch interval), so
    it says nothing certain; a wrong kept thread scaling shows in the run's time. A pool run
    slower than serial (``cpu``: the process's CPU seconds over the run, for threads) leaves
    its verdict with the key (see :mod:`autopar.tune.wisdom`); ``away``: seconds the caller
    spent between blocks (a slow loop over execute_iter()), not the pool's."""
    result, report = job.result, job.report
    if result is None or result.cache_key is None or not report.measured_item_time:
        return
    lost = _lost(job, cpu, away)
    if lost is not None:
        report.cache = wisdom.observe(result.cache_key, None, lost=lost)
        return
    if job.kind != "thread" or job.n_jobs == 1:
        # A serial pick's run, every item done (a failed item's time is not an item's), may
        # replace the kept item time with a faster one (see wisdom.observe).
        serial = job.kind == "serial" and result.executor_type == "serial" and not report.failures
        report.cache = wisdom.observe(result.cache_key, report.measured_item_time, serial=serial)
        return
    predicted, took = report.predicted_time, report.run_time
    if not predicted or not took or predicted < MIN_CHECKED_RUN or result.profile.n_items is None:
        return  # (input of unknown length: the prediction is for a count the model assumed)
    report.cache = wisdom.observe(result.cache_key, None, stale=took > wisdom.THREAD_STALE_FACTOR * predicted)


def _lost(job: Job, cpu: float, away: float = 0.0) -> tuple[str, dict[str, float]] | None:
    """(pool kind, its figures) where a pool run was slower than the serial estimate of its
    items by more than the noise of one run (wisdom.LOST), on a run long enough to tell."""
    report, profile = job.report, job.result.profile  # type: ignore[union-attr]
    serial = report.serial_estimate
    took = report.run_time - away
    speedup = serial / took if serial and took > 0 and report.n_items > report.n_from_sample else None
    kind, n_jobs = job.kind, job.n_jobs
    if report.fallback_speedup is not None and report.lost_pool is not None:
        # The run found a pool losing on its own figures: it fell back to serial, or the
        # threads held the GIL in turn (and may have switched to processes since): no margin.
        speedup = report.fallback_speedup
        kind, n_jobs = report.lost_pool
    elif report.fell_back or speedup is None or speedup >= wisdom.LOST:
        return None
    if kind == "serial" or not serial or (serial < MIN_LOST_RUN and report.lost_pool is None):
        return None  # (a pool that lost on the run's own figures is judged at any length)
    figures = {"n_jobs": float(n_jobs), "speedup": round(speedup, 3)}
    if kind == "thread" and job.kind != "thread":  # left: the threads held the GIL computing
        figures["cpu_ratio"] = 1.0
    elif kind == "thread":
        n_run = report.n_items - report.n_from_sample
        if n_run > 0 and profile.item_time_mean > 0:
            figures["cpu_ratio"] = round(min(cpu / n_run / profile.item_time_mean, 1.0), 3)
    return kind, figures


def _serial(job: Job, rest: Iterator[Any], index: int) -> Iterator[list[Any]]:
    """The serial loop: blocks that grow while they stay short, so progress stays live."""
    func = job.func
    if job.opts.timeout is not None:
        func = Limited(func, job.opts.timeout)  # SIGALRM on the main thread, elsewhere raised into it
    t0, first = time.perf_counter(), index
    # Blocks start at about 2 ms of the sample's item time and double while under 20 ms; a
    # list or tuple read in place with no bar or callback watching starts at 20 ms, up to
    # QUIET_SERIAL_BLOCK (a block's own cost: 300,000 calls of x + 1 took 13-15 ms in a
    # comprehension, 19.4 ms in blocks from 2 ms, 16.3-17.2 ms from 20 ms).
    item_time = job.result.profile.item_time_mean if job.result is not None else 0.0
    quiet = reads_in_place(rest) and not job.bar.shown
    most = QUIET_SERIAL_BLOCK if quiet else MAX_SERIAL_BLOCK
    start = 0.02 if quiet else 0.002
    block_size = min(max(int(start / item_time), 1), most) if item_time > 0 else 1
    while True:
        block, error = take_some(rest, block_size)
        if not block:
            if error is not None:
                raise error  # the input itself failed: after every result before it
            break
        tb = time.perf_counter()
        out, failures = run_items(func, index, block, job.opts.collect, remote=False)
        job.report.span(index, len(block), tb, time.perf_counter(), "failed" if failures else "ok")
        job.failed(failures)
        index += len(block)
        job.bar.update(len(block))
        yield out
        if error is not None:
            raise error
        if time.perf_counter() - tb < 0.02:
            block_size = min(block_size * 2, most)
    if index > first:
        job.report.measured_item_time = (time.perf_counter() - t0) / (index - first)


def _native_threads(job: Job) -> ContextManager[Any]:
    """BLAS pools capped while the run lasts: one thread serially where the sample found items
    faster so; cores // n on n threads there or wherever a multi-threaded BLAS pool was
    running (``Profile.blas_live``); process workers cap their own."""
    result = job.result
    if result is None or job.kind in ("process", "dask"):
        return nullcontext()
    if job.kind == "serial":
        return capped_blas(1) if serial_blas_time(result.profile) else nullcontext()
    if not (result.profile.single_blas_time or result.profile.blas_live):
        return nullcontext()
    return capped_blas(blas_share(job.n_jobs, result.usable_cores))


def _run(job: Job, prefix: list[list[Any]], rest: Iterator[Any], total: int | None, t_begin: float) -> Iterator[list[Any]]:
    report = job.report
    t_run, cpu0 = time.perf_counter(), time.process_time()
    away = [0.0, 0.0]  # wall and CPU seconds the caller spent between blocks (execute_iter's loop)
    index = n_prefix = sum(map(len, prefix))
    try:
        job.bar.update(n_prefix)
        yield from prefix
        blocks = _serial(job, rest, index) if job.kind == "serial" else PoolRun(job, rest, index, total).results()
        with _native_threads(job):
            for values in blocks:
                index += len(values)
                t_out, c_out = time.perf_counter(), time.process_time()
                yield values
                away[0] += time.perf_counter() - t_out
                away[1] += time.process_time() - c_out
        report.completed = True
    finally:
        job.bar.close()
        if job.own_pool and job.pool is not None:
            job.pool.shutdown(wait=report.completed, cancel_futures=not report.completed)
        now = time.perf_counter()
        report.n_items = index
        report.run_time = now - t_run
        report.wall_time = now - t_begin
        if job.result is not None and report.completed:
            report.serial_estimate = (index - n_prefix) * job.result.profile.item_time_mean
            _feed_back(job, time.process_time() - cpu0 - away[1], away[0])
