"""A run on a pool: chunks out with bounded look-ahead, results back in input order.

::

    rest ──► Feeder ──► backend.submit ──► InOrder (chunks in flight, by input position)
     ▲      (look-ahead ≤ 2n+1 chunks;        │
     │       retried items first,             ▼
     │       one at a time)            wait ─► harvest ─┬─► broken pool: recovery.recover()
     │                                     │            ├─► stuck: recovery.Watchdog
     │                                     │            └─► run.adapt: ChunkTuner (chunksize),
     └── chunks the pool had not started ◄─┘                Fallback (pool losing to serial:
         run inline after a fallback, or on                 the rest runs inline; threads short
         the process pool after a switch                    of their prediction: the runner-up
                                                            process pool takes it)
                                               release ◄── head chunks checked, none past an
                                                           item waiting to run again

The loop in :meth:`PoolRun.results` reads: fill → wait → harvest → recover or adapt →
release. A pool autopar chose starts with chunks of about 10 ms of work that double with
each chunk back (unless the pool is losing), so a pool that loses to serial is seen early
(a process pool on kept figures a run has checked takes whole chunks from the start);
a doubt is checked by timing one small chunk in the caller before the run falls back, and
after a fallback the pool is shut down as soon as its last chunk is back. A switch to the
runner-up pool waits for that too, then starts the other pool, which ramps up as the first
did; a run switches once at most. No pool the run
made outlives it: shut down when the run ends cleanly, its workers killed otherwise (an
error, Ctrl-C, an iterator closed early).
"""

from __future__ import annotations

import inspect
import os
import time
from concurrent.futures import Future
from types import FrameType, TracebackType
from typing import Any, Iterator

from ..backends.base import Backend
from ..backends.local import InlineBackend
from ..backends.pools import make_backend, sigint_deferred
from ..backends.process import Unsendable
from ..backends.worker import limited
from ..errors import ItemFailed, WorkerDied, add_note, settle
from .adapt import Adapter
from .chunks import Chunk, Feeder, InOrder, Job, ramp_start
from .recovery import Decision, Watchdog, recover

__all__ = ["Job", "PoolRun"]


def _scheduler_gone(run: "PoolRun", wait: float = 0.5) -> None:
    """A Dask chunk failed: where the scheduler went away the client may learn it a moment
    after its tasks fail (a task read as failed with distributed's own ValueError beside
    two spinning processes): look for up to ``wait`` seconds, then raise the ConnectionError
    that names the scheduler (recovery's), else return (the chunk's error is its own)."""
    gone = getattr(run.backend, "gone", None)
    if gone is None:
        return
    end = time.monotonic() + wait
    while gone() is None and time.monotonic() < end:
        time.sleep(0.05)
    Watchdog.cluster_gone(run)


def _timed_out(blocks: Iterator[list[Any]], fallback: Any) -> Iterator[list[Any]]:
    """The blocks, each given to the caller, whose time away (a slow loop over
    execute_iter()) the fallback does not count against the pool."""
    for block in blocks:
        t_out = time.perf_counter()
        yield block
        fallback.paused(time.perf_counter() - t_out)


def ramp_size(job: Job) -> int:
    """Chunks of a chosen pool start at about RAMP_SECONDS of work and double with each chunk
    back up to the chunksize, so the pool's real rate is known, and a losing pool left, before
    much work is committed to it."""
    if not (job.chosen and job.opts.adapt) or job.result is None:
        return 0
    return ramp_start(job.result.profile, job.kind)


def first_ramp(job: Job) -> tuple[int, int]:
    """(ramp, floor) of a run's first pool: the ramp's first size is the guided tail's least.
    A process pool decided from the tuning cache, on figures a run has checked since they were
    measured, takes whole chunks from the start (the ramp cost a warm process pick 3-5%,
    docs/decisions.md, "Chosen pools ramp up"); threads ramp (a GIL found while running is read
    from chunks back), and so does the pool a run switches to."""
    size = ramp_size(job)
    r = job.result
    checked = r is not None and r.cache == "hit" and r.cache_runs >= 1 and job.kind == "process"
    return (0 if checked else size), size


def first_feeder(job: Job, rest: Iterator[Any], first_index: int, total: int | None) -> Feeder:
    """The feeder of a run's first pool: 2n + 1 chunks in flight, its ramp and floor (:func:`first_ramp`)."""
    ramp, floor = first_ramp(job)
    return Feeder(rest, first_index, job.chunksize, 2 * job.n_jobs + 1, ramp, total, job.n_jobs, floor)


def new_backend(job: Job) -> Backend:
    transport = (job.result.profile.transport if job.result is not None else None) or "pickle"
    return make_backend(
        job.kind, job.func, job.n_jobs, pool=job.pool, start_method=job.method, transport=transport,
        collect=job.opts.collect, timeout=job.opts.timeout,
    )


def _can_run_inline(run: "PoolRun") -> bool:
    return (
        run.inline is not None
        and run.feeder.has_more
        and (bool(run.feeder.front) or sum(1 for c in run.inflight if c.inline) < run.feeder.limit)
    )


class PoolRun:
    """One run on a thread or process pool: fill, wait, harvest, recover or adapt, release."""

    def __init__(self, job: Job, rest: Iterator[Any], first_index: int, total: int | None) -> None:
        self.job = job
        self.feeder = first_feeder(job, rest, first_index, total)
        self.inflight = InOrder()
        self.inline: InlineBackend | None = None
        self.switch_to: str | None = None  # why the run is to move to the runner-up pool
        self.switched_from: str | None = None  # the kind of pool it left
        self.total, self.first_index = total, first_index
        self.last_progress = time.monotonic()
        self.cluster_checked = 0.0  # when the Dask workers were last asked what they run
        self.pool_closed = False
        self.backend = new_backend(job)
        self.adapt = Adapter(job, first_index, total)

    # -- fill ------------------------------------------------------------------------------

    def submit(self, start: int, items: list[Any], attempt: int = 0) -> None:
        try:
            if self.inline is not None and not attempt:
                self.inflight.add(Chunk(start, items, self.inline.submit(start, items), inline=True))
            else:
                # The pool's locks, and the future's (its done callback is added under its
                # lock, which the pool's thread takes to finish it), are never left taken.
                with sigint_deferred():
                    self.inflight.add(Chunk(start, items, self.backend.submit(start, items), attempt))
        except Unsendable as exc:
            self._unsendable(start, items, attempt, exc)
            return
        except Exception as exc:
            if not self.backend.is_broken(exc):
                raise
            # A worker died since the last harvest: this chunk never ran; recovery (the same
            # as for a broken pool seen in a harvest) replaces the pool, then it goes again.
            if attempt:
                self.feeder.add_retry(start, items, attempt)
            else:
                self.feeder.put_back(start, items)
            self.act(recover(self))
            return
        self.job.report.n_chunks += 1

    def _unsendable(self, start: int, items: list[Any], attempt: int, exc: Unsendable) -> None:
        """A chunk that does not pickle: name the item; collecting, run the others alone.
        A run that switched from threads to processes runs the rest inline instead: on the
        pool it started on, every item would have run."""
        if self.switched_from == "thread" and self.inline is None:
            at, _, why = self.job.report.fallback or (start, "", "")
            self.feeder.front.append((start, items))
            self.act(Decision(inline=f"item {exc.index} cannot go to a process ({exc.error}); from item {at}, {why}"))
            return
        if not self.job.opts.collect:
            settle([(exc.index, exc.error, "")], "process", False)
        for j, item in enumerate(items):
            if start + j == exc.index:
                self.inflight.add(self.job.fail_in_place(Chunk(start + j, [item], Future(), attempt), exc.error))
            else:
                self.submit(start + j, [item], attempt)

    def fill(self) -> None:
        feeder = self.feeder
        if feeder.retry:
            # Items a dead worker took down run again one at a time: a crash then names its item.
            if all(c.checked for c in self.inflight):
                self.submit(*feeder.retry.popleft())
            return
        if self.inline is not None:
            self._release_pool()
            # One inline chunk per turn of the loop, so the pool's last chunks are harvested
            # meanwhile; at most ``limit`` of them held behind an unfinished pool chunk.
            if _can_run_inline(self):
                nxt = feeder.next_chunk()
                if nxt is not None:
                    self.submit(*nxt)
            return
        if self.switch_to is not None:
            if not all(c.checked for c in self.inflight):
                return  # the old pool's last chunks are still running
            self._switch()
        # Chunks handed back go out whatever the limit: results after them are held until
        # they are back (Feeder.hold_from), and would hold the limit's places meanwhile.
        while (len(self.inflight) < feeder.limit or feeder.front) and feeder.has_more and not feeder.retry:
            nxt = feeder.next_chunk()
            if nxt is None:
                break
            self.submit(*nxt)

    def _release_pool(self) -> None:
        """After a fallback, the pool goes as soon as its last chunk is back (forked workers
        that live on make every page the caller writes to a copy)."""
        if not self.pool_closed and all(c.inline or c.checked for c in self.inflight):
            self.pool_closed = True
            self.backend.close(True)

    # -- harvest ---------------------------------------------------------------------------

    def harvest(self) -> bool:
        """Check every finished chunk; False when the pool broke (recovery's turn)."""
        job = self.job
        for c in self.inflight.take_done():
            if c.checked:
                continue  # failed in place while harvesting an earlier chunk
            exc = c.future.exception()
            if self.backend.is_broken(exc):
                return False
            if exc is not None and job.kind == "dask":
                exc = _dask_worker_died(exc, c, self)
            if exc is not None:
                if not job.opts.collect:
                    _raise_pool_error(exc, job.kind, c)
                # e.g. a result that cannot be pickled: the chunk's items fail
                self.inflight.remove(c)
                self.inflight.add(self.job.fail_in_place(c, exc))
                continue
            values, elapsed, failures, cpu = c.future.result()
            status = "failed" if failures else "inline" if c.inline else "retried" if c.attempt else "ok"
            end = c.done_at or time.perf_counter()
            job.report.span(c.start, len(c.items), end - elapsed, end, status)
            try:
                job.failed(failures)
            except BaseException:
                # The list is the chunk's result's, which a pool thread's returned frame
                # holds: emptied, it holds no path back from there to the exception raised.
                failures.clear()
                raise
            c.values = values if c.inline else self.backend.decode(values)
            c.checked = True
            job.bar.update(len(c.items))
            self.last_progress = time.monotonic()
            if not c.inline:
                self.act(self.adapt.judge(self, len(c.items), elapsed, cpu))
                if not self.adapt.fallback.doubt:
                    self.feeder.grow()
        return True

    # -- recovery's decisions --------------------------------------------------------------

    def act(self, d: Decision | None) -> None:
        """Do what recovery decided (see :class:`~autopar.run.recovery.Decision` for the order)."""
        if d is None:
            return
        if d.checked is not None:
            self.cluster_checked = d.checked
        for _, where in d.stop:
            self.backend.stop(where)
        if d.error is not None:
            raise d.error
        for c in d.put_back:
            c.future.cancel()
            self.inflight.remove(c)
            self.feeder.put_back(c.start, c.items)
        if d.replace:
            self.backend.replace()
        for c, error in d.fail:
            self.inflight.remove(c)
            self.inflight.add(self.job.fail_in_place(c, error))
        if d.requeue is not None:  # the unfinished chunks leave the broken pool
            self.feeder.retry_each(self.inflight.take_unchecked(), d.requeue == "again")
        if d.wait:
            time.sleep(d.wait)
        self.job.report.retried.extend(d.retried)
        if d.chunksize is not None:
            self.job.report.chunksize_changes.append((self.feeder.next_index, self.feeder.chunksize, *d.chunksize))
            self.feeder.chunksize = d.chunksize[0]
        if d.check:
            self._time_serially()
        if d.inline is not None:  # the rest runs in the caller
            self.inline = InlineBackend(limited(self.job.func, self.job.opts.timeout), self.job.opts.collect)
            self.job.report.fallback = (self._hand_back_unstarted(), "serial", d.inline)
            self.feeder.chunksize = max(1, int(0.02 / max(self.adapt.fallback.serial_item, 1e-9)))
        if d.switch is not None:
            self._hand_back_unstarted()
            self.switch_to = d.switch

    def _time_serially(self) -> None:
        """Run the next small chunk in the caller: its time is serial's rate to the watchers."""
        nxt = self.feeder.next_chunk(self.adapt.check_size(self.feeder.chunksize))
        if nxt is None:
            return
        fut = InlineBackend(limited(self.job.func, self.job.opts.timeout), self.job.opts.collect).submit(*nxt)
        self.inflight.add(Chunk(nxt[0], nxt[1], fut, inline=True))
        self.job.report.n_chunks += 1
        _, wall, failures, cpu = fut.result()
        self.adapt.fallback.serial_timed(0 if failures else len(nxt[1]), wall, cpu)

    def _hand_back_unstarted(self) -> int:
        """Chunks the pool has not started go back to the feeder; the first item not run."""
        for c in self.inflight.unchecked():
            if c.future.cancel():
                self.inflight.remove(c)
                self.feeder.put_back(c.start, c.items)
        return self.feeder.front[0][0] if self.feeder.front else self.feeder.next_index

    def _switch(self) -> None:
        """The pool's last chunk is back (a fork while threads run the function could copy a
        lock one holds): it is shut down; the runner-up pool takes the rest, ramping up."""
        job, feeder = self.job, self.feeder
        alt, job.chunksize = self.adapt.switch_plan(self)
        at = feeder.front[0][0] if feeder.front else feeder.next_index
        self.backend.close(True)
        self.switched_from, job.kind, job.n_jobs = job.kind, alt.executor_type, alt.n_jobs
        feeder.chunksize, feeder.workers, feeder.limit = job.chunksize, job.n_jobs, 2 * job.n_jobs + 1
        feeder.ramp = feeder.floor = ramp_size(job)
        self.backend = new_backend(job)
        self.adapt.fallback.switched()
        job.report.fallback = (at, f"{alt.executor_type} x{alt.n_jobs} (chunksize {job.chunksize})", self.switch_to)
        self.switch_to = None

    # -- the loop --------------------------------------------------------------------------

    def results(self) -> Iterator[list[Any]]:
        clean = False
        try:
            while True:
                self.fill()
                if not len(self.inflight) and not self.feeder.retry and not self.feeder.front:
                    break  # (a retry whose submit met a pool broken again waits its turn)
                if self.inflight.waiting():
                    busy_inline = _can_run_inline(self)
                    timeout = 0 if busy_inline else Watchdog.wait_timeout(self)
                    done = self.inflight.wait(timeout)
                    if self.job.kind == "dask":
                        self.act(Watchdog.on_cluster(self))
                    elif self.job.kind == "thread":
                        Watchdog.on_threads(self)
                    if not done and busy_inline:
                        continue
                    if not done:
                        self.act(Watchdog.stuck(self))
                        continue
                if not self.harvest():
                    self.act(recover(self))
                    continue
                yield from _timed_out(self.inflight.release(self.feeder.hold_from()), self.adapt.fallback)
            clean = True
            self.feeder.raise_input_error()
        except BaseException as exc:
            _clear_own_frames(exc.__traceback__)
            raise
        finally:
            self.job.report.final_chunksize = self.feeder.chunksize
            if self.adapt.fallback.lost is not None:
                self.job.report.fallback_speedup, self.job.report.lost_pool = self.adapt.fallback.lost
            if self.adapt.done_items:
                self.job.report.measured_item_time = self.adapt.done_time / self.adapt.done_items
            self.inflight.forget()
            if not self.pool_closed:
                self.backend.close(clean)


_OWN_CODE = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)
    for parts in (("run", "dispatch.py"), ("run", "recovery.py"), ("run", "adapt.py"), ("errors.py",), ("backends", ""))
)
_GENERATOR_CODE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _clear_own_frames(tb: TracebackType | None) -> None:
    """Let go of the locals of this package's returned frames in a failure's traceback, and
    of this package's returned frames that called them (a pool thread's chunk runner): the
    failure rule's frame and a chunk runner's hold the exception itself, so through the
    traceback every frame down to the run, its pool included, stayed in a cycle until the
    garbage collector's next full pass. The function's own frames keep their locals."""
    while tb is not None:
        frame: FrameType | None = tb.tb_frame
        while frame is not None and _clear_finished(frame):
            frame = frame.f_back
        tb = tb.tb_next


def _clear_finished(frame: FrameType) -> bool:
    """Clear a frame of this package that has returned; False (untouched) for any other, one
    still running, or a generator's (clearing a suspended one would close it)."""
    if not frame.f_code.co_filename.startswith(_OWN_CODE) or frame.f_code.co_flags & _GENERATOR_CODE:
        return False
    try:
        frame.clear()
    except RuntimeError:  # still running
        return False
    return True


def _dask_worker_died(exc: BaseException, chunk: Chunk, run: "PoolRun") -> BaseException:
    """Dask's KilledWorker (the task's workers died more often than the scheduler allows)
    as a :class:`WorkerDied` naming the chunk's items, as a local pool's dead worker is; a
    scheduler that went away as recovery's ConnectionError (see :func:`_scheduler_gone`)."""
    _scheduler_gone(run)
    if type(exc).__name__ != "KilledWorker":
        return exc
    items = tuple(range(chunk.start, chunk.start + len(chunk.items)))
    died = WorkerDied(f"Dask workers died running items {items[0]}-{items[-1]} ({exc})", items)
    died.__cause__ = exc
    return died


def _raise_pool_error(exc: BaseException, kind: str, chunk: Chunk) -> None:
    last = chunk.start + len(chunk.items) - 1
    add_note(exc, f"autopar: sending or running items {chunk.start}-{last} on a {kind} pool failed")
    raise exc
