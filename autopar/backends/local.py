"""Chunks run in this process: on a thread pool, or inline in the caller (serial, and the
fallback when a pool is losing to serial part way through a run)."""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable

from .base import CAPABILITIES, Stopped
from .worker import run_local, stop_thread, user_time

__all__ = ["InlineBackend", "SerialExecutor", "ThreadBackend"]


class SerialExecutor(Executor):
    """Runs each task in the caller's thread when it is submitted."""

    n_workers = 1  # its size, as autopar.backends.pools.pool_size reads it

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class ThreadBackend:
    """Chunks to a thread pool: no pickling, the exception objects as they are."""

    kind = "thread"
    caps = CAPABILITIES["thread"]

    def __init__(self, func: Callable[[Any], Any], make_pool: Callable[[], Executor], pool: Executor | None, collect: bool) -> None:
        self.func, self.collect, self.owned = func, collect, pool is None
        self._make = make_pool
        self.ex = pool if pool is not None else make_pool()
        self.cancel = threading.Event()

    def submit(self, start: int, items: list[Any]) -> Future:
        """A chunk; its CPU is the thread's user time (what the run's GIL check reads: a
        file's writes in the kernel hold no GIL, and processes would wait on them as well)."""
        return self.ex.submit(run_local, self.func, start, items, self.cancel, self.collect, user_time)

    def decode(self, values: Any) -> list[Any]:
        return values

    @staticmethod
    def is_broken(exc: BaseException | None) -> bool:
        return False

    @staticmethod
    def stop(where: Any) -> bool:
        """Raise :class:`~.base.Stopped` into the item the thread ``where`` runs (a call into C
        stops when it returns)."""
        return stop_thread(where, Stopped)

    @staticmethod
    def how_it_ended() -> str:
        return ""  # threads do not die under a chunk

    def replace(self) -> None:
        """A fresh pool in place of an owned one (the old threads end after their current call)."""
        if self.owned:
            self.ex.shutdown(wait=False, cancel_futures=True)
            self.ex = self._make()

    def close(self, clean: bool) -> None:
        self.cancel.set()  # chunks not yet started return at once
        if self.owned:
            self.ex.shutdown(wait=clean, cancel_futures=not clean)


class InlineBackend(ThreadBackend):
    """Runs each chunk in the caller's thread as it is submitted: the future is done at once."""

    kind = "serial"
    caps = CAPABILITIES["serial"]
    ex = None
    owned = False

    def __init__(self, func: Callable[[Any], Any], collect: bool) -> None:
        self.func, self.collect = func, collect

    def submit(self, start: int, items: list[Any]) -> Future:
        future: Future = Future()
        future.set_result(run_local(self.func, start, items, None, self.collect))
        return future

    @staticmethod
    def stop(where: Any) -> bool:
        return False  # the item runs in the caller: its own time limit is all there is

    def close(self, clean: bool) -> None:
        pass
