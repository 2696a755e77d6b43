"""Which item each worker of a tracked process pool runs: a table in shared memory, one slot
(pid, item id running, 0 for none) a worker, taken as it starts (:func:`take_slot`) and
written as it runs (:func:`running`); the parent reads it (:class:`Slots`) to kill the worker
of one item, and to tell which item each dead worker ran."""

from __future__ import annotations

import os
import signal
from typing import Any

__all__ = ["Slots", "kill_worker", "running", "take_slot"]

_TABLE: Any = None
_SLOT = -1


def take_slot(table: Any, lock: Any) -> None:
    """A worker's start: the first free slot of ``table`` gets its pid."""
    global _TABLE, _SLOT
    _TABLE = table
    with lock:
        for s in range(0, len(table), 2):
            if table[s] == 0:
                table[s] = os.getpid()
                _SLOT = s
                break


def running(item_id: int) -> None:
    """The item this worker runs now (0: none); a worker without a slot writes nothing."""
    if _SLOT >= 0:
        _TABLE[_SLOT + 1] = item_id


def kill_worker(pid: int) -> None:
    """SIGKILL to one worker (gone already: nothing)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Slots:
    """The parent's view of a tracked pool's table (``ctx``: the pool's multiprocessing
    context, so the table and its lock go to the workers as that start method sends them)."""

    def __init__(self, ctx: Any, workers: int) -> None:
        self.table = ctx.RawArray("q", 2 * workers)
        self.lock = ctx.Lock()

    def pids(self) -> list[int]:
        """The workers that have started."""
        return [int(p) for p in self.table[0::2] if p]

    def pid_of(self, item_id: int) -> int | None:
        """The worker running ``item_id`` now (None: none does, not yet or not any more)."""
        t = self.table
        for s in range(0, len(t), 2):
            if t[s + 1] == item_id:
                return int(t[s])
        return None

    def kill(self, item_id: int) -> bool:
        """Kill the worker running ``item_id`` (the pool breaks; its owner replaces it); False where none does."""
        pid = self.pid_of(item_id)
        if pid is None:
            return False
        kill_worker(pid)
        return True

    def dead(self, processes: dict[int, Any]) -> dict[int, int]:
        """Dead workers' pids -> the item each was running (0: none), ``processes`` the pool's
        workers (pid -> Process). Dead once its sentinel is ready, as the pool reads it."""
        from multiprocessing.connection import wait as wait_sentinels

        t = self.table
        out = {}
        for s in range(0, len(t), 2):
            pid = int(t[s])
            if not pid:
                continue
            proc = processes.get(pid)
            dead = bool(wait_sentinels([proc.sentinel], 0)) if proc is not None else not _alive(pid)
            if dead:
                out[pid] = int(t[s + 1])
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
