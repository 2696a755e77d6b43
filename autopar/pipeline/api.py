"""The public :class:`Pipeline`: ``optimize()`` (measure, choose fused or staged), ``execute()``,
``execute_iter()`` (run the plan), ``stream()`` (staged, for items that arrive over time)."""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import ItemFailed
from ..run.execute import execute_iter
from ..tune.costs import pool_costs
from ..tune.optimize import optimize
from ..tune.system import default_start_method, usable_cores
from .checks import _check_run_args, _checked_config
from .compose import Fused, Stage
from .model import _best_config, _choose, _measure, _stage_figures
from .plan import PipelinePlan, StagePlan, _Sampled, _taken
from .report import PipelineRun
from .stream import Stream
from .switch import _staged


def _then(done: Iterable[Any], rest: Iterator[Any], collect: bool = True) -> Iterator[Any]:
    """``done``, then ``rest``; closing it closes ``rest`` (and stops its stages). Not
    ``collect``: a failure in ``done`` (a sample that collected) raises in its place."""
    for value in done:
        if not collect and isinstance(value, ItemFailed):
            raise value.exception
        yield value
    yield from rest


class Pipeline:
    """Stages run one after another on each item: ``Pipeline([read, Stage(stretch), ...])``."""

    def __init__(self, stages: Sequence[Callable[[Any], Any] | Stage], *, start_method: str | None = None) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = tuple(s if isinstance(s, Stage) else Stage(s) for s in stages)
        self.start_method = start_method  # of the process stages' pools (default: autopar's)
        self._last: PipelinePlan | None = None  # the last optimize()'s plan: a run of the same items takes it
        self._last_lock = threading.Lock()

    def optimize(
        self, items: Iterable[Any], *, sample_time: float = 0.2, queue_size: int = 32, errors: str = "raise",
        cache: bool = True,
    ) -> PipelinePlan:
        """Measure each stage on the first items and choose fused or staged (``errors``:
        "collect" keeps a sample item's failure in its place, as execute() does). ``cache``:
        the tuning cache, as optimize()'s: a pipeline measured before on like items is
        decided from its kept figures (the stages' too) without a sample."""
        _check_run_args(items, errors=errors, queue_size=queue_size, sample_time=sample_time, cache=cache)
        data = items if isinstance(items, (list, tuple)) else list(items)
        cores = usable_cores()
        reasons = []
        pinned = [s.name for s in self.stages if s.pinned]
        fused = None
        sampled: list[Any] = []
        if pinned:
            # A serial sample runs at the slowest stage's pace: a quarter of sample_time will do.
            head = list(itertools.islice(data, 64))
            measured, sampled, sizes = _measure(self.stages, head, sample_time / 4, errors == "collect")
            costs, rest = pool_costs(self.start_method or default_start_method()), max(len(data) - len(sampled), 1)
            config, _, _ = _best_config(self.stages, measured, sizes, cores, costs, False, rest)
            mode = "staged"
            reasons.append(f"stages {', '.join(map(str, pinned))} are pinned: each stage runs on its own pool")
            paces = [w / (n if kind != "serial" else 1) for (kind, n), (w, _) in zip(config, measured)]
            throughput = 1.0 / max(paces) if max(paces) > 0 else float("inf")
        else:
            # optimize() samples the composed function (its results kept for execute()), timing each stage.
            fused_obj = Fused(self.stages)
            try:
                fused_obj.timed = True
                fused = optimize(fused_obj.chain, data, sample_time=sample_time, errors=errors, cache=cache)
                if fused.cache == "hit" and len(fused.profile.stage_times) != len(self.stages):
                    # An entry without its stages' figures (read before they were added): measure.
                    fused = optimize(fused_obj.chain, data, sample_time=sample_time, errors=errors, cache=False)
            finally:
                fused_obj.timed = False
            measured = _stage_figures(fused, fused_obj, len(self.stages))
            if fused.cache == "hit":
                reasons.append("the stages' figures from the tuning cache (this pipeline ran on like items before): no sample")
            mode, throughput, config = _choose(self.stages, fused, fused_obj, measured, cores, reasons)
            if mode == "staged" and fused.stash is not None:
                # The sample's items went through every stage: the staged run starts after them.
                sampled = [y for block in fused.stash.result_blocks for y in block]
        plans = tuple(
            StagePlan(str(s.name), kind, n, 1, w, (c / w if w > 0 else 0.0), s.pinned)
            for s, (kind, n), (w, c) in zip(self.stages, config, measured)
        )
        taken = len(sampled) if fused is None else max(len(sampled), _taken(fused.stash))
        item_time = fused.profile.item_time_mean if fused is not None else sum(w for w, _ in measured)
        plan = PipelinePlan(mode, plans, throughput, tuple(reasons), fused, queue_size, data, tuple(sampled),
                            _Sampled(items, data, taken, budget=0.5 * item_time * taken))
        with self._last_lock:
            self._last = plan
        return plan

    def _take_last(self, items: Any) -> PipelinePlan | None:
        """The last optimize()'s plan where it was made for ``items`` and not yet run
        (then forgotten: it holds the items and the sample's results)."""
        with self._last_lock:
            plan = self._last
            if plan is None or plan.source is None or not plan.source.matches(items):
                return None
            self._last = None
            return plan

    def _forget(self, plan: PipelinePlan) -> None:
        with self._last_lock:
            if self._last is plan:
                self._last = None

    def execute(self, items: Iterable[Any], *, plan: PipelinePlan | None = None, errors: str = "raise",
                queue_size: int | None = None, progress: Any = False, desc: str | None = None) -> list[Any]:
        """The same list as ``[last(...first(x)) for x in items]``, in input order.
        ``progress``/``desc``: a progress bar as execute()'s (fused runs; a staged run shows none)."""
        return self.execute_iter(items, plan=plan, errors=errors, queue_size=queue_size, progress=progress, desc=desc).to_list()

    def execute_iter(self, items: Iterable[Any], *, plan: PipelinePlan | None = None, errors: str = "raise",
                     queue_size: int | None = None, progress: Any = False, desc: str | None = None) -> Iterator[Any]:
        """The results one by one, in input order (a :class:`PipelineRun`). Without ``plan``:
        the plan of the last optimize() of these very items, unchanged since (its sample's
        items are not run again), else a new optimize()."""
        _check_run_args(items, plan=plan, errors=errors, queue_size=queue_size, progress=progress, desc=desc)
        if plan is None:
            plan = self._take_last(items)
            if plan is None:
                items = items if isinstance(items, (list, tuple)) else list(items)
                plan = self.optimize(items, errors=errors)
        same = plan.source.claim(items) if plan.source is not None else None  # the sample's items: once
        self._forget(plan)
        if same is not None:
            items = same
        if plan.mode == "fused":  # the plan's result holds the sample's results and its function
            stash = plan.fused.stash if plan.fused is not None else None
            fn = stash.func if stash is not None and same is not None else Fused(self.stages).chain
            fused_run = PipelineRun(plan)
            fused_run.attach(execute_iter(fn, items, result=plan.fused, errors=errors, progress=progress, desc=desc))
            return fused_run
        done: tuple[Any, ...] = ()
        if plan.sampled and same is not None:  # the sample's items ran through every stage
            done, items = plan.sampled, same[len(plan.sampled):]
        config = [(p.executor_type, p.n_jobs) for p in plan.stages]
        run = PipelineRun(plan)
        run.from_sample = len(done)
        # A staged run with a fused alternative (no stage pinned) is watched against it.
        fused = plan.fused if plan.fused is not None and isinstance(items, (list, tuple)) else None
        rest = _staged(self.stages, self.start_method, items, config, queue_size or plan.queue_size, errors, len(done),
                       fused, run)
        run.attach(_then(done, rest, errors == "collect") if done else rest)
        return run

    def stream(self, *, queue_size: int = 32, errors: str = "raise", ordered: bool = True,
               plan: PipelinePlan | None = None, config: Sequence[tuple[str, int]] | None = None) -> "Stream":
        """A pipeline kept running for items that arrive over time (see :class:`Stream`).
        ``config``: per stage (executor_type, n_jobs); else a staged ``plan``'s, else each
        stage's pin or one thread."""
        _check_run_args(plan=plan, errors=errors, queue_size=queue_size)
        if not isinstance(ordered, bool):
            raise ValueError(f"ordered must be True or False, got {ordered!r}")
        if config is None:
            if plan is not None and plan.mode == "staged":
                config = [(p.executor_type, p.n_jobs) for p in plan.stages]
            else:
                config = [(s.executor_type or "thread", s.n_jobs or 1) for s in self.stages]
        return Stream(self, _checked_config(self.stages, config), queue_size, errors == "collect", ordered)

