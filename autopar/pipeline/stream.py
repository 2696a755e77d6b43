"""A staged pipeline kept running for items that arrive over time: :class:`Stream`, and
:class:`StreamStalled` (submit() would wait forever on results no thread takes)."""

from __future__ import annotations

import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import AutoparError
from .checks import _check_timeout
from .handoff import POLL, Stopped
from .staged import StagedRun

if TYPE_CHECKING:
    from .api import Pipeline

STALL_GRACE = 5.0  # seconds submit() waits on a stream stalled for want of a reader before it says so


class StreamStalled(AutoparError, RuntimeError):
    """submit() on a stream whose results are full while no thread takes them: it would wait
    forever (the item did not go in; the stream goes on)."""


class Stream:
    """A running staged pipeline: ``submit(x)`` (blocks while the first queue is full:
    backpressure), ``get_result(timeout)`` (in submission order unless ``ordered=False``),
    ``results(count)``, ``process_batch(items)``, ``metrics()``, ``stop()``. A context
    manager: leaving it stops every stage; so does dropping it (a finalizer, as
    concurrent.futures' executors have). Results wait in the last queue until taken, so a
    consumer that does not take them holds the whole pipeline to its queues' bound: a
    submit() that would then wait forever raises :class:`StreamStalled` instead."""

    def __init__(self, pipe: Pipeline, config: list[tuple[str, int]], queue_size: int, collect: bool, ordered: bool) -> None:
        self.run = StagedRun(pipe.stages, config, queue_size, collect, ordered, start_method=pipe.start_method)
        # Dropped without stop(): the run stops all the same (the finalizer holds the run only).
        self._finalizer = weakref.finalize(self, self.run.close, True)
        self.closed = False
        self.queue_size = queue_size
        self.lock = threading.Lock()  # one submitter at a time (sequence numbers)
        self.readers_lock = threading.Lock()
        self.waiting = 0  # threads in get_result() now
        self.readers: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()  # threads that took results

    def submit(self, item: Any, block: bool = True, timeout: float | None = None) -> int:
        """Put an item in; its sequence number. While the first queue is full it waits for room
        (``block`` False: queue.Full at once; ``timeout``: TimeoutError after that). Where the
        results stay full for STALL_GRACE seconds and no thread takes them (none waits in
        get_result(), no other live thread ever took one): :class:`StreamStalled`."""
        _check_timeout(timeout)
        if self.closed:
            raise RuntimeError("the stream is stopped")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"submit(): another thread's submit() held the stream for {timeout} s")
        try:
            return self._put(item, block, deadline, timeout)
        except Stopped:
            raise self.run.error or RuntimeError("the stream is stopped") from None
        finally:
            self.lock.release()

    def _put(self, item: Any, block: bool, deadline: float | None, timeout: float | None) -> int:
        stalled: float | None = None  # since when nothing but a reader could make room
        while True:
            wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            try:
                return self.run.put(item, block and wait > 0, wait)
            except queue.Full:
                if not block:
                    raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                why = f" ({self._stall_text()})" if self._stalled() else ""
                raise TimeoutError(f"submit(): no room in the stream within {timeout} s{why}")
            if deadline is None and self._stalled():
                stalled = now if stalled is None else stalled
                if now - stalled >= STALL_GRACE:
                    raise StreamStalled(
                        f"submit() would wait forever: {self._stall_text()}. Take results as you go (get_result() "
                        "or results() between submits, or in another thread), pass a larger queue_size to "
                        "stream(), use process_batch(items), which takes results while it submits, or pass "
                        "submit(timeout=) to wait for a reader that comes later"
                    )
            else:
                stalled = None

    def _stalled(self) -> bool:
        """Only a reader can make room (results full, every stage's workers waiting to pass
        items on) and no thread takes results."""
        out = self.run.handoffs[-1]
        if len(out.held) < out.capacity or any(s.outq.putters < s.left for s in self.run.stages):
            return False
        me = threading.current_thread()
        with self.readers_lock:
            return not self.waiting and not any(t is not me and t.is_alive() for t in self.readers)

    def _stall_text(self) -> str:
        held = self.run.submitted - self.run.handoffs[-1].taken
        return (f"the stream's results are full (queue_size={self.queue_size}: its {held} items not taken fill every "
                "queue) and no thread is taking them")

    def get_result(self, timeout: float | None = None) -> Any:
        """The next result; TimeoutError after ``timeout`` seconds, EOFError after the end
        (end(), or stop()). With nothing in flight it waits for an item another thread
        submits, as a stream is for items that arrive over time: ``timeout`` bounds that."""
        _check_timeout(timeout)
        with self.readers_lock:
            self.waiting += 1
            self.readers.add(threading.current_thread())
        try:
            got = self.run.get(timeout)
        except queue.Empty:
            raise TimeoutError(f"no result within {timeout} s") from None
        finally:
            with self.readers_lock:
                self.waiting -= 1
        if got is None:
            raise EOFError("the stream has ended: no more results")
        return got[1]

    def results(self, count: int, timeout: float | None = None) -> Iterator[Any]:
        for _ in range(count):
            yield self.get_result(timeout)

    def process_batch(self, items: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """Submit ``items`` and return as many results, in order (results of items submitted
        before come first). Results are taken while submitting, so a batch larger than the
        queues never waits on itself."""
        _check_timeout(timeout)
        out: list[Any] = []
        n = 0
        for x in items:
            while True:
                try:
                    self.submit(x, block=False)
                    break
                except queue.Full:
                    out.append(self.get_result(timeout))  # room comes from taking a result
            n += 1
        while len(out) < n:
            out.append(self.get_result(timeout))
        return out

    def end(self) -> None:
        """No more items: results() and get_result() run to the end, then EOFError."""
        self.run.end_input()

    def metrics(self) -> dict[str, Any]:
        return self.run.metrics()

    def stop(self) -> None:
        """End every stage's workers now (items in flight are dropped)."""
        if not self.closed:
            self.closed = True
            self._finalizer()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
