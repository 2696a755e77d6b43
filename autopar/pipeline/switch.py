"""A staged run watched against fused (:func:`_staged`): delivering clearly under fused's
predicted rate, it closes its input and runs the items it did not take fused."""

from __future__ import annotations

import queue
import time
from typing import Any, Iterable, Iterator, Sequence, cast

from ..run.execute import execute_iter
from ..tune.costs import pool_costs
from ..tune.model import best_chunksize
from .compose import Fused, Stage
from .report import PipelineRun
from .staged import WATCH, StagedRun

SWITCH_AFTER = 1.0  # seconds of a staged run's results before it is judged against fused
SWITCH_RATIO = 0.8  # a staged run delivering under this share of fused's predicted rate turns fused


class _Gate:
    """A staged run's input, handed to its feeder until ``closed``: the items after
    ``index`` never went in."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items, self.index, self.closed = items, 0, False

    def __iter__(self) -> "_Gate":
        return self

    def __next__(self) -> Any:
        if self.closed or self.index >= len(self.items):
            raise StopIteration
        item = self.items[self.index]
        self.index += 1
        return item


class _Judge:
    """A staged run's delivery rate against the fused run's prediction (items a second);
    closes the run's gate when fused would finish the items left clearly sooner."""

    def __init__(self, fused: Any, gate: _Gate) -> None:
        left = max(fused.n_remaining or 0, 1)
        self.fused_rate = left / fused.predicted_time if fused.predicted_time > 0 else float("inf")
        self.fused_label = fused.label()
        self.gate = gate
        self.count = 0
        self.t_first = 0.0
        self.reason = ""

    def watching(self) -> bool:
        return not self.gate.closed

    def delivered(self) -> None:
        if self.count == 0:
            self.t_first = time.perf_counter()
        self.count += 1

    def judge(self) -> None:
        if self.count < 2:
            return
        span = time.perf_counter() - self.t_first
        if span < SWITCH_AFTER:
            return
        rate = (self.count - 1) / span  # past the first result: the pipeline is full
        left = len(self.gate.items) - self.gate.index
        # Worth it only where the items left take clearly longer staged than fused.
        if rate >= SWITCH_RATIO * self.fused_rate or left / rate - left / self.fused_rate < SWITCH_AFTER / 2:
            return
        self.reason = (
            f"staged delivered {rate:.3g} items/s, fused ({self.fused_label}) was predicted {self.fused_rate:.3g}: "
            f"the {left} items not yet started ran fused"
        )
        self.gate.closed = True


def _fused_rest(stages: Sequence[Stage], items: Sequence[Any], fused: Any, errors: str) -> Iterator[Any]:
    """The items a staged run did not take, through the composed stages on the pool the
    fused plan chose (no second sample)."""
    kind, n, cs = fused.executor_type, fused.n_jobs, 1
    if kind != "serial":
        cs = best_chunksize(kind, n, len(items), fused.profile, pool_costs(fused.start_method), fused.usable_cores).chunksize
    return execute_iter(Fused(stages).chain, items, executor_type=kind, n_jobs=1 if kind == "serial" else n, chunksize=cs,
                        errors=errors)


def _staged(
    stages: Sequence[Stage], start_method: str | None, items: Iterable[Any], config: list[tuple[str, int]],
    queue_size: int, errors: str, offset: int = 0, fused: Any = None, info: PipelineRun | None = None,
) -> Iterator[Any]:
    """The staged run's results in order. With ``fused`` (optimize()'s result for the composed
    stages, given only with a list of items) the run is judged every WATCH seconds once it has
    delivered for SWITCH_AFTER (see :class:`_Judge`): turning, it finishes the items it holds
    (each runs once) and the rest runs fused."""
    run = StagedRun(stages, config, queue_size, errors == "collect", ordered=True,
                    start_method=start_method, offset=offset)
    if info is not None:
        info.staged = run
    gate = _Gate(cast(Sequence[Any], items)) if fused is not None else None
    judge = _Judge(fused, gate) if gate is not None else None
    clean = False
    try:
        run.feed(gate if gate is not None else items)
        while True:
            watching = judge is not None and judge.watching()
            try:
                got = run.get(timeout=WATCH if watching else None)
            except queue.Empty:
                got = ()
            if got is None:
                break
            if got:
                if judge is not None:
                    judge.delivered()
                yield got[1]
            if judge is not None and judge.watching():
                judge.judge()
        clean = True
    finally:
        run.close(kill=not clean)
    if gate is not None and judge is not None and gate.closed and gate.index < len(gate.items):
        if info is not None:
            info.switched_at = offset + gate.index
            info.reason = judge.reason
        rest = _fused_rest(stages, gate.items[gate.index:], fused, errors)
        if info is not None:
            info.execution = getattr(rest, "report", None)
        yield from rest

