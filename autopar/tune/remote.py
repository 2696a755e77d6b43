"""The sample's items run in a worker process, for work that must never run in the caller.

``executor_type="process"`` promises that the function runs in worker processes only: a
crash (``os._exit``, a segfault) then takes a worker, never the caller, and threads the
function starts stay in the workers. The sample keeps that promise by sending its items,
batch by batch, to a pool of one worker (BLAS capped at one thread, as a pool of ``cores``
workers runs them) and timing them there; the results come back as any chunk's do.

A batch that breaks the worker, or outlives its items' time limits by ``GRACE``, or cannot be
sent, ends the sample: its items go back in front of the input, and the run's own pool meets
them with the run's rules (retries, ``WorkerDied`` naming the item and how its worker ended,
``ItemTimeout``, an error naming the item that cannot be pickled).
"""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from .. import _serialize
from ..backends.process import ProcessBackend, Unsendable, make_process_pool
from ..backends.worker import Failure

__all__ = ["RemoteItems"]

GRACE = 1.0  # seconds past a batch's time limits before its worker counts as stuck
STARTUP = 30.0  # more for the first batch: a spawned worker imports before it runs anything


class RemoteItems:
    """A one-worker process pool that runs the sample's batches; ``close()`` when done."""

    def __init__(self, func: Callable[[Any], Any], start_method: str, collect: bool, timeout: float | None) -> None:
        self.timeout = timeout
        self.backend = ProcessBackend(
            func,
            lambda: make_process_pool(1, start_method, 1),
            None,
            _serialize.CLOUDPICKLE,  # the sample does not know yet what plain pickle can carry
            collect,
            timeout,
        )
        self.broken = False
        self.started = False

    def run(self, start: int, items: list[Any]) -> tuple[list[Any], list[Failure], float, float] | None:
        """(results, failures, wall seconds, CPU seconds in the worker), or None where the
        batch did not come back (the worker died or hung, or the items cannot be sent)."""
        if self.broken:
            return None
        try:
            fut = self.backend.submit(start, items)
        except Unsendable:
            return None
        limit = None if self.timeout is None else len(items) * self.timeout + GRACE
        if limit is not None and not self.started:
            limit += STARTUP  # the first batch also waits for the worker to start
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

