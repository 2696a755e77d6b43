"""What a pipeline run did against its plan: :class:`PipelineRun` (the results in input order)
and :class:`PipelineReport` (its ``report()``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Iterator

from .._words import fmt_rate, fmt_time, plural, pool_words
from .plan import PipelinePlan
from .staged import StagedRun


class PipelineRun(Iterator[Any]):
    """:meth:`Pipeline.execute_iter`'s results in input order. ``switched_at``: the input
    index from which a staged run went on fused (None: it did not), ``reason`` why;
    :meth:`report`: what the run did against what the plan predicted."""

    def __init__(self, plan: PipelinePlan) -> None:
        self.plan = plan
        self.switched_at: int | None = None
        self.reason = ""
        self.staged: StagedRun | None = None  # the staged run's stages, for their metrics
        self.execution: Any = None  # a fused run's ExecutionReport (also the rest after a switch)
        self._it: Iterator[Any] = iter(())
        self._t0 = time.perf_counter()
        self._t_end: float | None = None
        self._count = 0
        self.from_sample = 0  # results the plan's sample made (a staged run starts after them)

    def attach(self, it: Iterator[Any]) -> None:
        self._it = it
        self.execution = getattr(it, "report", self.execution)

    def __next__(self) -> Any:
        try:
            value = next(self._it)
        except StopIteration:
            if self._t_end is None:
                self._t_end = time.perf_counter()
            raise
        self._count += 1
        return value

    def to_list(self) -> list[Any]:
        """All the results: a fused run's by its blocks of results (tiny items pay no
        iterator step each), a staged run's one by one."""
        blocks = getattr(self._it, "blocks", None)
        if blocks is None:
            return list(self)
        out: list[Any] = []
        for block in blocks():
            if out:
                out.extend(block)
            else:
                out = block  # a fresh list nothing else holds
        self._count, self._t_end = len(out), time.perf_counter()
        return out

    def report(self) -> "PipelineReport":
        """Predicted against measured (so far, while it runs): the mode, items/s planned and
        delivered, per stage the plan's ms an item and, staged, the run's metrics (items, mean
        ms, busy share, waits, the bottleneck); a fused run's ExecutionReport as ``execution``;
        the switch, if any."""
        elapsed = (self._t_end or time.perf_counter()) - self._t0
        out: dict[str, Any] = {
            "mode": self.plan.mode,
            "items": self._count,
            "from_sample": self.from_sample,
            "seconds": elapsed,
            "predicted_items_per_s": self.plan.predicted_throughput,
            "items_per_s": self._count / elapsed if elapsed > 0 else 0.0,
            "stages": [{"name": s.name, "planned_ms": s.item_time * 1e3, "executor": s.executor_type,
                        "n_jobs": s.n_jobs} for s in self.plan.stages],
            "switched_at": self.switched_at,
            "reason": self.reason,
            "execution": self.execution,
        }
        if self.staged is not None:
            staged = self.staged.metrics()
            for planned, measured in zip(out["stages"], staged["stages"]):
                planned.update(measured)
            out["bottleneck"] = staged["bottleneck"]
            out["grown"] = staged["grown"]
        out["done"] = self._t_end is not None
        return PipelineReport(out)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class PipelineReport(Mapping[str, Any]):
    """What a pipeline run did against its plan (:meth:`PipelineRun.report`): :meth:`explain` in
    words, :meth:`to_dict` as plain data; read as a mapping, the dict ``report()`` once returned
    (``report["mode"]``, ``["stages"]``, ``["execution"]``: the ExecutionReport itself)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        d = dict(self._data)
        d["stages"] = [dict(s) for s in d["stages"]]
        d["grown"] = dict(d.get("grown") or {})
        if d["execution"] is not None:
            d["execution"] = d["execution"].to_dict()
        return d

    def explain(self) -> str:
        """Items and time against the plan, each stage, the switch, a fused run's own report."""
        d = self._data
        so_far = "" if d.get("done", True) else " so far"
        lines = [
            f"pipeline run ({d['mode']}): {plural(d['items'], 'item')} in {fmt_time(d['seconds'])}{so_far}, "
            f"{fmt_rate(d['items_per_s'])} against {fmt_rate(d['predicted_items_per_s'])} predicted"
        ]
        if d["from_sample"]:
            lines.append(f"  {plural(d['from_sample'], 'result')} came from the plan's sample")
        lines.append("stages:")
        lines.extend(_stage_line(s, d.get("bottleneck")) for s in d["stages"])
        if d["switched_at"] is not None:
            lines.append(f"from item {d['switched_at']} on, ran fused: {d['reason']}")
        for name, n in (d.get("grown") or {}).items():
            lines.append(f"{name}: {plural(n, 'worker')} added while running")
        if d["execution"] is not None:
            lines.append("fused run:" if d["switched_at"] is None else "the items run fused:")
            lines.extend("  " + line for line in d["execution"].explain().splitlines())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()

    def __repr__(self) -> str:
        return f"PipelineReport({self.to_dict()!r})"


def _stage_line(s: dict[str, Any], bottleneck: str | None) -> str:
    """One stage: its pool, and staged, what it did (items, time an item against the plan,
    busy share, waits); fused, the plan's time an item."""
    planned = fmt_time(s["planned_ms"] / 1e3)
    if "items" not in s:  # fused: every item through all stages on one pool
        return f"  {s['name']:<20} planned {planned} an item"
    how = pool_words(s.get("executor_type") or s["executor"], s["n_jobs"])
    text = (
        f"  {s['name']:<20} {how}: {plural(s['items'], 'item')}, {fmt_time(s['mean_ms'] / 1e3)} an item "
        f"(planned {planned}), busy {s['busy_share']:.0%}, waited {fmt_time(s['wait_in'])} for input "
        f"and {fmt_time(s['wait_out'])} to pass items on"
    )
    if s.get("failed"):
        text += f", {plural(s['failed'], 'item')} failed"
    return text + ("  <- bottleneck" if s["name"] == bottleneck else "")

