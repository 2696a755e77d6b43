"""When a pool goes wrong: items stuck past their timeout, and workers that died.

* :class:`Watchdog`: no chunk finished for (longest in-flight chunk x timeout + 1 s for
  processes) means an item is stuck beyond the reach of SIGALRM. Threads cannot be stopped:
  the run raises :class:`ItemTimeout`. A process pool the run owns is killed and replaced;
  the stuck chunk fails (collect) or raises, the other in-flight items run again.
  On Dask, where the other workers' progress goes on around a stuck one, the check is per
  chunk: one sent longer ago than its items' timeouts + 2 s makes the run ask the workers
  what they are running (at most once a second), and a chunk running that long has its
  task cancelled (the call goes on holding its thread until it returns) and fails or
  raises; a scheduler that went away ends the run within about a second.
* :func:`recover`: a broken process pool. The items in flight are named with how the worker
  ended; with retries left (:class:`~autopar.backends.retry.Retry`, the Manager's policy too)
  they run again on a fresh pool one at a time (a second crash then names its item), after
  ``retry_backoff * 2**(attempt-1)`` seconds; out of retries they raise :class:`WorkerDied`
  or, collecting, fail in place.

Both only read the run: what to do comes back as a :class:`Decision` (or an exception to
raise), and :meth:`PoolRun.act <autopar.run.dispatch.PoolRun.act>` does it: the run's state
has one writer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends.retry import Retry
from ..errors import ItemTimeout, WorkerDied
from .report import ranges

if TYPE_CHECKING:
    from .chunks import Chunk
    from .dispatch import PoolRun

__all__ = ["Decision", "Watchdog", "recover"]

GRACE = {"process": 1.0, "dask": 2.0, "thread": 0.5}  # seconds past the items' timeouts before a pool counts as stuck
# More, until a chunk has come back from a process pool whose workers import before they run
# anything: a spawned worker under load took longer to start than a 0.5 s limit plus the
# grace, and the watchdog killed it for its first item (the sample's worker allows as much).
WORKER_STARTUP = {"spawn": 30.0, "forkserver": 30.0}
CLUSTER_CHECK = 1.0  # seconds between checks that a Dask scheduler is still there


@dataclass
class Decision:
    """What recovery (or the run's watchers, :mod:`.adapt`) decided; :meth:`PoolRun.act` does
    it, in this order: ``stop`` (chunks stopped where they run: ``backend.stop(where)``),
    ``error`` raised, ``put_back`` (chunks not started: cancelled, sent again before anything
    new), ``replace`` (the pool killed, a fresh one started), ``fail`` (chunks whose items
    fail in place), ``requeue`` (the other unfinished chunks' items queued again one at a
    time; "again": as one more attempt), ``wait`` (seconds before they go), ``retried`` (item
    indices, for the report); then the watchers': ``chunksize`` (the new one and why),
    ``check`` (time the next small chunk in the caller), ``inline`` (why the rest runs in
    the caller), ``switch`` (why the rest goes to the runner-up pool once this one's last
    chunk is back); both hand back the chunks the pool has not started."""

    stop: list[tuple[Chunk, Any]] = field(default_factory=list)
    error: BaseException | None = None
    put_back: list[Chunk] = field(default_factory=list)
    replace: bool = False
    fail: list[tuple[Chunk, BaseException]] = field(default_factory=list)
    requeue: str | None = None  # None, "same" or "again"
    wait: float = 0.0
    retried: list[int] = field(default_factory=list)
    checked: float | None = None  # when the Dask workers were asked what they run
    chunksize: tuple[int, str] | None = None
    check: bool = False
    inline: str | None = None
    switch: str | None = None


class Watchdog:
    """Stateless checks on a run (it holds no reference to the run: no cycle keeps a finished
    run's pool, and its pipes, alive until the garbage collector finds it)."""

    @staticmethod
    def stuck_limit(run: "PoolRun") -> float:
        """Seconds without a finished chunk after which the pool counts as stuck."""
        longest = max(len(c.items) for c in run.inflight)
        limit = longest * (run.job.opts.timeout or 0.0) + GRACE.get(run.job.kind, 0.0)
        if run.job.kind == "process" and not getattr(run.backend, "warm", True):
            limit += WORKER_STARTUP.get(run.job.method, 0.0)
        return limit

    @classmethod
    def wait_timeout(cls, run: "PoolRun") -> float | None:
        """How long to wait for a chunk now (None: forever, when there is no timeout; on
        Dask at most ``CLUSTER_CHECK`` seconds, to see a scheduler that went away)."""
        dask = run.job.kind == "dask"
        if run.job.opts.timeout is None:
            return CLUSTER_CHECK if dask else None
        left = max(cls.stuck_limit(run) - (time.monotonic() - run.last_progress), 0.01)
        if run.job.kind == "thread" and not run.job.opts.collect:
            left = min(left, THREAD_CHECK)  # an item past its limit is looked for per item
        return min(left, CLUSTER_CHECK) if dask else left

    @classmethod
    def on_cluster(cls, run: "PoolRun") -> Decision | None:
        """A Dask run's checks at each turn of its loop: the scheduler still there, and, with
        a timeout, chunks overdue (sent longer ago than their limit) asked after."""
        cls.cluster_gone(run)
        timeout = run.job.opts.timeout
        now = time.monotonic()
        if timeout is None or now - run.cluster_checked < CLUSTER_CHECK:
            return None
        if any(now - c.sent >= len(c.items) * timeout + GRACE["dask"] for c in run.inflight.unchecked()):
            decision = cls._stuck_on_cluster(run, timeout)
            decision.checked = now
            return decision
        return None

    @staticmethod
    def _stuck_on_cluster(run: "PoolRun", timeout: float) -> Decision:
        """A quiet Dask run: chunks the workers have been running past their items' timeouts
        are stopped (their tasks cancelled), then fail in place (collect) or the run raises.
        The stuck call goes on holding its worker's thread, so that worker gets no more of the
        run's tasks, and chunks not started yet (perhaps queued behind it there) go again to
        the others."""
        running = run.backend.running()  # type: ignore[attr-defined]
        decision = Decision()
        for c in run.inflight.unchecked():
            seconds, worker = running.get(c.start, (0.0, ""))
            if c.future.done() or seconds < len(c.items) * timeout + GRACE["dask"]:
                continue
            indices = list(range(c.start, c.start + len(c.items)))
            error = ItemTimeout(
                f"items {ranges(indices)} ran past the {timeout:g} s timeout on the Dask worker {worker}; "
                "the task is cancelled, but a thread cannot be stopped: the call goes on there until it returns"
            )
            decision.stop.append((c, (c.future, worker)))
            if not run.job.opts.collect:
                decision.error = error
                return decision
            decision.fail.append((c, error))
        if decision.stop:
            stopped = {id(c) for c, _ in decision.stop}
            decision.put_back = [
                c for c in run.inflight.unchecked() if id(c) not in stopped and c.start not in running and not c.future.done()
            ]
        return decision

    @staticmethod
    def cluster_gone(run: "PoolRun") -> None:
        """A Dask run whose scheduler went away: its tasks are lost with it; a
        ConnectionError names the scheduler and the items that had not come back."""
        gone = getattr(run.backend, "gone", None)
        why = gone() if gone is not None else None
        if why is None:
            return
        lost = [c.start + i for c in run.inflight.unchecked() for i in range(len(c.items))]
        raise ConnectionError(f"{why}; items {ranges(lost) if lost else 'none'} were in flight")

    @staticmethod
    def on_threads(run: "PoolRun") -> None:
        """A thread run's check at each turn of its loop, with a time limit and not
        collecting: an item stuck past its limit in a call into C raises now."""
        timeout = run.job.opts.timeout
        if timeout is not None and not run.job.opts.collect:
            _thread_overdue(run, timeout)

    @classmethod
    def stuck(cls, run: "PoolRun") -> Decision | None:
        """No chunk came back for the stuck limit: a process pool the run owns is killed and
        replaced (its stuck chunk fails or raises, the others run again); threads, and a
        pool the caller gave, raise."""
        job = run.job
        timeout = job.opts.timeout
        if timeout is None or time.monotonic() - run.last_progress < cls.stuck_limit(run):
            return None
        unfinished = [c for c in run.inflight if not c.checked and not c.future.done()]
        if not unfinished or job.kind == "dask":  # (Dask: see on_cluster)
            return None
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
        error = ItemTimeout(f"items {ranges(indices)} ran past the {timeout:g} s timeout; the worker was killed")
        if not job.opts.collect:
            return Decision(error=error)  # (the run's close kills the pool)
        return Decision(replace=True, fail=[(stuck, error)], requeue="same")


THREAD_CHECK = 0.25  # seconds between looks for a thread item stuck past its limit


def _thread_overdue(run: "PoolRun", timeout: float) -> None:
    """A thread item past its limit by ``GRACE["thread"]`` is in a call that does not come
    back to Python (the exception raised into it waits for the call to return): the run
    raises now, naming the chunks that have not come back, instead of waiting for the whole
    chunk's limits to pass without progress anywhere."""
    overdue = getattr(run.backend.func, "overdue", None)  # type: ignore[union-attr]
    if overdue is None or overdue() < GRACE["thread"]:
        return
    unfinished = [c for c in run.inflight if not c.checked and not c.future.done()]
    indices = [c.start + i for c in unfinished for i in range(len(c.items))]
    raise ItemTimeout(
        f"an item ran past the {timeout:g} s timeout on a thread (among items {ranges(indices)}), in a call "
        "that does not return to Python; threads cannot be stopped: the stuck call goes on in the background "
        "until it returns"
    )


def recover(run: "PoolRun") -> Decision:
    """A worker died: replace the pool and queue the lost items again, or give up. Whether
    an item goes again, and after how long, is :class:`~autopar.backends.retry.Retry`'s
    decision (``execute(retries=, retry_backoff=)`` as a policy)."""
    job = run.job
    policy = Retry.for_lost_items(job.opts.retries, job.opts.retry_backoff)
    ended = run.backend.how_it_ended()
    lost = run.inflight.unchecked()
    indices = [c.start + i for c in lost for i in range(len(c.items))]
    died = WorkerDied(ended, tuple(indices))
    give_up = [c for c in lost if not policy.retries(died, c.attempt + 1)]
    retries = policy.attempts - 1
    message = f"{ended}; items {ranges(indices)} were in flight" + (
        f" (after {retries} retries)" if retries and give_up else ""
    )
    if not run.backend.owned or (give_up and not job.opts.collect):
        raise WorkerDied(message, tuple(indices)) from None
    # Out of retries (collecting): these items fail, the others run again on the fresh pool.
    fail: list[tuple[Chunk, BaseException]] = [(c, WorkerDied(message, tuple(indices))) for c in give_up]
    again = [c.attempt + 1 for c in lost if c not in give_up] + [r[2] for r in run.feeder.retry]
    wait = policy.delay(max(again, default=1)) if retries else 0.0
    return Decision(replace=True, fail=fail, requeue="again", wait=wait, retried=indices)
