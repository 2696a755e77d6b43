"""Adapting a run while it goes: the chunksize (:class:`ChunkTuner`), and leaving a pool
that loses (:class:`Fallback`): to serial in the caller, or once from threads to the runner-up
process pool. These only read the run: :class:`Adapter` turns their verdicts into a
:class:`~autopar.run.recovery.Decision` that :meth:`PoolRun.act
<autopar.run.dispatch.PoolRun.act>` carries out (nothing is lost or run twice: chunks the pool
has not started go back to the feeder, and a switch waits for the pool's last chunk).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ..backends.dask import cluster_costs
from ..tune.costs import pool_costs
from ..tune.constants import CPU_RATIO_CPU
from ..tune.predict import Candidate, best_chunksize, best_dask, fair_progress
from .chunks import RAMP_SECONDS, Feeder, Job
from .recovery import Decision

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

    def adapt(self, feeder: Feeder, done_time: float, done_items: int, done_chunks: int) -> tuple[int, str] | None:
        """A new chunksize and why, or None."""
        job, result = self.job, self.job.result
        if not (job.opts.adapt and self.basis and result is not None and done_chunks >= max(3, job.n_jobs)):
            return None
        measured = done_time / done_items
        ratio = measured / self.basis
        if 1 / ADAPT_FACTOR <= ratio <= ADAPT_FACTOR:
            return None
        basis, self.basis = self.basis, measured
        if self.total is not None:
            left = self.total - feeder.next_index
        else:
            left = max(result.n_remaining + self.first_index - feeder.next_index, job.n_jobs)
        if left <= 0:
            return None
        profile = replace(result.profile, item_time_mean=measured, item_time_std=result.profile.item_time_std * ratio)
        if job.kind == "dask":  # the cluster's task costs, not a local pool's
            new = best_dask(left, profile, cluster_costs(job.pool.client)).chunksize  # type: ignore[union-attr]
        else:
            new = best_chunksize(job.kind, job.n_jobs, left, profile, pool_costs(job.method), result.usable_cores).chunksize
        if new == feeder.chunksize:
            return None
        return new, f"items take {measured * 1e3:.3g} ms, not {basis * 1e3:.3g} ms"


CHECK, SERIAL, SWITCH = "check", "serial", "switch"  # Fallback.losing()'s verdicts


class Fallback:
    """Watches the pool's delivered rate against serial's and against its own prediction.
    A pool clearly losing to serial gives way to it (the rest runs in the caller); a thread
    pool of computing items clearly short of its prediction gives way once to the runner-up
    process pool predicted clearly faster, where that saves its start twice over.

    Serial's rate starts as the sample's item time, but a pool is not left on the sample's
    word: the first verdict is :data:`CHECK` (the next small chunk is timed in the caller and
    becomes serial's rate); the pool is left only if it still loses over a window after it.
    The switch goes one way, threads to processes, and not for items grown beyond the sample
    (CPU an item over :data:`SWITCH_DRIFT` times the sample's). Why: docs/notes/run.md."""

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
        self.lost: tuple[float, tuple[str, int]] | None = None  # (speedup over serial, the pool): a verdict
        self.alternative: Candidate | None = None  # the process pool a thread run may switch to
        self.predicted_rate = self.alternative_rate = 0.0  # steady items/s, predicted
        # Not on figures from the tuning cache: predictions from another moment.
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
        """Whether threads turned out to hold the GIL in turn, on the run's own figures: their
        CPU an item times the rate they deliver (items a second since the pool started) is
        about one core (:data:`GIL_CORES`), short of the prediction. Then the items count as
        computing (serial's item time is their CPU time) and the runner-up process pool
        becomes the switch's alternative."""
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
        self.lost = (round(rate * item_cpu, 3), (self.job.kind, self.job.n_jobs))  # threads over serial, as run
        self.cpu_bound, self.serial_item, self.item_cpu, self.checked = True, item_cpu, item_cpu, True
        self.predicted_rate = self.thread_rate
        self._take_alternative()
        return True

    def serial_share(self) -> float:
        """The share of a core a serial run in the caller would get now, for a process pool's
        computing items (serial's item time is then their CPU time): each worker got
        ``s`` of a core while busy (its CPU over its time), so ``cores / s - n`` cores' worth
        of other work runs beside the pool, beside which one thread gets its fair share.
        1.0 on a quiet machine; beside three spinning processes on 2 cores, 2 workers get
        0.4 of a core each, serial would get 0.5, not 1. (Not for threads: a thread's CPU
        share also falls for the GIL.)"""
        job, result = self.job, self.job.result
        if not (self.cpu_bound and job.kind == "process" and self.busy_time > 0 and result is not None):
            return 1.0
        s = min(self.busy_cpu / self.busy_time / max(result.profile.cpu_ratio, CPU_RATIO_CPU), 1.0)
        cores = result.usable_cores
        others = max(cores / max(s, 1e-3) - job.n_jobs, 0.0)  # (n workers at s each: fair_progress's inverse)
        return fair_progress(1, 1.0, cores, others)

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
        rate, serial_rate = self.items / span, self.serial_share() / self.serial_item
        if self.gil_found():
            self.restart()  # a new window, judged on the items' CPU time as serial's
            return self._gil_switch(left)
        self.doubt = rate < FALLBACK_RATE * serial_rate
        if self.doubt and not self.checked:
            return CHECK, ""
        if self.doubt:
            self.lost = (round(rate / serial_rate, 3), (self.job.kind, self.job.n_jobs))
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
    """The run's watchers: with each pool chunk back, :meth:`judge` reads the run and says
    what to do as a :class:`~autopar.run.recovery.Decision` (a new chunksize, a chunk to time
    in the caller, a fallback to serial, a switch); :meth:`PoolRun.act` does it."""

    def __init__(self, job: Job, first_index: int, total: int | None) -> None:
        self.tuner = ChunkTuner(job, first_index, total)
        self.fallback = Fallback(job)
        self.done_time, self.done_items, self.done_chunks = 0.0, 0, 0  # pool chunks back

    def judge(self, run: PoolRun, items: int, elapsed: float, cpu: float) -> Decision | None:
        """A pool chunk of ``items`` came back, ``elapsed`` seconds (``cpu`` of CPU) in its worker."""
        self.done_time += elapsed
        self.done_items += items
        self.done_chunks += 1
        self.fallback.busy(items, elapsed, cpu)
        if run.inline is not None or run.switch_to is not None:
            return None
        chunksize = self.tuner.adapt(run.feeder, self.done_time, self.done_items, self.done_chunks)
        verdict = self.fallback.losing(items, left(run))
        if verdict is None:
            return Decision(chunksize=chunksize) if chunksize else None
        kind, why = verdict
        return Decision(chunksize=chunksize, check=kind == CHECK, inline=why if kind == SERIAL else None,
                        switch=why if kind == SWITCH else None)

    def check_size(self, chunksize: int) -> int:
        """Items in the chunk timed in the caller: about a ramp chunk's work."""
        return min(chunksize, max(1, int(RAMP_SECONDS / self.fallback.serial_item)))

    def switch_plan(self, run: PoolRun) -> tuple[Candidate, int]:
        """The runner-up pool the run moves to, and its chunksize for the items left."""
        alt, job = self.fallback.alternative, run.job
        assert alt is not None
        chunksize = job.chunksize
        if job.result is not None:
            costs = pool_costs(job.method)
            chunksize = best_chunksize(
                alt.executor_type, alt.n_jobs, max(left(run), 1), job.result.profile, costs, job.result.usable_cores
            ).chunksize
        return alt, chunksize


def left(run: PoolRun) -> int:
    """Items not handed out yet (estimated for input of unknown length)."""
    if run.total is not None:
        return run.total - run.feeder.next_index
    n = run.job.result.n_remaining if run.job.result is not None else 0
    return max(n + run.first_index - run.feeder.next_index, 0) + len(run.feeder.front)
