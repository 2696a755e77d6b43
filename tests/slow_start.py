"""A module whose import takes 2 s in a worker process (not in the test's own process): a
spawned worker unpickling ``ident`` starts that much later."""

from __future__ import annotations

import multiprocessing
import time

if multiprocessing.parent_process() is not None:
    time.sleep(2.0)


def ident(x: int) -> int:
    return x
