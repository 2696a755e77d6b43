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

import signal
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from itertools import chain, islice
from typing import Any, Callable, Iterable, Iterator

from .. import _serialize
from ..backends.worker import _Alarm, run_items, run_local, run_remote
from ..errors import ItemFailed, ItemTimeout, RemoteTraceback, WorkerDied, annotate, settle
from ..backends.pools import executor_kind, make_executor, pool_size, terminate
from ..tune.model import best_chunksize
from ..tune.optimize import check_args, optimize, pending_result
from ..tune.result import OptimizationResult
from ..tune.sample import known_length
from ..tune.costs import pool_costs
from ..tune.system import default_start_method, usable_cores

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
    failures: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
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
        if self.failures:
            lines.append(f"{len(self.failures)} items failed: {_ranges(self.failures)}")
        if self.retried:
            lines.append(f"{len(self.retried)} items ran again after a worker died: {_ranges(self.retried)}")
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
    errors: str = "raise",
    timeout: float | None = None,
    retries: int = 0,
    retry_backoff: float = 0.1,
) -> ExecutionIterator:
    """Like :func:`execute`, but yields results in input order as they are ready."""
    t_begin = time.perf_counter()
    kind, n_jobs = check_args(func, data, executor_type, n_jobs, chunksize, start_method)
    _check_run_args(errors, timeout, retries, retry_backoff)
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
            errors=errors,
        )
    kind, n_jobs, chunksize = _configure(result, kind, n_jobs, chunksize)
    method = start_method or (result.start_method if result else default_start_method())

    # Items the sample already ran: reuse their results (or re-run kept items for a new func).
    prefix: list[list[Any]] = []  # result blocks
    rest: Iterator[Any] = iter(data)
    stash = result.stash if result is not None else None
    total = known_length(data, n_items)
    claimed = stash.claim(func, data) if stash is not None else None
    if claimed is not None:
        prefix, rest = claimed
        total = result.profile.n_items if result is not None else total
        if prefix and stash.failures and errors != "collect":
            # the sample collected failures the caller did not ask to collect
            first = next(r for b in prefix for r in b if isinstance(r, ItemFailed))
            settle([(first.index, first.exception, first.traceback)], "serial (sample)", False)

    report = ExecutionReport(
        executor_type=kind,
        n_jobs=n_jobs,
        chunksize=chunksize,
        final_chunksize=chunksize,
        start_method=method if kind == "process" else None,
        optimize_time=time.perf_counter() - t_begin,
        n_from_sample=sum(map(len, prefix)),
    )
    if prefix and stash is not None:
        report.failures.extend(stash.failures)
    if result is not None:
        report.predicted_time = result.predicted_time
        report.predicted_speedup = result.estimated_speedup
        report.predicted_item_time = result.profile.item_time_mean
    job = _Job(
        func=func,
        kind=kind,
        n_jobs=n_jobs,
        chunksize=chunksize,
        method=method,
        result=result,
        pool=pool,
        bar=_Progress(progress, total, desc),
        adapt=adapt,
        report=report,
        collect=errors == "collect",
        timeout=timeout,
        retries=retries,
        backoff=retry_backoff,
    )
    return ExecutionIterator(_run(job, prefix, rest, total, t_begin), report)


def _check_run_args(errors: str, timeout: float | None, retries: int, backoff: float) -> None:
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if not isinstance(backoff, (int, float)) or backoff < 0:
        raise ValueError(f"retry_backoff must be a number >= 0, got {backoff!r}")


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
    errors
        ``"raise"`` (the first failure stops the run) or ``"collect"``: a failed item's place in
        the results holds an :class:`ItemFailed` (index, exception, traceback) and the run goes
        on; ``report.failures`` lists the indices.
    timeout
        Seconds one item may run. A process worker stops the item (SIGALRM raises
        :class:`ItemTimeout` in it); an item stuck where no signal reaches it gets its worker
        killed and replaced. Threads cannot be stopped: the run raises ItemTimeout and the
        stuck call finishes in the background.
    retries, retry_backoff
        When a process worker dies (killed, crashed, exited), run the items that were in flight
        again on a fresh pool, one at a time (a second crash names its item), up to ``retries``
        times, waiting
        ``retry_backoff * 2**attempt`` seconds first. Without retries the run raises
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
        errors=errors,
        timeout=timeout,
        retries=retries,
        retry_backoff=retry_backoff,
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


@dataclass
class _Job:
    """Everything a run needs besides its input."""

    func: Callable[[Any], Any]
    kind: str
    n_jobs: int
    chunksize: int
    method: str
    result: OptimizationResult | None
    pool: Executor | None
    bar: _Progress
    adapt: bool
    report: ExecutionReport
    collect: bool
    timeout: float | None
    retries: int
    backoff: float

    def failed(self, failures: list[tuple[int, BaseException, str]]) -> None:
        """Raise the first failure, or (collecting) note them all in the report."""
        if not failures:
            return
        if not self.collect or not isinstance(failures[0][1], Exception):
            _raise_failure(failures[0], self.kind)
        for index, exc, _ in failures:
            annotate(exc, index, self.kind)
            self.report.failures.append(index)


def _run(job: _Job, prefix: list[list[Any]], rest: Iterator[Any], total: int | None, t_begin: float) -> Iterator[Any]:
    report = job.report
    t_run = time.perf_counter()
    index = n_prefix = sum(map(len, prefix))
    try:
        job.bar.update(n_prefix)
        yield from prefix
        if job.kind == "serial":
            func = job.func
            if job.timeout is not None:
                if threading.current_thread() is not threading.main_thread():
                    raise ValueError("timeout= with executor_type='serial' needs the main thread (it uses SIGALRM)")
                func = _Alarm(func, job.timeout)
            t0 = time.perf_counter()
            block_size = 1
            while True:
                block = list(islice(rest, block_size))
                if not block:
                    break
                tb = time.perf_counter()
                out, failures = run_items(func, index, block, job.collect, remote=False)
                job.failed(failures)
                index += len(block)
                job.bar.update(len(block))
                yield out
                # Blocks grow while they stay short, so progress stays live for slow items.
                if time.perf_counter() - tb < 0.02:
                    block_size = min(block_size * 2, 4096)
            if index > n_prefix:
                report.measured_item_time = (time.perf_counter() - t0) / (index - n_prefix)
        else:
            for values in _PoolRun(job, rest, index, total).results():
                index += len(values)
                yield values
        report.completed = True
    finally:
        job.bar.close()
        now = time.perf_counter()
        report.n_items = index
        report.run_time = now - t_run
        report.wall_time = now - t_begin
        if job.result is not None and report.completed:
            report.serial_estimate = (index - n_prefix) * job.result.profile.item_time_mean


@dataclass(eq=False)
class _Chunk:
    start: int
    items: list[Any]
    future: Future
    attempt: int = 0
    checked: bool = False
    values: list[Any] | None = None


def _how_it_ended(processes: dict[int, Any]) -> str:
    """What became of the workers that did not end by the pool's own terminate()."""
    from multiprocessing.connection import wait as wait_sentinels

    # The pool's manager thread reaps dead workers too; when it wins that race, the exit code
    # shows up on the Process a moment later. Give it up to a second.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        dead = [p for p in processes.values() if wait_sentinels([p.sentinel], 0)]
        if all(p.exitcode is not None for p in dead):
            break
        time.sleep(0.02)
    ends = []
    for pid, proc in processes.items():
        code = proc.exitcode
        if code is None or code == -signal.SIGTERM or code == 0:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            ends.append(f"worker {pid} was killed by {name}")
        else:
            ends.append(f"worker {pid} exited with status {code}")
    return "; ".join(ends) or "a worker process ended abruptly"


def _ranges(indices: list[int]) -> str:
    indices = sorted(indices)
    out: list[str] = []
    start = prev = indices[0] if indices else 0
    for i in indices[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(out)


class _PoolRun:
    """One run on a thread or process pool: submit, check, reorder, adapt, recover."""

    def __init__(self, job: _Job, rest: Iterator[Any], first_index: int, total: int | None) -> None:
        self.job = job
        self.rest = rest
        self.first_index = first_index
        self.total = total
        self.owned = job.pool is None
        self.ex: Executor = job.pool if job.pool is not None else self._new_pool()
        self.cancel = threading.Event()
        self.transport = _serialize.PICKLE
        if job.result is not None and job.result.profile.transport:
            self.transport = job.result.profile.transport
        self.key = uuid.uuid4().hex
        self.blob = b""
        if job.kind == "process":
            try:
                self.blob = _serialize.dumps(job.func, _serialize.CLOUDPICKLE)
            except Exception as exc:
                if self.owned:
                    self.ex.shutdown(wait=True)
                raise TypeError(
                    f"the function cannot be sent to a process worker ({type(exc).__name__}: {exc}); "
                    "use executor_type='thread' or 'serial', or optimize(), which rules processes out"
                ) from exc
        self.inflight: deque[_Chunk] = deque()
        self.retry: deque[tuple[int, list[Any], int]] = deque()  # (start, items, attempt)
        self.next_index = first_index
        self.exhausted = False
        self.chunksize = job.chunksize
        self.done_time = 0.0
        self.done_items = 0
        self.done_chunks = 0
        self.basis = job.result.profile.item_time_mean if job.result is not None else None
        self.last_progress = time.monotonic()
        self.processes: dict[int, Any] = {}

    def _new_pool(self) -> Executor:
        return make_executor(self.job.kind, self.job.n_jobs, start_method=self.job.method)

    def submit(self, start: int, items: list[Any], attempt: int = 0) -> None:
        job = self.job
        if job.kind == "thread":
            fut = self.ex.submit(run_local, job.func, start, items, self.cancel, job.collect)
        else:
            # Pickled here, not in the pool's feeder thread: an item that cannot be sent is found
            # now, by index, and never reaches the pool (where CPython 3.11's executor, told of
            # the failure and then terminated, breaks its own shutdown).
            try:
                payload = _serialize.dumps(items, self.transport)
            except Exception as exc:
                self._unsendable(start, items, attempt, exc)
                return
            fut = self.ex.submit(run_remote, self.key, self.blob, start, payload, self.transport, job.collect, job.timeout)
        self.inflight.append(_Chunk(start, items, fut, attempt))
        job.report.n_chunks += 1
        procs = getattr(self.ex, "_processes", None)
        if isinstance(procs, dict) and len(procs) != len(self.processes):
            self.processes.update(procs)  # kept to tell how a worker ended if the pool breaks

    def _unsendable(self, start: int, items: list[Any], attempt: int, exc: Exception) -> None:
        """A chunk that does not pickle: name the item; collecting, run the others alone."""
        for i, item in enumerate(items):
            try:
                _serialize.dumps(item, self.transport)
                continue
            except Exception as item_exc:
                error: BaseException = TypeError(
                    f"item {start + i} cannot be sent to a process worker ({type(item_exc).__name__}: {item_exc})"
                )
                error.__cause__ = item_exc
                break
        else:  # each item pickles alone, the chunk does not (shared state): name the chunk
            error = TypeError(f"items {start}-{start + len(items) - 1} cannot be sent to a process worker ({exc})")
            error.__cause__ = exc
            i = 0
        if not self.job.collect:
            annotate(error, start + i, "process")
            raise error
        for j, item in enumerate(items):
            if j == i:
                done: Future = Future()
                chunk = _Chunk(start + j, [item], done, attempt)
                self._fail_chunk(chunk, error)
            else:
                self.submit(start + j, [item], attempt)
        self._reorder()

    def fill(self) -> None:
        limit = 2 * self.job.n_jobs + 1
        if self.retry:
            # Items a dead worker took down run again one at a time: a crash then names its item.
            if all(c.checked for c in self.inflight):
                self.submit(*self.retry.popleft())
                self._reorder()
            return
        while not self.exhausted and len(self.inflight) < limit:
            chunk = list(islice(self.rest, self.chunksize))
            if not chunk:
                self.exhausted = True
                break
            self.submit(self.next_index, chunk)
            self.next_index += len(chunk)

    def results(self) -> Iterator[list[Any]]:
        job = self.job
        clean = False
        try:
            while True:
                self.fill()
                if not self.inflight:
                    break
                pending = [c.future for c in self.inflight if not c.checked]
                if pending:
                    done, _ = wait(pending, timeout=self._wait_timeout(), return_when=FIRST_COMPLETED)
                    if not done:
                        self._stuck()
                        continue
                broken = False
                for c in self.inflight:
                    if c.checked or not c.future.done():
                        continue
                    exc = c.future.exception()
                    if isinstance(exc, BrokenProcessPool):
                        broken = True
                        break
                    if exc is not None:
                        if not job.collect:
                            _raise_pool_error(exc, job.kind, c)
                        # e.g. a result that cannot be pickled: the chunk's items fail
                        self.inflight.remove(c)
                        self._fail_chunk(c, exc)
                        break
                    values, elapsed, failures = c.future.result()
                    job.failed(failures)
                    if self.transport == _serialize.CLOUDPICKLE and job.kind == "process":
                        values = _serialize.loads(values)
                    c.values, c.checked = values, True
                    job.bar.update(len(c.items))
                    self.done_time += elapsed
                    self.done_items += len(c.items)
                    self.done_chunks += 1
                    self.last_progress = time.monotonic()
                if broken:
                    self._recover()
                    continue
                self._adapt()
                # Hand back, in input order, every chunk at the head that has been checked, but
                # none beyond an item still waiting to run again.
                while self.inflight and self.inflight[0].checked and (
                    not self.retry or self.inflight[0].start < self.retry[0][0]
                ):
                    yield self.inflight.popleft().values  # type: ignore[misc]
            clean = True
        finally:
            job.report.final_chunksize = self.chunksize
            if self.done_items:
                job.report.measured_item_time = self.done_time / self.done_items
            self.cancel.set()
            for c in self.inflight:
                c.future.cancel()
            if self.owned:
                if clean:
                    self.ex.shutdown(wait=True)
                else:
                    terminate(self.ex)

    # -- timeouts -------------------------------------------------------------------------

    def _stuck_limit(self) -> float:
        """Seconds without a finished chunk after which the pool counts as stuck: the longest
        in-flight chunk's items times the timeout, plus 1 s for processes, whose workers stop a
        slow item themselves (SIGALRM); this catches an item stuck where no signal reaches it,
        and threads, which nothing can interrupt."""
        longest = max(len(c.items) for c in self.inflight)
        return longest * (self.job.timeout or 0.0) + (1.0 if self.job.kind == "process" else 0.0)

    def _wait_timeout(self) -> float | None:
        """How long to wait for a chunk now (None: forever, when there is no timeout)."""
        if self.job.timeout is None:
            return None
        return max(self._stuck_limit() - (time.monotonic() - self.last_progress), 0.01)

    def _stuck(self) -> None:
        job = self.job
        if time.monotonic() - self.last_progress < self._stuck_limit():
            return
        unfinished = [c for c in self.inflight if not c.checked and not c.future.done()]
        if not unfinished:
            return
        # Items not yet started may be queued behind the stuck ones: name what is running.
        oldest = unfinished[0]
        indices = list(range(oldest.start, oldest.start + len(oldest.items)))
        if job.kind == "thread":
            raise ItemTimeout(
                f"items {_ranges(indices)} ran past the {job.timeout:g} s timeout on a thread; threads "
                "cannot be stopped: the stuck call goes on in the background until it returns"
            )
        if not self.owned:
            raise ItemTimeout(f"items {_ranges(indices)} ran past the {job.timeout:g} s timeout")
        # A process worker is stuck beyond the reach of SIGALRM: kill the pool, go on without it.
        stuck = oldest
        self._replace_pool()
        self.inflight.remove(stuck)
        error = ItemTimeout(
            f"items {_ranges(indices)} ran past the {job.timeout:g} s timeout; the worker was killed"
        )
        if not job.collect:
            raise error
        self._fail_chunk(stuck, error)
        self._resubmit_lost(count_attempt=False)

    # -- broken pools ---------------------------------------------------------------------

    def _replace_pool(self) -> None:
        terminate(self.ex)
        self.ex = self._new_pool()
        self.processes = {}
        self.key = uuid.uuid4().hex

    def _fail_chunk(self, chunk: _Chunk, error: BaseException) -> None:
        """Collecting: every item of ``chunk`` gets ``error`` in its place; the chunk is done."""
        failures = [(chunk.start + i, error, "") for i in range(len(chunk.items))]
        self.job.failed(failures)
        chunk.values = [ItemFailed(i, error) for i, _, _ in failures]
        chunk.checked = True
        chunk.future = Future()
        chunk.future.set_result(None)  # done, so that nothing waits on it
        self.inflight.appendleft(chunk)
        self._reorder()

    def _reorder(self) -> None:
        self.inflight = deque(sorted(self.inflight, key=lambda c: c.start))

    def _resubmit_lost(self, count_attempt: bool) -> list[_Chunk]:
        """Take the unfinished chunks off the broken pool and queue them again, one item per
        chunk so that a second crash names the item."""
        lost = [c for c in self.inflight if not c.checked]
        self.inflight = deque(c for c in self.inflight if c.checked)
        for c in lost:
            attempt = c.attempt + (1 if count_attempt else 0)
            for i, item in enumerate(c.items):
                self.retry.append((c.start + i, [item], attempt))
        self.retry = deque(sorted(self.retry, key=lambda r: r[0]))
        return lost

    def _recover(self) -> None:
        job = self.job
        ended = _how_it_ended(self.processes)
        lost = [c for c in self.inflight if not c.checked]
        indices = [c.start + i for c in lost for i in range(len(c.items))]
        give_up = [c for c in lost if c.attempt >= job.retries]
        message = (
            f"{ended}; items {_ranges(indices)} were in flight"
            + (f" (after {job.retries} retries)" if job.retries and give_up else "")
        )
        if not self.owned or (give_up and not job.collect):
            raise WorkerDied(message, tuple(indices)) from None
        self._replace_pool()
        if give_up and job.collect:
            # Out of retries: these items fail, the others run again on the fresh pool.
            for c in give_up:
                self.inflight.remove(c)
                self._fail_chunk(c, WorkerDied(message, tuple(indices)))
        self._resubmit_lost(count_attempt=True)
        if job.retries:
            attempt = max((r[2] for r in self.retry), default=1)
            time.sleep(job.backoff * 2 ** max(attempt - 1, 0))
        self.job.report.retried.extend(indices)

    # -- adaptation ----------------------------------------------------------------------

    def _adapt(self) -> None:
        job = self.job
        result = job.result
        if not (job.adapt and self.basis and result is not None and self.done_chunks >= max(3, job.n_jobs)):
            return
        measured = self.done_time / self.done_items
        ratio = measured / self.basis
        if 1 / ADAPT_FACTOR <= ratio <= ADAPT_FACTOR:
            return
        if self.total is not None:
            left = self.total - self.next_index
        else:
            left = max(result.n_remaining + self.first_index - self.next_index, job.n_jobs)
        if left > 0:
            profile = replace(
                result.profile, item_time_mean=measured, item_time_std=result.profile.item_time_std * ratio
            )
            costs = pool_costs(job.method)
            new = best_chunksize(job.kind, job.n_jobs, left, profile, costs, result.usable_cores).chunksize
            if new != self.chunksize:
                why = f"items take {measured * 1e3:.3g} ms, not {self.basis * 1e3:.3g} ms"
                job.report.chunksize_changes.append((self.next_index, self.chunksize, new, why))
                self.chunksize = new
        self.basis = measured


def _raise_pool_error(exc: BaseException, kind: str, chunk: _Chunk) -> None:
    if hasattr(exc, "add_note"):
        last = chunk.start + len(chunk.items) - 1
        exc.add_note(f"autopar: sending or running items {chunk.start}-{last} on a {kind} pool failed")
    raise exc
