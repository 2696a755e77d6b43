"""Where a manager's call runs: a thread lane, a process lane, or inline; and the call itself.

```
Manager.submit ─► Call (a Future) ─► Gate (admitted, or waits its turn) ─► Lane.start(call)
                                                                            │
   ThreadLane: the lane's own threads ─ ThreadLane._run: func(*args) ────────────────┐
   ProcessLane: backends' tracked pool ─ run_call(call id, function blob, arguments) ─┤ lane.finish(call, outcome)
   inline (tiny functions): in the caller's thread, no gate                          ▼
                                                                  Manager._attempt_done: retry, breaker, stats
```

``calls.py``: :class:`Call` (public Future API only) and :class:`Outcome`; ``threads.py``:
the thread lane (stops a running call by the deadline watcher's exception raised into its
thread, lets go of one stuck in C); ``processes.py``: the process lane (stops a running call
by killing its worker, replaces a broken pool, never forks while this process runs threads).
Both stop, and the process lane makes, replaces and diagnoses its pools, through
:mod:`autopar.backends`.
"""

from __future__ import annotations

from .calls import GRACE, Call, NoProcesses, Outcome, Stopped, run_here, timed_out
from .processes import MAX_REPLAYS, ProcessLane
from .threads import ThreadLane

__all__ = ["GRACE", "MAX_REPLAYS", "Call", "NoProcesses", "Outcome", "ProcessLane", "Stopped", "ThreadLane", "run_here", "timed_out"]
