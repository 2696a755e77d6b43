"""Which item each worker of a process pool runs: a table in shared memory, one slot
(pid, item id running, 0 for none) a worker.

A pool made with ``make_process_pool(..., tracked=True)`` has each worker take a slot as it
starts (:func:`take_slot`, from the pool's initializer) and write there the id of the item
it runs (:func:`running`). The parent reads the table (:class:`Slots`) to stop one running
item, the one way a process item is stopped from outside (:meth:`Slots.kill`: its worker is
killed, which breaks the pool, and the pool is replaced), and to tell, when the pool breaks,
which item each dead worker ran (:meth:`Slots.dead`: a crash is blamed on its own item only).
"""

from __future__ import annotations

import os
import signal
from typing import Any

__all__ = ["Slots", "kill_worker", "running", "take_slot"]

# ---- worker side --------------------------------------------------------------------------

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


# ---- parent side --------------------------------------------------------------------------


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
        """Stop ``item_id`` where it runs: its worker is killed (the pool breaks; its owner
        replaces it). False where no worker runs it now."""
        pid = self.pid_of(item_id)
        if pid is None:
            return False
        kill_worker(pid)
        return True

    def dead(self, processes: dict[int, Any]) -> dict[int, int]:
        """Dead workers' pids -> the item each was running (0: none), ``processes`` the
        pool's workers (pid -> Process). A worker counts as dead once its sentinel is ready:
        a process closes its files as it exits, before it is a zombie, and the pool breaks on
        the sentinel, so at that moment a liveness check by pid can still read the dying
        worker as running."""
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
