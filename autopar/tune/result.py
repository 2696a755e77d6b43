"""OptimizationResult: what optimize() chose, the figures it measured, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import Candidate
from .sample import Profile, SampleStash

__all__ = ["OptimizationResult"]


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    if seconds >= 1e-6 or seconds == 0:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e9:.0f} ns"  # tiny items (a bare call is tens of ns)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class OptimizationResult:
    """The configuration optimize() chose for a batch of work, and the evidence.

    ``estimated_speedup`` and ``predicted_time`` speak of the items the sample did not run
    (``n_remaining``); the sampled items' results are kept and reused by ``execute()``.
    """

    executor_type: str
    n_jobs: int
    chunksize: int
    estimated_speedup: float
    workload_type: str
    cpu_ratio: float
    predicted_time: float
    serial_time: float
    n_remaining: int
    start_method: str
    usable_cores: int
    profile: Profile
    start_cost: float
    runner_ups: tuple[Candidate, ...]
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    optimize_time: float
    scheduler: str | None = None  # the Dask scheduler of an optimize(cluster=...)
    cache_key: str | None = None  # the job's key in the tuning cache
    cache: str | None = None  # "hit" (decided from kept figures), "miss" (measured, now kept), None
    _stash: SampleStash | None = field(default=None, repr=False, compare=False)

    @property
    def stash(self) -> SampleStash | None:
        """The sampled items' results, for execute() (claimed once)."""
        return self._stash

    @property
    def item_time_mean(self) -> float:
        return self.profile.item_time_mean

    @property
    def item_time_std(self) -> float:
        return self.profile.item_time_std

    @property
    def thread_scaling(self) -> float | None:
        return self.profile.thread_scaling

    @property
    def memory_per_item(self) -> int:
        return self.profile.peak_memory_per_item

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready) without the kept sample results."""
        return {
            "executor_type": self.executor_type,
            "n_jobs": self.n_jobs,
            "chunksize": self.chunksize,
            "estimated_speedup": self.estimated_speedup,
            "workload_type": self.workload_type,
            "cpu_ratio": self.cpu_ratio,
            "predicted_time": self.predicted_time,
            "serial_time": self.serial_time,
            "n_remaining": self.n_remaining,
            "start_method": self.start_method,
            "usable_cores": self.usable_cores,
            "start_cost": self.start_cost,
            "profile": self.profile.to_dict(),
            "runner_ups": [c.to_dict() for c in self.runner_ups],
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "optimize_time": self.optimize_time,
            "scheduler": self.scheduler,
            "cache_key": self.cache_key,
            "cache": self.cache,
        }

    def plot(self, path: Any) -> Any:
        """Predicted speedup against workers for threads and processes, the measured sample
        points and the choice, and the chosen pool's time against its chunksize, to ``path``
        (PNG; SVG or PDF by the suffix). Needs ``pip install "autopar[plot]"``."""
        from ..plot import speedup_plot

        return speedup_plot(self, path)

    def label(self) -> str:
        if self.executor_type == "serial":
            return "serial"
        if self.executor_type == "dask":
            return f"dask cluster at {self.scheduler}, {self.n_jobs} threads, {self.chunksize} items a task"
        return f"{self.executor_type} pool, {self.n_jobs} workers, chunksize {self.chunksize}"

    def explain(self) -> str:
        """Why this configuration, in plain words, with the runner-ups and their predictions."""
        p = self.profile
        lines = [f"autopar chose: {self.label()}"]
        lines.append(
            f"  predicted {_fmt_time(self.predicted_time)} for the {self.n_remaining} remaining items "
            f"against {_fmt_time(self.serial_time)} serial (speedup x{self.estimated_speedup:.2f})"
        )
        lines.append("measured on a sample:")
        lines.append(
            f"  {p.n_sampled} items serially, {p.n_probed} on {p.probe_threads} threads at once, "
            f"in {_fmt_time(p.sample_time)} (optimize took {_fmt_time(self.optimize_time)})"
        )
        lines.append(
            f"  item time {_fmt_time(p.item_time_mean)} mean, {_fmt_time(p.item_time_std)} spread "
            f"(cv {p.item_time_cv:.2f}), {_fmt_time(p.item_time_max)} max"
        )
        if p.warmup_time is not None:
            lines.append(
                f"  first call {_fmt_time(p.warmup_time)}: a one-time cost (an item run beside it waited "
                "for it to end); the figures are the later items'"
            )
        lines.append(
            f"  CPU/wall {p.cpu_ratio:.2f} -> {self.workload_type}-bound; "
            + (
                f"{p.probe_threads} threads ran x{p.thread_scaling:.2f} faster than one"
                if p.thread_scaling is not None
                else "thread scaling not probed (too little work left)"
            )
        )
        lines.append(
            f"  pickled: function {_fmt_bytes(p.func_bytes)}, item {_fmt_bytes(p.item_bytes)}, "
            f"result {_fmt_bytes(p.result_bytes)} ({_fmt_time(p.item_pickle_time + p.result_pickle_time)} "
            f"per item round trip, transport {p.transport or 'none'})"
        )
        lines.append(
            f"  peak memory per item {_fmt_bytes(p.peak_memory_per_item)}; "
            f"{self.usable_cores} usable cores; pool start {_fmt_time(self.start_cost)} "
            f"({self.start_method})"
        )
        if self.reasons:
            lines.append("why:")
            lines.extend(f"  - {r}" for r in self.reasons)
        if self.runner_ups:
            lines.append("runner-ups (predicted time for the remaining items):")
            for c in self.runner_ups:
                lines.append(f"  {c.label():<40} {_fmt_time(c.predicted_time)}")
        if self.warnings:
            lines.append("warnings:")
            lines.extend(f"  ! {w}" for w in self.warnings)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()
