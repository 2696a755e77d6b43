"""The bounded queue between two stages (:class:`Handoff`): a slow stage holds the ones before it
back; :class:`Stopped` tells a blocked put or get that the run was stopped."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

POLL = 0.05  # seconds between a blocked worker's looks at the stop flag


class Stopped(Exception):
    """The run was stopped (an error, stop(), Ctrl-C): a blocked put or get gives up."""


class Handoff:
    """Items from one stage to the next: in input order (``ordered``) or as they come, at
    most ``capacity`` held (a put that would exceed it waits). ``close(count)`` says no item
    past ``count`` will come; get() then returns None once all have gone."""

    def __init__(self, capacity: int, ordered: bool, stop: threading.Event) -> None:
        self.capacity = max(1, capacity)
        self.ordered = ordered
        self.stop = stop
        self.cond = threading.Condition()
        self.held: dict[int, Any] = {}
        self.arrival: list[int] = []  # unordered: seqs in the order they came
        self.next = 0  # ordered: the next seq to hand out
        self.taken = 0
        self.count: int | None = None
        self.putters = 0  # threads waiting in put() for room

    def put(self, seq: int, value: Any, block: bool = True, timeout: float | None = None) -> float:
        """Hold ``value`` as item ``seq``; returns the seconds it waited for room (``block``
        False: queue.Full at once when there is none; ``timeout``: queue.Full after that)."""
        waited = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self._full(seq):
                if self.stop.is_set():
                    raise Stopped
                left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if not block or left <= 0:
                    raise queue.Full
                t0 = time.perf_counter()
                self.putters += 1
                try:
                    self.cond.wait(left)
                finally:
                    self.putters -= 1
                waited += time.perf_counter() - t0
            self.held[seq] = value
            if not self.ordered:
                self.arrival.append(seq)
            self.cond.notify_all()
        return waited

    def _full(self, seq: int) -> bool:
        if self.ordered:  # the item the consumer waits for always gets in: no deadlock
            return seq - self.next >= self.capacity
        return len(self.held) >= self.capacity

    def close(self, count: int) -> None:
        with self.cond:
            self.count = count
            self.cond.notify_all()

    def get(self, timeout: float | None = None) -> tuple[tuple[int, Any] | None, float]:
        """((seq, value) or None at the end, the seconds it waited); queue.Empty when
        ``timeout`` seconds pass first."""
        waited = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.ordered and self.next in self.held:
                    seq = self.next
                    self.next += 1
                    break
                if not self.ordered and self.arrival:
                    seq = self.arrival.pop(0)
                    break
                if self.count is not None and self.taken >= self.count:
                    return None, waited
                if self.stop.is_set():
                    raise Stopped
                left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if left <= 0:
                    raise queue.Empty
                t0 = time.perf_counter()
                self.cond.wait(left)
                waited += time.perf_counter() - t0
            value = self.held.pop(seq)
            self.taken += 1
            self.cond.notify_all()
            return (seq, value), waited
