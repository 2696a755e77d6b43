"""``autopar.bench()`` / ``autopar bench``: a pipeline run every way worth trying on the user's
own data, timed, with the fastest marked and autopar's pick beside it."""

from __future__ import annotations

import math
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .pipeline import Fused, Pipeline, Stage, StagedRun, _best_config, _measure
from .plot import bench_plot
from .tune.costs import pool_costs
from .tune.system import default_start_method, usable_cores

__all__ = ["BenchReport", "BenchRow", "bench", "fused_way", "staged_way"]


@dataclass(frozen=True)
class BenchRow:
    name: str  # "sequential", "fused thread x2", "staged", "autopar", ...
    kind: str  # "sequential", "fused", "staged", "autopar"
    seconds: float  # median over the rounds
    runs: tuple[float, ...]
    items: int
    detail: str = ""

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def ms_per_item(self) -> float:
        return 1e3 * self.seconds / self.items if self.items else 0.0


@dataclass(frozen=True)
class BenchReport:
    rows: tuple[BenchRow, ...]
    stages: tuple[dict[str, Any], ...]  # per stage: name, ms an item, CPU/wall, staged busy share
    bottleneck: str | None
    best: str  # the fastest row other than autopar's
    regret: float  # autopar / best
    autopar_pick: str
    rounds: int
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"{'way':<24} {'seconds':>9} {'items/s':>10} {'ms/item':>9}", "-" * 56]
        for r in self.rows:
            mark = "  <- best" if r.name == self.best else ("  <- autopar's pick" if r.kind == "autopar" else "")
            lines.append(f"{r.name:<24} {r.seconds:9.3f} {r.items_per_s:10.1f} {r.ms_per_item:9.3f}{mark}")
        lines.append(f"autopar: {self.autopar_pick}; regret {self.regret:.2f} (its time over the best's), medians of {self.rounds} rounds")
        lines += ["", f"{'stage':<24} {'ms/item':>9} {'CPU/wall':>9} {'staged busy':>12}"]
        for s in self.stages:
            busy = "" if s.get("busy_share") is None else f"{s['busy_share']:.0%}"
            lines.append(f"{s['name']:<24} {s['ms_per_item']:9.3f} {s['cpu_ratio']:9.2f} {busy:>12}")
        if self.bottleneck:
            lines.append(f"bottleneck when staged: {self.bottleneck}")
        for name, why in self.extra.get("skipped", {}).items():
            lines.append(f"not timed: {name} ({why})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, d in zip(self.rows, out["rows"]):
            d["items_per_s"], d["ms_per_item"] = row.items_per_s, row.ms_per_item
        return out

    def plot(self, path: str | Path) -> Path:
        return bench_plot(self, path)


def _timed(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def fused_way(stages: Sequence[Stage], data: list[Any], kind: str, n: int, start_method: str | None) -> Callable[[], Any]:
    """The stages composed, on a plain pool of ``kind`` with ``n`` workers, chunks of len/4n."""
    fn = Fused(stages)
    cs = max(1, math.ceil(len(data) / (4 * n)))
    if kind == "process":
        # Proven before any pool starts: a pickling error in a pool's feeder thread could hang
        # its shutdown for good on 3.13.0 (a CI run waited 120 s on the stdlib's lock).
        from multiprocessing.reduction import ForkingPickler

        try:
            ForkingPickler.dumps(fn)
            if data:
                ForkingPickler.dumps(data[0])
        except Exception as exc:
            error = exc

            def cannot() -> list[Any]:
                raise error

            return cannot

    def run() -> list[Any]:
        if kind == "thread":
            with ThreadPoolExecutor(n) as ex:
                return list(ex.map(fn, data, chunksize=cs))
        import multiprocessing as mp

        ctx = mp.get_context(start_method) if start_method else None
        with ProcessPoolExecutor(n, mp_context=ctx) as ex:
            return list(ex.map(fn, data, chunksize=cs))

    return run


def staged_way(pipe: Pipeline, data: list[Any], config: Sequence[tuple[str, int]], metrics: dict[str, Any]) -> Callable[[], Any]:
    """A staged run of ``data`` with ``config`` (per stage: pool kind, workers); its last
    run's metrics land in ``metrics``."""

    def run() -> list[Any]:
        staged = StagedRun(pipe.stages, config, 32, False, ordered=True, start_method=pipe.start_method)
        out: list[Any] = []
        try:
            staged.feed(data)
            while (got := staged.get()) is not None:
                out.append(got[1])
        finally:
            staged.close(kill=len(out) < len(data))
        metrics.update(staged.metrics())
        return out

    return run


def bench(
    stages: Pipeline | Sequence[Callable[[Any], Any] | Stage] | Callable[[Any], Any], data: Iterable[Any], *,
    rounds: int = 3, max_workers: int | None = None, seed: int = 0,
) -> BenchReport:
    """Time ``data`` through ``stages`` (a Pipeline, stages, or one function) every way worth trying.

    Rows: sequential (a plain loop through the stages); fused (the stages composed, on threads
    and on processes with 2 .. cores workers, chunks of len/4n); staged (each stage on its own
    pool, as the pipeline's model would stage it); and autopar (the pipeline's own optimize()
    and execute(), optimize() inside the timing). Rounds run the rows in a shuffled order; a
    row's figure is its median; regret is autopar's over the best other row's. Beside them,
    each stage's measured time an item and, staged, its busy share and the bottleneck.
    """
    pipe = stages if isinstance(stages, Pipeline) else Pipeline(list(stages) if isinstance(stages, (list, tuple)) else [stages])
    data = list(data)
    if not data:
        raise ValueError("bench needs at least one item")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    cores = max_workers or usable_cores()
    measured, _, sizes = _measure(pipe.stages, data[:64], 0.2)
    costs = pool_costs(pipe.start_method or default_start_method())
    config, _, _ = _best_config(pipe.stages, measured, sizes, cores, costs, False, len(data))  # as optimize() would stage it
    workers = sorted({2, cores} | ({cores * 2} if cores > 2 else set())) if cores >= 2 else [1]
    ways: dict[str, tuple[str, Callable[[], Any]]] = {
        "sequential": ("sequential", lambda: list(map(Fused(pipe.stages).chain, data))),
    }
    for kind in ("thread", "process"):
        for n in workers:
            ways[f"fused {kind} x{n}"] = ("fused", fused_way(pipe.stages, data, kind, n, pipe.start_method))
    metrics: dict[str, Any] = {}
    staged = staged_way(pipe, data, config, metrics)
    ways["staged " + "/".join(k if k == "serial" else f"{k[0]}{n}" for k, n in config)] = ("staged", staged)
    picks: list[str] = []

    def auto() -> list[Any]:
        plan = pipe.optimize(data, cache=False)  # a first run each round (and the user's cache untouched)
        picks.append(_describe(plan))
        return pipe.execute(data, plan=plan)

    ways["autopar"] = ("autopar", auto)
    times: dict[str, list[float]] = {name: [] for name in ways}
    skipped: dict[str, str] = {}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = [name for name in ways if name not in skipped]
        rng.shuffle(order)
        for name in order:
            try:
                times[name].append(_timed(ways[name][1]))
            except Exception as exc:
                if ways[name][0] in ("sequential", "autopar"):
                    raise  # the work itself fails: the user's to see
                skipped[name] = f"{type(exc).__name__}: {exc}"  # e.g. a stage that cannot be pickled
                del times[name]
    rows = tuple(BenchRow(name, ways[name][0], statistics.median(t), tuple(t), len(data)) for name, t in times.items())
    others = [r for r in rows if r.kind != "autopar"]
    best = min(others, key=lambda r: r.seconds)
    auto_row = next(r for r in rows if r.kind == "autopar")
    busy = {s["name"]: s["busy_share"] for s in metrics.get("stages", [])}
    stage_info = tuple(
        {"name": str(s.name), "ms_per_item": w * 1e3, "cpu_ratio": (c / w if w > 0 else 0.0),
         "staged_pool": k if k == "serial" else f"{k} x{n}", "busy_share": busy.get(str(s.name))}
        for s, (w, c), (k, n) in zip(pipe.stages, measured, config)
    )
    return BenchReport(
        rows, stage_info, metrics.get("bottleneck"), best.name, auto_row.seconds / best.seconds,
        picks[-1] if picks else "", rounds, {"skipped": skipped} if skipped else {},
    )


def _describe(plan: Any) -> str:
    if plan.mode == "fused" and plan.fused is not None:
        r = plan.fused
        how = "serial" if r.executor_type == "serial" else f"{r.executor_type} x{r.n_jobs}"
        return f"fused, {how}"
    return "staged " + "/".join(s.executor_type if s.executor_type == "serial" else f"{s.executor_type[0]}{s.n_jobs}" for s in plan.stages)
