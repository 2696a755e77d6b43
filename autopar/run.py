"""execute(): run the work with the chosen pool and hand results back in input order.

::

    data ─┬─► items the sample already ran ──► their kept results ─────────────────────┐
          │                                                                             │
          └─► rest ──► chunker ──► submit while fewer than 2n+1 chunks are in flight     │
                         ▲              │  thread: run_local(func, ...)                 │
                         │              │  process: run_remote(key, cloudpickled func)  │
                         │              ▼                                               ▼
               chunksize corrected   pool ──► (results, seconds, failure) ──► in-flight deque
               when measured chunk                  │                          (input order)
               times leave the model's              └─ failure / broken pool:        │
               range                                   cancel the rest, re-raise     ▼
                                                       with the item index      caller, progress

The look-ahead is bounded: at most ``2 * n_jobs + 1`` chunks are pulled from the input and not
yet handed back, so a lazy input is never materialised whole. No pool that ``execute()``
creates outlives the call: it is shut down on success and its workers are killed on an error,
a ``KeyboardInterrupt`` or an iterator closed early.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from itertools import chain, islice
from typing import Any, Callable, Iterable, Iterator

from . import _serialize
from ._worker import map_items, run_local, run_remote
from .errors import RemoteTraceback, WorkerDied, annotate
from .executors import executor_kind, make_executor, pool_size, terminate
from .model import best_chunksize
from .optimizer import check_args, optimize, pending_result
from .result import OptimizationResult
from .sample import known_length
from .system import default_start_method, pool_costs, usable_cores

__all__ = ["ExecutionIterator", "ExecutionReport", "execute", "execute_iter"]

ADAPT_FACTOR = 2.0  # measured/expected item time outside [1/2, 2] triggers a new chunksize


@dataclass
class ExecutionReport:
    """What a run did, against what the model predicted. Times in seconds."""

    executor_type: str
    n_jobs: int
    chunksize: int
    start_method: str | None
    n_items: int = 0
    n_from_sample: int = 0
    n_chunks: int = 0
    final_chunksize: int = 0
    optimize_time: float = 0.0
    run_time: float = 0.0
    wall_time: float = 0.0
    predicted_time: float | None = None
    predicted_speedup: float | None = None
    predicted_item_time: float | None = None
    measured_item_time: float | None = None
    serial_estimate: float | None = None
    chunksize_changes: list[tuple[int, int, int, str]] = field(default_factory=list)
    completed: bool = False

    @property
    def measured_speedup(self) -> float | None:
        """Serial estimate of the items this run executed over the time it took to run them."""
        if self.serial_estimate is None or self.run_time <= 0 or self.n_items == self.n_from_sample:
            return None
        return self.serial_estimate / self.run_time

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["measured_speedup"] = self.measured_speedup
        return d

    def summary(self) -> str:
        lines = [
            f"ran {self.n_items} items on {self.executor_type}"
            + (f" x{self.n_jobs} (chunksize {self.chunksize})" if self.executor_type != "serial" else "")
            + f" in {self.wall_time:.3f} s"
        ]
        if self.optimize_time > 1e-3:
            lines.append(f"optimize() took {self.optimize_time:.3f} s of it")
        if self.n_from_sample:
            lines.append(f"{self.n_from_sample} results came from optimize()'s sample")
        if self.predicted_time is not None:
            lines.append(
                f"the other {self.n_items - self.n_from_sample} items: predicted {self.predicted_time:.3f} s, "
                f"measured {self.run_time:.3f} s"
            )
        if self.predicted_item_time and self.measured_item_time:
            lines.append(
                f"item time: predicted {self.predicted_item_time * 1e3:.3f} ms, "
                f"measured {self.measured_item_time * 1e3:.3f} ms in the workers"
            )
        if self.measured_speedup is not None:
            lines.append(
                f"speedup over serial for those items: measured x{self.measured_speedup:.2f}"
                + (f", predicted x{self.predicted_speedup:.2f}" if self.predicted_speedup else "")
            )
        for at, old, new, why in self.chunksize_changes:
            lines.append(f"chunksize {old} -> {new} at item {at}: {why}")
        return "\n".join(lines)


class _Progress:
    """Counts items: a tqdm bar (``progress=True``), a callback ``f(done, total)``, or nothing."""

    def __init__(self, progress: Any, total: int | None, desc: str | None) -> None:
        self.done = 0
        self.total = total
        self.callback: Callable[[int, int | None], Any] | None = None
        self.bar = None
        if callable(progress):
            self.callback = progress
        elif progress:
            from tqdm.auto import tqdm

            class _Bar(tqdm):  # type: ignore[misc, valid-type]
                monitor_interval = 0  # no monitor thread left behind after the run

            self.bar = _Bar(total=total, unit="item", desc=desc or "autopar", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ExecutionIterator(Iterator[Any]):
    """Results in input order, as they are ready. ``report`` is filled in as the run goes.

    Closing it early (``close()``, leaving a ``with`` block or dropping it after a ``break``)
    stops the run and its pool.
    """

    def __init__(self, blocks: Iterator[list[Any]], report: ExecutionReport) -> None:
        self._gen = blocks  # lists of results, in order
        self._flat = chain.from_iterable(blocks)
        self.report = report

    def __iter__(self) -> "ExecutionIterator":
        return self

    def __next__(self) -> Any:
        return next(self._flat)

    def blocks(self) -> Iterator[list[Any]]:
        """The results as lists (one per chunk), cheaper than one at a time for tiny items."""
        return self._gen

    def close(self) -> None:
        self._gen.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "ExecutionIterator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _configure(
    result: OptimizationResult | None, kind: str | None, n_jobs: int | None, chunksize: int | None
) -> tuple[str, int, int]:
    """Final (executor_type, n_jobs, chunksize): the overrides on top of the result."""
    if result is None:
        assert kind is not None
        return kind, n_jobs or usable_cores(), chunksize or 1
    kind = kind or result.executor_type
    if kind == "serial":
        return "serial", 1, 1
    same = kind == result.executor_type
    n = n_jobs or (result.n_jobs if same else result.usable_cores)
    if chunksize is None:
        if same and n == result.n_jobs:
            chunksize = result.chunksize
        else:
            costs = pool_costs(result.start_method)
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
) -> ExecutionIterator:
    """Like :func:`execute`, but yields results in input order as they are ready."""
    t_begin = time.perf_counter()
    kind, n_jobs = check_args(func, data, executor_type, n_jobs, chunksize, start_method)
    if pool is not None:
        pkind = executor_kind(pool)
        if kind is not None and kind != pkind:
            raise ValueError(f"executor_type={kind!r} does not match the given {pkind} pool")
        kind, n_jobs = pkind, n_jobs or pool_size(pool)
    if result is None:
        result = pending_result(data)
    if result is None and not (kind == "serial" or (kind and n_jobs and chunksize)):
        result = optimize(
            func,
            data,
            prefer_threads_for_io=prefer_threads_for_io,
            executor_type=kind,
            n_jobs=n_jobs,
            chunksize=chunksize,
            n_items=n_items,
            start_method=start_method,
            max_jobs=max_jobs,
            sample_time=sample_time,
        )
    kind, n_jobs, chunksize = _configure(result, kind, n_jobs, chunksize)
    method = start_method or (result.start_method if result else default_start_method())

    # Items the sample already ran: reuse their results (or re-run kept items for a new func).
    prefix: list[list[Any]] = []  # result blocks
    rest: Iterator[Any]
    stash = result._stash if result is not None else None
    total = known_length(data, n_items)
    if stash is not None and stash.matches(data):
        stash.used = True
        total = result.profile.n_items if result is not None else total
        if stash.func is func:
            prefix, rest = stash.result_blocks, stash.rest
        elif stash.one_shot:
            rest = chain(chain.from_iterable(stash.item_blocks or ()), stash.rest)
        else:
            rest = iter(data)
    else:
        rest = iter(data)

    report = ExecutionReport(
        executor_type=kind,
        n_jobs=n_jobs,
        chunksize=chunksize,
        final_chunksize=chunksize,
        start_method=method if kind == "process" else None,
        optimize_time=time.perf_counter() - t_begin,
        n_from_sample=sum(map(len, prefix)),
    )
    if result is not None:
        report.predicted_time = result.predicted_time
        report.predicted_speedup = result.estimated_speedup
        report.predicted_item_time = result.profile.item_time_mean
    gen = _run(func, kind, n_jobs, chunksize, method, result, prefix, rest, total, pool, progress, desc, adapt, report, t_begin)
    return ExecutionIterator(gen, report)


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
    pool
        An executor to run on instead of a new pool (see :func:`get_executor`); it is not
        shut down.
    adapt
        Correct the chunksize while running when chunk times leave the model's range.
    return_report
        Return ``(results, ExecutionReport)``.

    Raises
    ------
    Exception
        The exception ``func`` raised, with a note naming the item index (also in
        ``exc.autopar_item_index``) and, from a process worker, the worker's traceback as
        ``__cause__``. The rest of the work is cancelled.
    """
    it = execute_iter(
        func,
        data,
        result=result,
        executor_type=executor_type,
        n_jobs=n_jobs,
        chunksize=chunksize,
        prefer_threads_for_io=prefer_threads_for_io,
        start_method=start_method,
        n_items=n_items,
        max_jobs=max_jobs,
        progress=progress,
        desc=desc,
        pool=pool,
        adapt=adapt,
        sample_time=sample_time,
    )
    results: list[Any] = []
    with it:
        for block in it.blocks():
            results.extend(block)
    return (results, it.report) if return_report else results


def _raise_failure(failure: tuple[int, BaseException, str], kind: str) -> None:
    index, exc, tb = failure
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    annotate(exc, index, kind)
    raise exc


def _run(
    func: Callable[[Any], Any],
    kind: str,
    n_jobs: int,
    chunksize: int,
    method: str,
    result: OptimizationResult | None,
    prefix: list[list[Any]],
    rest: Iterator[Any],
    total: int | None,
    pool: Executor | None,
    progress: Any,
    desc: str | None,
    adapt: bool,
    report: ExecutionReport,
    t_begin: float,
) -> Iterator[Any]:
    bar = _Progress(progress, total, desc)
    t_run = time.perf_counter()
    index = n_prefix = sum(map(len, prefix))
    busy_time = 0.0
    busy_items = 0
    try:
        bar.update(n_prefix)
        yield from prefix
        if kind == "serial":
            t0 = time.perf_counter()
            block_size = 1
            while True:
                block = list(islice(rest, block_size))
                if not block:
                    break
                tb = time.perf_counter()
                out, offset, exc = map_items(func, block)
                if exc is not None:
                    annotate(exc, index + offset, "serial")
                    raise exc
                index += len(block)
                bar.update(len(block))
                yield out
                # Blocks grow while they stay short, so progress stays live for slow items.
                if time.perf_counter() - tb < 0.02:
                    block_size = min(block_size * 2, 4096)
            busy_time, busy_items = time.perf_counter() - t0, index - n_prefix
        else:
            for values in _run_pool(func, kind, n_jobs, chunksize, method, result, rest, index, total, pool, bar, adapt, report):
                index += len(values)
                yield values
        report.completed = True
    finally:
        bar.close()
        now = time.perf_counter()
        report.n_items = index
        report.run_time = now - t_run
        report.wall_time = now - t_begin
        if busy_items:
            report.measured_item_time = busy_time / busy_items
        if result is not None and report.completed:
            report.serial_estimate = (index - n_prefix) * result.profile.item_time_mean


def _run_pool(
    func: Callable[[Any], Any],
    kind: str,
    n_jobs: int,
    chunksize: int,
    method: str,
    result: OptimizationResult | None,
    rest: Iterator[Any],
    first_index: int,
    total: int | None,
    pool: Executor | None,
    bar: _Progress,
    adapt: bool,
    report: ExecutionReport,
) -> Iterator[Any]:
    owned = pool is None
    ex = pool if pool is not None else make_executor(kind, n_jobs, start_method=method)
    cancel = threading.Event()
    transport = _serialize.PICKLE
    if result is not None and result.profile.transport:
        transport = result.profile.transport
    key = uuid.uuid4().hex
    blob = _serialize.dumps(func, _serialize.CLOUDPICKLE) if kind == "process" else b""

    def submit(start: int, chunk: list[Any]) -> Future:
        if kind == "thread":
            return ex.submit(run_local, func, start, chunk, cancel)
        payload = _serialize.dumps(chunk, transport) if transport == _serialize.CLOUDPICKLE else chunk
        return ex.submit(run_remote, key, blob, start, payload, transport)

    inflight: deque[tuple[int, int, Future]] = deque()
    max_inflight = 2 * n_jobs + 1
    next_index = first_index
    exhausted = False
    done_time = 0.0
    done_items = 0
    done_chunks = 0
    basis = result.profile.item_time_mean if result is not None else None
    checked: set[Future] = set()
    clean = False
    try:
        while True:
            while not exhausted and len(inflight) < max_inflight:
                chunk = list(islice(rest, chunksize))
                if not chunk:
                    exhausted = True
                    break
                inflight.append((next_index, len(chunk), submit(next_index, chunk)))
                next_index += len(chunk)
                report.n_chunks += 1
            if not inflight:
                break
            # Wait on the futures not yet checked: one that finished out of order and waits
            # for the head to be handed back must not wake this loop again.
            wait([f for _, _, f in inflight if f not in checked], return_when=FIRST_COMPLETED)
            for start, count, fut in inflight:
                if fut in checked or not fut.done():
                    continue
                checked.add(fut)
                exc = fut.exception()
                if exc is not None:
                    _raise_pool_error(exc, kind, inflight, start, count)
                _, elapsed, failure = fut.result()
                if failure is not None:
                    _raise_failure(failure, kind)
                bar.update(count)
                done_time += elapsed
                done_items += count
                done_chunks += 1
            # Adapt the chunksize for chunks not yet submitted.
            if adapt and basis and result is not None and done_chunks >= max(3, n_jobs):
                measured = done_time / done_items
                ratio = measured / basis
                if ratio > ADAPT_FACTOR or ratio < 1 / ADAPT_FACTOR:
                    if total is not None:
                        left = total - next_index
                    else:
                        left = max(result.n_remaining + first_index - next_index, n_jobs)
                    if left > 0:
                        profile = replace(
                            result.profile,
                            item_time_mean=measured,
                            item_time_std=result.profile.item_time_std * ratio,
                        )
                        costs = pool_costs(method)
                        new = best_chunksize(kind, n_jobs, left, profile, costs, result.usable_cores).chunksize
                        if new != chunksize:
                            why = f"items take {measured * 1e3:.3g} ms, not {basis * 1e3:.3g} ms"
                            report.chunksize_changes.append((next_index, chunksize, new, why))
                            chunksize = new
                    basis = measured
            # Hand back, in input order, every chunk at the head that has been checked.
            while inflight and inflight[0][2] in checked:
                _, _, fut = inflight.popleft()
                checked.discard(fut)
                values = fut.result()[0]
                if transport == _serialize.CLOUDPICKLE and kind == "process":
                    values = _serialize.loads(values)
                yield values
        clean = True
    finally:
        report.final_chunksize = chunksize
        if done_items:
            report.measured_item_time = done_time / done_items
        cancel.set()
        for _, _, fut in inflight:
            fut.cancel()
        if owned:
            if clean:
                ex.shutdown(wait=True)
            else:
                terminate(ex)


def _raise_pool_error(exc: BaseException, kind: str, inflight: Any, start: int, count: int) -> None:
    if isinstance(exc, BrokenProcessPool):
        running = ", ".join(f"{s}-{s + c - 1}" for s, c, f in inflight if not f.cancelled())
        raise WorkerDied(
            f"a worker process ended abruptly (killed, crashed or exited) while items {running} "
            "were in flight"
        ) from exc
    if hasattr(exc, "add_note"):
        exc.add_note(f"autopar: sending or running items {start}-{start + count - 1} on a {kind} pool failed")
    raise exc
