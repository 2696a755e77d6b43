"""How a pipeline will run (:class:`PipelinePlan`), and what its sample came from
(:class:`_Sampled`): a run of the same items takes the sample's results back."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator as _IteratorABC
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..tune.sample.stash import same_items, snapshots, within


@dataclass(frozen=True)
class StagePlan:
    name: str
    executor_type: str
    n_jobs: int
    chunksize: int
    item_time: float
    cpu_ratio: float
    pinned: bool


@dataclass(frozen=True)
class PipelinePlan:
    """How a pipeline will run: ``mode`` "fused" (every item through all stages on one pool,
    ``fused``: its optimize() result) or "staged" (each stage on its own pool), per stage
    the pool and its measured item time, and the predicted throughput."""

    mode: str
    stages: tuple[StagePlan, ...]
    predicted_throughput: float
    reasons: tuple[str, ...]
    fused: Any = None
    queue_size: int = 32
    data: Any = field(default=None, repr=False, compare=False)  # the items the sample came from
    sampled: tuple[Any, ...] = field(default=(), repr=False, compare=False)  # their first results
    source: "_Sampled | None" = field(default=None, repr=False, compare=False)  # what optimize() was given

    def explain(self) -> str:
        lines = [f"pipeline: {self.mode}, predicted {self.predicted_throughput:.3g} items/s"]
        for s in self.stages:
            how = "serial" if s.executor_type == "serial" else f"{s.executor_type} x{s.n_jobs}"
            lines.append(
                f"  {s.name:<20} {s.item_time * 1e3:9.3f} ms an item, CPU/wall {s.cpu_ratio:.2f}"
                + (f"  -> {how}" if self.mode == "staged" else "") + ("  (pinned)" if s.pinned else "")
            )
        if self.mode == "fused" and self.fused is not None:
            lines.append(f"  all stages as one function: {self.fused.label()}")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


class _Sampled:
    """Whether a run is given the very items the plan's sample came from (then their results are
    handed back, once): the same object, and for a list or tuple the same first items, proven
    as optimize()'s stash proves them (a list refilled in place, or items changed in place, are
    not the same; ``budget``: CPU seconds of pickling worth spending). A range or a one-shot
    iterator (read to its end by optimize()) is; anything else is never taken for the same."""

    def __init__(self, items: Any, data: Sequence[Any], taken: int, budget: float) -> None:
        self.items = items
        self.data = data  # the items as the plan holds them
        listed = isinstance(items, (list, tuple))
        self.head = snapshots(list(itertools.islice(data, taken)), within(budget)) if listed else None
        self.known = self.head is not None or type(items) is range or isinstance(items, _IteratorABC)
        self.used = False
        self.lock = threading.Lock()

    def matches(self, items: Any) -> bool:
        return self.known and not self.used and items is self.items

    def claim(self, items: Any) -> Sequence[Any] | None:
        """The plan's items where ``items`` are the ones sampled, unchanged, and not yet run
        (once); else None: the run starts from scratch."""
        with self.lock:
            if not self.matches(items) or not self._unchanged():
                return None
            self.used = True
        return self.data

    def _unchanged(self) -> bool:
        if self.head is None:
            return True
        n = len(self.head)
        return len(self.items) >= n and same_items(self.head, list(itertools.islice(self.items, n)))


def _taken(stash: Any) -> int:
    """How many of the input's first items optimize()'s sample took (run, or read ahead)."""
    if stash is None:
        return 0
    return sum(map(len, stash.result_blocks)) + len(getattr(stash, "ahead", ()))
