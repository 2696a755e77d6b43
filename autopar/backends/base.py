"""The one interface of a backend (:class:`Backend`), what each kind can do
(:class:`Capabilities`, :data:`CAPABILITIES`), and :class:`Stopped`, raised into an item a
thread backend stops."""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend", "CAPABILITIES", "Capabilities", "Stopped"]


class Stopped(BaseException):
    """Raised into an item to stop it where it runs, on a thread (a BaseException: the item's
    own ``except Exception`` does not swallow it)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend kind can do, as the table in :mod:`autopar.backends` says it in words:
    ``stop`` "raise", "kill", "cancel" or "none"; ``time_limit`` "watcher" or "alarm"."""

    kind: str
    pickles: bool
    stop: str
    time_limit: str
    replaceable: bool
    workers_die: bool


CAPABILITIES = {
    "serial": Capabilities("serial", pickles=False, stop="none", time_limit="watcher", replaceable=False, workers_die=False),
    "thread": Capabilities("thread", pickles=False, stop="raise", time_limit="watcher", replaceable=False, workers_die=False),
    "process": Capabilities("process", pickles=True, stop="kill", time_limit="alarm", replaceable=True, workers_die=True),
    "dask": Capabilities("dask", pickles=True, stop="cancel", time_limit="watcher", replaceable=False, workers_die=True),
}


@runtime_checkable
class Backend(Protocol):
    """Chunks of one function to one pool: all that execute()'s run, a pipeline's process stage
    and the Manager's lanes ask of a backend kind."""

    kind: str
    caps: Capabilities
    ex: Executor | None  # the pool (None: inline)
    owned: bool  # the backend made its pool: it may kill and replace it

    def submit(self, start: int, items: list[Any]) -> Future:
        """Run ``func`` on ``items`` (input indices from ``start``): a future of
        ``(values, wall seconds, failures, CPU seconds)``; ``decode`` makes the values a list."""

    def decode(self, values: Any) -> list[Any]:
        ...

    def stop(self, where: Any) -> bool:
        """Stop the item running at ``where`` (a thread id; a worker pid; a Dask chunk's
        ``(future, worker)``) the one way of this kind; False where none of its items runs."""

    def is_broken(self, exc: BaseException | None) -> bool:
        """Whether a chunk's exception says the pool broke (a worker died)."""

    def how_it_ended(self) -> str:
        """How the workers that did not end by the pool's shutdown ended ("" where none can)."""

    def replace(self) -> None:
        """Kill the pool and start a fresh one (a process pool the backend owns)."""

    def close(self, clean: bool) -> None:
        """Shut an owned pool down (``clean``), or terminate it now."""
