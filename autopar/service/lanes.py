"""Where a manager's call runs: a thread lane, a process lane, or inline; and the call itself.

```
Manager.submit ─► Call (a Future) ─► Gate (admitted, or waits its turn) ─► Lane.start(call)
                                                                            │
   ThreadLane: the lane's own threads ─ ThreadLane._run: func(*args) ────────────────┐
   ProcessLane: backends' tracked pool ─ run_call(call id, function blob, arguments) ─┤ lane.finish(call, outcome)
   inline (tiny functions): in the caller's thread, no gate                          ▼
                                                                  Manager._attempt_done: retry, breaker, stats
```

A running call is stopped the one way of its lane's kind, through :mod:`autopar.backends`:
an exception raised into its thread (one stuck in C is let go), or its worker killed.
"""

from __future__ import annotations

from .calls import GRACE, Call, NoProcesses, Outcome, Stopped, run_here, timed_out
from .processes import MAX_REPLAYS, ProcessLane
from .threads import ThreadLane

__all__ = ["GRACE", "MAX_REPLAYS", "Call", "NoProcesses", "Outcome", "ProcessLane", "Stopped", "ThreadLane", "run_here", "timed_out"]
