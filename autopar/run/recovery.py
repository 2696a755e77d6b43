"""When a pool goes wrong: items stuck past their timeout, and workers that died.

* :class:`Watchdog`: no chunk finished for (longest in-flight chunk x timeout + 1 s for
  processes) means an item is stuck beyond the reach of SIGALRM. Threads cannot be stopped:
  the run raises :class:`ItemTimeout`. A process pool the run owns is killed and replaced;
  the stuck chunk fails (collect) or raises, the other in-flight items run again.
* :func:`recover`: a broken process pool. The items in flight are named with how the worker
  ended; with retries left they run again on a fresh pool one at a time (a second crash then
  names its item), after ``retry_backoff * 2**attempt`` seconds; out of retries they raise
  :class:`WorkerDied` or, collecting, fail in place.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..errors import ItemTimeout, WorkerDied
from .report import ranges

if TYPE_CHECKING:
    from .dispatch import PoolRun

__all__ = ["Watchdog", "recover"]


class Watchdog:
    """Stateless checks on a run (it holds no reference to the run: no cycle keeps a finished
    run's pool, and its pipes, alive until the garbage collector finds it)."""

    @staticmethod
    def stuck_limit(run: "PoolRun") -> float:
        """Seconds without a finished chunk after which the pool counts as stuck."""
        longest = max(len(c.items) for c in run.inflight)
        return longest * (run.job.opts.timeout or 0.0) + (1.0 if run.job.kind == "process" else 0.0)

    @classmethod
    def wait_timeout(cls, run: "PoolRun") -> float | None:
        """How long to wait for a chunk now (None: forever, when there is no timeout)."""
        if run.job.opts.timeout is None:
            return None
        return max(cls.stuck_limit(run) - (time.monotonic() - run.last_progress), 0.01)

    @classmethod
    def stuck(cls, run: "PoolRun") -> None:
        job = run.job
        timeout = job.opts.timeout
        if timeout is None or time.monotonic() - run.last_progress < cls.stuck_limit(run):
            return
        unfinished = [c for c in run.inflight if not c.checked and not c.future.done()]
        if not unfinished:
            return
        # Items not yet started may be queued behind the stuck ones: name what is running.
        stuck = unfinished[0]
        indices = list(range(stuck.start, stuck.start + len(stuck.items)))
        if job.kind == "thread":
            raise ItemTimeout(
                f"items {ranges(indices)} ran past the {timeout:g} s timeout on a thread; threads "
                "cannot be stopped: the stuck call goes on in the background until it returns"
            )
        if not run.backend.owned:
            raise ItemTimeout(f"items {ranges(indices)} ran past the {timeout:g} s timeout")
        # A process worker is stuck beyond the reach of SIGALRM: kill the pool, go on without it.
        run.backend.replace()
        run.inflight.remove(stuck)
        error = ItemTimeout(f"items {ranges(indices)} ran past the {timeout:g} s timeout; the worker was killed")
        if not job.opts.collect:
            raise error
        run.fail_chunk(stuck, error)
        _requeue_lost(run, count_attempt=False)


def _requeue_lost(run: "PoolRun", count_attempt: bool) -> None:
    """Take the unfinished chunks off the broken pool and queue their items again, one item
    per chunk so that a second crash names the item."""
    for c in run.inflight.take_unchecked():
        attempt = c.attempt + (1 if count_attempt else 0)
        for i, item in enumerate(c.items):
            run.feeder.add_retry(c.start + i, [item], attempt)


def recover(run: "PoolRun") -> None:
    """A worker died: replace the pool and queue the lost items again, or give up."""
    job = run.job
    retries = job.opts.retries
    ended = run.backend.how_it_ended()
    lost = run.inflight.unchecked()
    indices = [c.start + i for c in lost for i in range(len(c.items))]
    give_up = [c for c in lost if c.attempt >= retries]
    message = f"{ended}; items {ranges(indices)} were in flight" + (
        f" (after {retries} retries)" if retries and give_up else ""
    )
    if not run.backend.owned or (give_up and not job.opts.collect):
        raise WorkerDied(message, tuple(indices)) from None
    run.backend.replace()
    if give_up and job.opts.collect:
        # Out of retries: these items fail, the others run again on the fresh pool.
        for c in give_up:
            run.inflight.remove(c)
            run.fail_chunk(c, WorkerDied(message, tuple(indices)))
    _requeue_lost(run, count_attempt=True)
    if retries:
        attempt = max((r[2] for r in run.feeder.retry), default=1)
        time.sleep(job.opts.retry_backoff * 2 ** max(attempt - 1, 0))
    job.report.retried.extend(indices)
