"""The sample's items run in a one-worker process pool, for ``executor_type="process"``
(the function never runs in the caller). A batch that breaks the worker, outlives its time
limits by ``REMOTE_GRACE`` or cannot be sent ends the sample: its items go back in front of the
input, for the run's own pool to meet with the run's rules.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Callable

from ... import _serialize
from ...backends.process import ProcessBackend, Unsendable, make_process_pool
from ...backends.worker import Failure, Span
from .. import constants

if TYPE_CHECKING:
    from .sampler import _Sampler

__all__ = ["RemoteItems"]


class RemoteItems:
    """A one-worker process pool that runs the sample's batches; ``close()`` when done."""

    def __init__(self, func: Callable[[Any], Any], start_method: str, collect: bool, timeout: float | None) -> None:
        self.timeout = timeout
        # Cloudpickle: the sample does not know yet what plain pickle can carry.
        self.backend = ProcessBackend(
            func, lambda: make_process_pool(1, start_method, 1), None, _serialize.CLOUDPICKLE, collect, timeout
        )
        self.broken = False
        self.started = False
        # The first batch also waits for the worker to start: a spawned (or forkserver) worker
        # imports before it runs anything; a forked one is up at once (a grace more for a
        # large caller's fork on a busy machine).
        self.startup = constants.REMOTE_GRACE if start_method == "fork" else constants.REMOTE_STARTUP

    def run(self, start: int, items: list[Any]) -> tuple[list[Any], list[Failure], float, float] | None:
        """(results, failures, wall seconds, CPU seconds in the worker), or None where the
        batch did not come back (the worker died or hung, or the items cannot be sent)."""
        if self.broken:
            return None
        try:
            fut = self.backend.submit(start, items)
        except Unsendable:
            return None
        limit = None if self.timeout is None else len(items) * self.timeout + constants.REMOTE_GRACE
        if limit is not None and not self.started:
            limit += self.startup
        try:
            values, wall, failures, cpu = fut.result(timeout=limit)
        except FutureTimeout:
            self.broken = True  # stuck beyond SIGALRM's reach: the run's watchdog handles it
            return None
        except Exception as exc:
            if not self.backend.is_broken(exc):  # the chunk ran; its results did not travel
                last = start + len(items) - 1
                raise TypeError(
                    f"the results of items {start}-{last} cannot be sent back from a process worker "
                    f"({type(exc).__name__}: {exc}); use executor_type='thread' or 'serial'"
                ) from exc
            self.broken = True
            return None
        self.started = True
        return self.backend.decode(values), failures, wall, cpu

    def close(self) -> None:
        self.backend.close(clean=not self.broken)


def _first_remote(sp: "_Sampler", first: list[Any]) -> bool:
    """The first item in the sample's worker process (``executor_type="process"``)."""
    got = _remote_batch(sp, first)
    if got is None:
        return False
    wall, cpu = got
    sp.first.time, sp.first.cpu, sp.first.own = wall, cpu, cpu
    sp.first.active = wall
    sp.memory.watch = False  # another process's memory: the RSS poller cannot see it
    sp.first.waiting = wall >= 1e-3 and cpu / wall < constants.IO_BOUND
    return True


def _remote_batch(sp: "_Sampler", batch: "list[Any] | Span") -> tuple[float, float] | None:
    """Run a batch in the sample's worker process; (wall, CPU) seconds, or None where it
    did not come back (its items go back in front)."""
    items = list(batch)
    got = sp.remote.run(sp.kept.done, items)  # type: ignore[union-attr]
    if got is None:
        sp.src.push_back(items)
        return None
    out, failed, wall, cpu = got
    sp.kept.fail(failed, "process (sample)")
    sp.kept.keep(items, out)
    return max(wall, 1e-9), cpu


def _timed_remote(sp: "_Sampler", batch: "list[Any] | Span") -> bool:
    got = _remote_batch(sp, batch)
    if got is None:
        return False
    dt, dc = got
    ratio = dc / dt if dt >= 1e-3 else None
    sp.timings.add(len(batch), dt, sp.kept.done - (len(batch) + 1) / 2, ratio, ratio)
    return True
