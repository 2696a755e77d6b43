"""OptimizationResult: what optimize() chose, the figures it measured, and why; and
:func:`get_executor`, a pool of a result's choice (or a kind named) for a ``with`` block."""

from __future__ import annotations

from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..backends.pools import make_executor, terminate
from ..options import check_pool_args
from .predict import Candidate
from .sample import Profile, SampleStash
from .system import usable_cores
from .._words import fmt_bytes, fmt_time, plural, pool_words, reword_scaling, scaling_words

__all__ = ["OptimizationResult", "get_executor"]

CACHE_NOTE = "figures from the tuning cache"  # how optimize()'s reason on a cache hit starts


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
    cache_runs: int = 0  # a hit: the runs that checked the kept figures since they were measured
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
            "cache_runs": self.cache_runs,
        }

    def plot(self, path: Any) -> Any:
        """Predicted speedup against workers for threads and processes, the measured sample
        points and the choice, and the chosen pool's time against its chunksize, to ``path``
        (PNG; SVG or PDF by the suffix). Needs ``pip install "autopar[plot]"``."""
        from ..plot import speedup_plot

        return speedup_plot(self, path)

    def label(self) -> str:
        if self.executor_type == "dask":
            return f"dask cluster at {self.scheduler}, {plural(self.n_jobs, 'thread')}, {self.chunksize} items a task"
        return pool_words(self.executor_type, self.n_jobs, None if self.executor_type == "serial" else self.chunksize)

    def explain(self) -> str:
        """Why this configuration, in plain words, with the runner-ups and their predictions."""
        lines = [f"autopar chose: {self.label()}", self._prediction_line()]
        lines += self._evidence_lines()
        cache_note = [r for r in self.reasons if r.startswith(CACHE_NOTE)] if self.cache == "hit" else []
        reasons = [reword_scaling(r) for r in self.reasons if r not in cache_note]
        if reasons:
            lines.append("why:")
            lines.extend(f"  - {r}" for r in reasons)
        parallel = [c for c in self.runner_ups if c.executor_type in ("serial", "dask") or c.n_jobs > 1]
        if parallel:
            lines.append("runner-ups (predicted time for the remaining items):")
            for c in parallel:
                how = pool_words(c.executor_type, c.n_jobs, None if c.executor_type == "serial" else c.chunksize)
                lines.append(f"  {how:<40} {fmt_time(c.predicted_time)}")
        alone = len(self.runner_ups) - len(parallel)
        if alone:
            lines.append(f"  ({plural(alone, 'pool')} of one worker left out: one worker runs nothing in parallel)")
        if self.warnings:
            lines.append("warnings:")
            lines.extend(f"  ! {w}" for w in self.warnings)
        return "\n".join(lines)

    def _prediction_line(self) -> str:
        if self.n_remaining == 0:
            return "  nothing left to run: the sample ran every item (its results are kept)"
        s = self.estimated_speedup
        speed = f"speedup x{s:.2f}" if s >= 1 else f"slower: x{s:.2f} the speed of serial"
        return (
            f"  predicted {fmt_time(self.predicted_time)} for the {plural(self.n_remaining, 'remaining item')} "
            f"against {fmt_time(self.serial_time)} serial ({speed})"
        )

    def _evidence_lines(self) -> list[str]:
        """Where the figures come from (this call's sample, or the tuning cache), and them."""
        p = self.profile
        if self.cache == "hit":
            note = next((r for r in self.reasons if r.startswith(CACHE_NOTE)), None)
            lines = [
                "measured before, kept in the tuning cache (no sample this time):",
                f"  {note or CACHE_NOTE + ' (an earlier run of the same job)'}; optimize took {fmt_time(self.optimize_time)}",
            ]
        else:
            probed = f", {p.n_probed} on {p.probe_threads} threads at once" if p.n_probed else ""
            lines = [
                "measured on a sample:",
                f"  {plural(p.n_sampled, 'item')} serially{probed}, in {fmt_time(p.sample_time)} "
                f"(optimize took {fmt_time(self.optimize_time)})",
            ]
        lines.append(_item_time_line(p))
        if p.warmup_time is not None:
            lines.append(
                f"  first call {fmt_time(p.warmup_time)}: a one-time cost (an item run beside it waited "
                "for it to end); the figures are the later items'"
                + ("; each worker process of a fresh interpreter pays it again" if self.start_method in ("spawn", "forkserver") else "")
            )
        lines.append(
            f"  CPU/wall {p.cpu_ratio:.2f} -> {self.workload_type}-bound; "
            + (
                scaling_words(p.probe_threads, p.thread_scaling)
                if p.thread_scaling is not None
                else "thread scaling not probed (too little work left)"
            )
        )
        lines.append(
            f"  pickled: function {fmt_bytes(p.func_bytes)}, item {fmt_bytes(p.item_bytes)}, "
            f"result {fmt_bytes(p.result_bytes)} ({fmt_time(p.item_pickle_time + p.result_pickle_time)} "
            f"per item round trip, transport {p.transport or 'none'})"
        )
        lines.append(
            f"  peak memory per item {fmt_bytes(p.peak_memory_per_item)}; "
            f"{self.usable_cores} usable cores; pool start {fmt_time(self.start_cost)} "
            f"({self.start_method})"
        )
        if p.others_cores > 0:
            lines.append(
                f"  other processes kept {p.others_cores:.1f} of the {self.usable_cores} cores busy while sampling: "
                "the pools are predicted at their share of the cores beside them"
            )
        return lines

    def __str__(self) -> str:
        return self.explain()


def _item_time_line(p: Profile) -> str:
    """The item time, saying what each figure is over (the max takes the first call in unless
    it was a one-time cost)."""
    mean, sd, top = fmt_time(p.item_time_mean), p.item_time_std, p.item_time_max
    first_in = p.warmup_time is None
    if sd > 0:
        where = "the first call included" if first_in else "the later items"
        return (
            f"  item time {mean} mean, {fmt_time(sd)} spread (cv {p.item_time_cv:.2f}) between the timed batches; "
            f"{fmt_time(top)} max ({where})"
        )
    if top > p.item_time_mean and first_in:
        return (
            f"  item time {mean} mean over the timed batches (no spread between them); "
            f"the first call took {fmt_time(top)}"
        )
    if top > p.item_time_mean:
        return f"  item time {mean} mean (no spread measured); {fmt_time(top)} max"
    return f"  item time {mean} (no spread measured: one item timed, or every batch alike)"


@contextmanager
def get_executor(
    kind: "str | OptimizationResult" = "auto",
    n_jobs: int | None = None,
    *,
    start_method: str | None = None,
    blas_threads: int | None = None,
) -> Iterator[Executor]:
    """A pool to use in a ``with`` block; every worker is gone when the block ends.

    Parameters
    ----------
    kind
        ``"serial"``, ``"thread"``, ``"process"``, or an :class:`OptimizationResult` whose
        choice (executor type and n_jobs) is used. ``"auto"`` needs a result: pass the one
        :func:`autopar.optimize` returned.
    n_jobs
        Workers (default: usable cores). ``-1`` also means all usable cores.
    start_method
        For process pools: ``"fork"``, ``"spawn"`` or ``"forkserver"``.
    blas_threads
        BLAS threads per process worker (default: usable cores // n_jobs, at least 1).

    The yielded executor works with :func:`autopar.execute` (``pool=``) and on its own.
    """
    if isinstance(kind, OptimizationResult):
        n_jobs = n_jobs or kind.n_jobs
        start_method = start_method or kind.start_method
        kind = kind.executor_type
    if kind == "auto":
        raise ValueError(
            "get_executor('auto') needs the result of optimize(): get_executor(optimize(func, data))"
        )
    _, n_jobs = check_pool_args(kind, n_jobs, start_method)
    pool = make_executor(kind, n_jobs or usable_cores(), start_method=start_method, blas_threads=blas_threads)
    ok = False
    try:
        yield pool
        ok = True
    finally:
        if ok:  # like a concurrent.futures executor: a normal exit runs what was submitted
            pool.shutdown(wait=True)
        else:  # an exception or Ctrl-C: queued work is cancelled, workers are stopped
            terminate(pool)
