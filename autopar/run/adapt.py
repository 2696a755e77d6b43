"""Adapting a run while it goes: the chunksize (:class:`ChunkTuner`), and leaving a pool
that loses (:class:`Fallback` watches, :class:`Adapter` acts on the run): to serial in the
caller, or once from threads to the runner-up process pool. Nothing is lost or run twice: chunks
the pool has not started go back to the feeder, and a switch waits for the pool's last chunk.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

from ..backends.dask import cluster_costs
from ..backends.local import InlineBackend
from ..backends.worker import limited
from ..tune.costs import pool_costs
from ..tune.constants import CPU_RATIO_CPU
from ..tune.predict import Candidate, best_chunksize, best_dask
from .chunks import RAMP_SECONDS, Chunk, Feeder, Job

if TYPE_CHECKING:
    from .dispatch import PoolRun

__all__ = ["Adapter", "ChunkTuner", "Fallback"]

ADAPT_FACTOR = 2.0  # measured/expected item time outside [1/2, 2] triggers a new chunksize
FALLBACK_RATE = 0.9  # a pool delivering under this share of serial's rate gives way to serial
FALLBACK_MIN_TIME = 0.02  # seconds of steady running before a fallback is judged
SWITCH_MIN_TIME = 0.05  # ... and before a switch to the runner-up pool is
SWITCH_SHORTFALL = 0.8  # a pool delivering under this share of its predicted rate ...
SWITCH_GAIN = 1.2  # ... gives way to the other pool kind predicted this much faster than it
SWITCH_DRIFT = 1.5  # ... unless its items take this much more CPU than the sample's
# Threads delivering no more than this many cores' worth of CPU (their CPU an item times the
# rate they deliver) hold the GIL in turn: one core, and a little for the switches. Pure
# Python on 2-16 threads reads 0.95-1.05 here; GIL-free work about the threads it has.
GIL_CORES = 1.25
# ... items whose CPU in the threads is at least this share of their time alone compute (an
# item's CPU time varies by 10% from moment to moment here; naps read under 0.01).
GIL_COMPUTING = 0.5


class ChunkTuner:
    """Corrects the chunksize when the items take a different time in the workers than the
    sample said (outside a factor of ``ADAPT_FACTOR``)."""

    def __init__(self, job: Job, first_index: int, total: int | None) -> None:
        self.job, self.first_index, self.total = job, first_index, total
        self.basis = job.result.profile.item_time_mean if job.result is not None else None

    def adapt(self, feeder: Feeder, done_time: float, done_items: int, done_chunks: int) -> None:
        job, result = self.job, self.job.result
        if not (job.opts.adapt and self.basis and result is not None and done_chunks >= max(3, job.n_jobs)):
            return
        measured = done_time / done_items
        ratio = measured / self.basis
        if 1 / ADAPT_FACTOR <= ratio <= ADAPT_FACTOR:
            return
        if self.total is not None:
            left = self.total - feeder.next_index
        else:
            left = max(result.n_remaining + self.first_index - feeder.next_index, job.n_jobs)
        if left > 0:
            profile = replace(result.profile, item_time_mean=measured, item_time_std=result.profile.item_time_std * ratio)
            if job.kind == "dask":  # the cluster's task costs, not a local pool's
                new = best_dask(left, profile, cluster_costs(job.pool.client)).chunksize  # type: ignore[union-attr]
            else:
                costs = pool_costs(job.method)
                new = best_chunksize(job.kind, job.n_jobs, left, profile, costs, result.usable_cores).chunksize
            if new != feeder.chunksize:
                why = f"items take {measured * 1e3:.3g} ms, not {self.basis * 1e3:.3g} ms"
                job.report.chunksize_changes.append((feeder.next_index, feeder.chunksize, new, why))
                feeder.chunksize = new
        self.basis = measured


CHECK, SERIAL, SWITCH = "check", "serial", "switch"  # Fallback.losing()'s verdicts


class Fallback:
    """Watches the pool's delivered rate against serial's and against its own prediction.
    A pool clearly losing to serial gives way to it: the rest of the input runs inline (in
    the caller). A thread pool clearly short of its prediction, where the runner-up process
    pool is predicted clearly faster than what the threads deliver, gives way to it once. Nothing is lost or run twice either way.

    Serial's rate starts as the sample's item time. A pool that looks slower than that is
    not left on the sample's word: items can grow along the input, or run slower in a
    worker than in the caller (a forked heap, caches shared with the parent), and only
    timing a chunk in the caller tells which. So the first verdict is :data:`CHECK`: the
    run times the next small chunk serially, in the caller, and that becomes serial's
    rate; the pool is left only if it still loses over a window of chunks after it.

    The switch goes one way, threads to processes, for computing items only: threads of
    GIL-free FFTs sharing one malloc arena delivered x1.42 where the probe read x1.9 and
    processes ran x1.8, a cost of sharing one process that processes do not pay. The other
    way, processes short of their prediction because items grew along the input (pure
    Python, 1 s) went to threads predicted on the sample's item size, and took 1.62x the
    best. Items grown beyond the sample (CPU per item in the workers over
    :data:`SWITCH_DRIFT` times the sample's) do not switch either. It is judged over a
    longer window (:data:`SWITCH_MIN_TIME`, two chunks a worker) and only where the time it
    saves on the items left pays the other pool's start twice over."""

    def __init__(self, job: Job) -> None:
        self.job = job
        result = job.result
        profile = result.profile if result is not None else None
        self.serial_item = profile.item_time_mean if profile is not None else 0.0
        self.cpu_bound = profile is not None and profile.cpu_ratio >= CPU_RATIO_CPU
        self.checked = False  # serial_item comes from a chunk timed in the caller
        self.doubt = False  # the last window lost to serial's rate: chunks stop growing
        self.t0: float | None = None  # window start: the first chunk back, or the check
        self.items = 0
        self.chunks = 0
        self.busy_items, self.busy_time, self.busy_cpu = 0, 0.0, 0.0  # in the workers
        self.busy_chunks, self.t_begin = 0, time.perf_counter()
        self.item_cpu = profile.item_time_mean * profile.cpu_ratio if profile is not None else 0.0
        self.alternative: Candidate | None = None  # the process pool a thread run may switch to
        self.predicted_rate = self.alternative_rate = 0.0  # steady items/s, predicted
        # Not on figures from the tuning cache: the switch weighs what the threads deliver now
        # against predictions from another moment (in a full benchmark run, thread runs on a
        # hit switched on GIL-free rows where the grid's thread x2 won: 1.5x its time).
        fresh = result is not None and result.cache != "hit"
        threads = job.chosen and job.kind == "thread" and result is not None and result.n_remaining > 0
        if fresh and threads and self.cpu_bound:
            self.predicted_rate = _steady_rate(result.n_remaining, result.predicted_time - result.start_cost)
            self._take_alternative()
        # Threads the sample (or a kept profile) read as waiting or as parallel: watched for
        # the GIL's signature in what the run itself measures (see :meth:`gil_found`).
        self.gil_watch = bool(threads and job.n_jobs > 1 and self.alternative is None)
        self.thread_rate = (
            _steady_rate(result.n_remaining, result.predicted_time - result.start_cost) if self.gil_watch else 0.0
        )

    def _take_alternative(self) -> None:
        """The runner-up process pool and its predicted steady rate, if there is one."""
        result = self.job.result
        assert result is not None
        self.alternative = next((c for c in result.runner_ups if c.executor_type == "process"), None)
        if self.alternative is not None:
            alt = self.alternative
            self.alternative_rate = _steady_rate(result.n_remaining, alt.predicted_time - alt.start)

    def gil_found(self) -> bool:
        """Whether threads turned out to hold the GIL in turn, from the run's own figures, not
        the sample's: their CPU an item times the rate they deliver is about one core
        (:data:`GIL_CORES`) and the rate is short of the prediction. A function whose first
        call imported a module read CPU/wall 0.13 and x3.7 on 16 threads in its sample (the
        threads queued on the import lock): pure Python went to 16 threads, 4x serial's
        time. Then the items are taken as computing (serial's item time is their CPU time)
        and the runner-up process pool becomes the switch's alternative. ``rate``: items a
        second since the pool started (a chunk's time in its thread says nothing certain: a
        chunk of a few ms often runs within one switch interval of the GIL; and a window from
        the first chunk back counts the chunks already in flight then, half of a 16-thread
        run's items)."""
        if not self.gil_watch or self.busy_chunks < 2 * self.job.n_jobs or self.busy_cpu <= 0:
            return False
        item_cpu = self.busy_cpu / self.busy_items
        rate = self.busy_items / max(time.perf_counter() - self.t_begin, 1e-9)
        result = self.job.result
        assert result is not None
        # The items compute: their CPU in the threads is about their time alone (naps that
        # deliver short of a prediction are not the GIL's doing).
        computing = item_cpu >= GIL_COMPUTING * result.profile.item_time_mean
        if not computing or rate * item_cpu > GIL_CORES or rate >= SWITCH_SHORTFALL * self.thread_rate:
            return False
        self.gil_watch = False
        self.job.report.fallback_speedup = round(rate * item_cpu, 3)  # threads over serial, as run
        self.job.report.lost_pool = (self.job.kind, self.job.n_jobs)
        self.cpu_bound, self.serial_item, self.item_cpu, self.checked = True, item_cpu, item_cpu, True
        self.predicted_rate = self.thread_rate
        self._take_alternative()
        return True

    def serial_timed(self, n_items: int, wall: float, cpu: float) -> None:
        """A chunk of n_items ran in the caller: serial's item time, and a new window."""
        if n_items:
            # CPU time for computing items: the wall time of a caller sharing the cores
            # with the pool's workers would flatter the pool.
            self.serial_item = (cpu if self.cpu_bound else wall) / n_items
            self.checked = True
        self.restart()

    def restart(self) -> None:
        """A new window (after a check, or on the pool switched to)."""
        self.t0, self.items, self.chunks = time.perf_counter(), 0, 0

    def paused(self, seconds: float) -> None:
        """The caller was away ``seconds`` between blocks (a slow loop over execute_iter()):
        no chunk went out meanwhile, which is not the pool's doing."""
        self.t_begin += seconds

    def busy(self, items: int, elapsed: float, cpu: float) -> None:
        """A pool chunk of ``items`` took ``elapsed`` seconds (``cpu`` of CPU) in its worker."""
        self.busy_items += items
        self.busy_chunks += 1
        self.busy_time += elapsed
        self.busy_cpu += cpu

    def losing(self, items: int, left: int) -> tuple[str, str] | None:
        """``(verdict, why)``, or None; called with each pool chunk back, ``left`` items not
        handed out yet. Judged on the steady rate: from the first chunk back (the pool's
        start is paid whatever happens next) or from the last check."""
        if not (self.job.chosen and self.job.opts.adapt and self.serial_item > 0):
            return None
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
            return None
        self.items += items
        self.chunks += 1
        span = now - self.t0
        if span < FALLBACK_MIN_TIME or self.chunks < self.job.n_jobs:
            return None
        rate, serial_rate = self.items / span, 1.0 / self.serial_item
        if self.gil_found():
            self.restart()  # a new window, judged on the items' CPU time as serial's
            return self._gil_switch(left)
        self.doubt = rate < FALLBACK_RATE * serial_rate
        if self.doubt and not self.checked:
            return CHECK, ""
        if self.doubt:
            self.job.report.fallback_speedup = round(rate / serial_rate, 3)
            self.job.report.lost_pool = (self.job.kind, self.job.n_jobs)
            return SERIAL, (
                f"the pool delivered {rate:.4g} items/s against {serial_rate:.4g} items/s serially "
                f"({self.items} items over {span * 1e3:.0f} ms)"
            )
        self.checked = False  # items may drift: a later doubt is checked again
        return self._switch(span, left)

    def _gil_switch(self, left: int) -> tuple[str, str] | None:
        """Right away once the GIL is found: the runner-up process pool where it is predicted
        clearly faster than what the threads deliver and saves its start twice over."""
        alt = self.alternative
        rate = self.busy_items / max(time.perf_counter() - self.t_begin, 1e-9)
        if alt is None or self.alternative_rate < SWITCH_GAIN * rate or left / rate - left / self.alternative_rate < 2 * alt.start:
            return None
        return SWITCH, (
            f"the threads held the GIL in turn ({rate * self.item_cpu:.2f} cores busy, {rate:.4g} items/s "
            f"where {self.thread_rate:.4g} were predicted), and {alt.executor_type} x{alt.n_jobs} was predicted "
            f"{self.alternative_rate:.4g} items/s"
        )

    def _switch(self, span: float, left: int) -> tuple[str, str] | None:
        """The pool's rate here is what its workers deliver while busy (n over the item
        time in a worker): the rate of chunks back over a window is low while chunks still
        grow (the work in flight is not counted), and read a pool on its prediction as 0.77
        of it."""
        alt, n = self.alternative, self.job.n_jobs
        if alt is None or span < SWITCH_MIN_TIME or self.chunks < 2 * n or not self.busy_time:
            return None
        if self.busy_cpu / self.busy_items > SWITCH_DRIFT * self.item_cpu:
            return None  # the items grew: the other pool's prediction is as stale as this one's
        rate = n * self.busy_items / self.busy_time
        if rate >= SWITCH_SHORTFALL * self.predicted_rate or self.alternative_rate < SWITCH_GAIN * rate:
            return None
        saved = left / rate - left / self.alternative_rate
        if saved < 2 * alt.start:
            return None
        return SWITCH, (
            f"the pool's workers delivered {rate:.4g} items/s where {self.predicted_rate:.4g} were "
            f"predicted ({self.busy_items} items), and {alt.executor_type} x{alt.n_jobs} was predicted "
            f"{self.alternative_rate:.4g} items/s"
        )

    def switched(self) -> None:
        """The run moved to the alternative pool: it is watched against its own prediction,
        and never switches back."""
        assert self.alternative is not None
        self.predicted_rate, self.alternative = self.alternative_rate, None
        self.checked = self.doubt = False
        self.t0, self.items, self.chunks = None, 0, 0
        self.busy_items, self.busy_time, self.busy_cpu = 0, 0.0, 0.0


def _steady_rate(items: int, seconds: float) -> float:
    return items / seconds if seconds > 0 else 0.0  # (0: no prediction to judge by)


class Adapter:
    """What a run does on the watchers' verdicts, with each pool chunk back."""

    def __init__(self, run: PoolRun, first_index: int, total: int | None) -> None:
        # A proxy, not the run: a cycle would keep a finished pool's pipes open until the
        # garbage collector's next full pass.
        self.run = weakref.proxy(run)
        self.tuner = ChunkTuner(run.job, first_index, total)
        self.fallback = Fallback(run.job)

    def judge(self, items: int) -> None:
        run = self.run
        if run.inline is not None or run.switch_to is not None:
            return
        self.tuner.adapt(run.feeder, run.done_time, run.done_items, run.done_chunks)
        verdict = self.fallback.losing(items, self.left())
        if verdict is None:
            return
        if verdict[0] == CHECK:
            self.time_serially()
        elif verdict[0] == SERIAL:
            self.fall_back(verdict[1])
        else:
            self.hand_back_unstarted()
            run.switch_to = verdict[1]

    def left(self) -> int:
        """Items not handed out yet (estimated for input of unknown length)."""
        run = self.run
        if run.total is not None:
            return run.total - run.feeder.next_index
        n = run.job.result.n_remaining if run.job.result is not None else 0
        return max(n + run.first_index - run.feeder.next_index, 0) + len(run.feeder.front)

    def time_serially(self) -> None:
        """Run the next small chunk in the caller and take its time as serial's rate."""
        run = self.run
        size = min(run.feeder.chunksize, max(1, int(RAMP_SECONDS / self.fallback.serial_item)))
        nxt = run.feeder.next_chunk(size)
        if nxt is None:
            return
        fut = InlineBackend(limited(run.job.func, run.job.opts.timeout), run.job.opts.collect).submit(*nxt)
        run.inflight.add(Chunk(nxt[0], nxt[1], fut, inline=True))
        run.job.report.n_chunks += 1
        _, wall, failures, cpu = fut.result()
        self.fallback.serial_timed(0 if failures else len(nxt[1]), wall, cpu)

    def fall_back(self, why: str) -> None:
        """The rest runs inline; chunks the pool has not started come back to run inline too."""
        run = self.run
        run.inline = InlineBackend(limited(run.job.func, run.job.opts.timeout), run.job.opts.collect)
        at = self.hand_back_unstarted()
        run.feeder.chunksize = max(1, int(0.02 / max(self.fallback.serial_item, 1e-9)))
        run.job.report.fallback = (at, "serial", why)

    def hand_back_unstarted(self) -> int:
        """Chunks the pool has not started go back to the feeder; the first item not run."""
        run = self.run
        for c in run.inflight.unchecked():
            if c.future.cancel():
                run.inflight.remove(c)
                run.feeder.put_back(c.start, c.items)
        return run.feeder.front[0][0] if run.feeder.front else run.feeder.next_index

    def switch(self) -> None:
        """Once the pool's last chunk is back, it is shut down and the runner-up pool takes
        the rest, ramping up as a chosen pool does. (Not before: a fork while the threads
        are inside the function could copy a lock one of them holds.)"""
        run = self.run
        job, feeder, why = run.job, run.feeder, run.switch_to
        alt = self.fallback.alternative
        assert alt is not None and why is not None
        at = feeder.front[0][0] if feeder.front else feeder.next_index
        run.backend.close(True)
        run.switched_from = job.kind
        job.kind, job.n_jobs = alt.executor_type, alt.n_jobs
        if job.result is not None:
            costs = pool_costs(job.method)
            left = max(self.left(), 1)
            job.chunksize = best_chunksize(job.kind, job.n_jobs, left, job.result.profile, costs, job.result.usable_cores).chunksize
        feeder.chunksize, feeder.workers, feeder.limit = job.chunksize, job.n_jobs, 2 * job.n_jobs + 1
        feeder.ramp = feeder.floor = run.ramp_size()
        run.backend = run.new_backend()
        self.fallback.switched()
        run.switch_to = None
        job.report.fallback = (at, f"{alt.executor_type} x{alt.n_jobs} (chunksize {job.chunksize})", why)
