"""A thread pool of autopar's own: the Manager's thread lane, and a map from ``execute()`` on
the same threads.

```
ThreadLane.start(call) ─► Workers.put(job) ─► one FIFO queue ─► a lane thread: ThreadLane._run
LanePool.submit(fn)    ─┘   (a map from execute() runs on the same threads)
```

The threads are the pool's own (at most ``limit``; a new one only when no thread is free),
taking jobs in order from one ``queue.SimpleQueue``: no stdlib worker loop or work item is in
the way, and a Manager's Call is the only Future a call has.
"""

from __future__ import annotations

import queue
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from .base import Stopped

__all__ = ["LanePool", "Workers"]


class Workers:
    """Threads taking jobs ``fn(a, b)`` from one FIFO queue. A job put while no thread is free
    starts one, up to ``limit``; the threads live until :meth:`close` (daemon threads: one
    stuck in C, let go by the lane, does not hold the interpreter at exit)."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit, self.name = limit, name
        self.threads: list[threading.Thread] = []
        self.closed = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free = 0  # threads done with their last job, not yet promised the next

    def put(self, fn: Callable[[Any, Any], None], a: Any, b: Any, future: Future) -> None:
        """Queue ``fn(a, b)``; ``future`` is cancelled if the job is dropped by :meth:`close`."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the manager is shut down")
            if self._free:
                self._free -= 1
            elif len(self.threads) < self.limit:  # (a thread that cannot start: the job fails, not queued)
                t = threading.Thread(target=self._loop, name=f"{self.name}_{len(self.threads)}", daemon=True)
                t.start()
                self.threads.append(t)
            self._jobs.put((fn, a, b, future))

    def _loop(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:  # closed: the next thread is told too
                jobs.put(None)
                return
            fn, a, b, _ = job
            job = None
            try:
                fn(a, b)
            except Stopped:  # raised as the call ended: its outcome is in already
                pass
            except BaseException:  # a fault of the lane's own: shown, and the thread serves on
                traceback.print_exc()
            fn = a = b = None
            with self._lock:
                self._free += 1

    def close(self, wait: bool, cancel: bool) -> None:
        """No more jobs; ``cancel``: the queued ones are dropped and their futures cancelled.
        The threads end after their current job; ``wait``: joined."""
        dropped = []
        with self._lock:
            self.closed = True
            while cancel:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    dropped.append(job[3])
            self._jobs.put(None)
        for future in dropped:
            future.cancel()
        if wait:
            for t in self.threads:
                if t is not threading.current_thread():
                    t.join()


def _run_future(future: Future, work: tuple) -> None:
    """A job from ``LanePool.submit``: ``fn(*args, **kwargs)`` into its Future."""
    if not future.set_running_or_notify_cancel():
        return
    fn, args, kwargs = work
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


class LanePool(ThreadPoolExecutor):
    """The lane's threads as ``execute()`` takes a pool: a ThreadPoolExecutor (its class is how a
    thread pool is told) whose ``submit()`` and ``shutdown()`` go to :class:`Workers`."""

    def __init__(self, workers: Workers) -> None:
        super().__init__(max_workers=workers.limit, thread_name_prefix=workers.name)
        self.workers = workers

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        self.workers.put(_run_future, future, (fn, args, kwargs), future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.workers.close(wait, cancel_futures)
