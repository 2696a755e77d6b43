"""The staged model: each stage's measured seconds, a staged config from them, its predicted
time, and the choice of fused or staged (:func:`_choose`)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from .. import _serialize
from ..errors import ItemFailed, annotate, annotate_stage
from ..tune import wisdom
from ..tune.costs import pool_costs
from ..tune.predict import cores_beside, fair_progress
from .compose import Fused, Stage, _pickled_size


def _measure(
    stages: Sequence[Stage], items: list[Any], budget: float, collect: bool = False
) -> tuple[list[tuple[float, float]], list[Any], list[float]]:
    """Each stage's mean wall and CPU seconds an item, from running the first items through
    the stages in the caller (until ``budget`` seconds or the items run out); those items'
    results, kept so that no stage runs an item twice (a writer among them); and the bytes
    the first item pickles to before each stage and after the last."""
    wall = [0.0] * len(stages)
    cpu = [0.0] * len(stages)
    outputs: list[Any] = []
    sizes = [_pickled_size(items[0])] + [0.0] * len(stages) if items else [0.0] * (len(stages) + 1)
    t_start = time.perf_counter()
    for index, x in enumerate(items):
        for i, s in enumerate(stages):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                x = s.func(x)
            except Exception as exc:
                annotate_stage(exc, str(s.name))
                annotate(exc, index, "pipeline sample (serial)")
                if not collect:
                    raise
                x = ItemFailed(index, exc)
                break
            wall[i] += time.perf_counter() - t0
            cpu[i] += time.thread_time() - c0
            if index == 0:
                sizes[i + 1] = _pickled_size(x)
        outputs.append(x)
        if time.perf_counter() - t_start > budget and len(outputs) >= 2:
            break
    n = max(len(outputs), 1)
    return [(w / n, c / n) for w, c in zip(wall, cpu)], outputs, sizes


def _staged_config(
    stages: Sequence[Stage], measured: list[tuple[float, float]], cores: int, kinds: Sequence[str | None] | None = None
) -> list[tuple[str, int]]:
    """Per stage: its pool (pinned, or ``kinds``, or threads for work that waits or will not
    pickle, processes for computing) and workers in proportion to its share of the time, so
    that no stage starves the next."""
    total = sum(w for w, _ in measured) or 1e-9
    config = []
    for j, (s, (w, c)) in enumerate(zip(stages, measured)):
        ratio = c / w if w > 0 else 0.0
        kind = s.executor_type or (kinds[j] if kinds is not None else None)
        if kind is None:
            kind = "thread" if ratio < 0.5 or not _picklable(s.func) else "process"
        n = s.n_jobs
        if n is None:
            share = w / total
            n = max(1, round(cores * share)) if kind == "process" else max(1, math.ceil(cores * share / max(ratio, 0.05)))
        config.append((kind, 1 if kind == "serial" else n))
    return config


HANDOFF_COST = 5e-6  # seconds of the caller's GIL an item and stage costs the staged machinery
STAGED_MARGIN = 0.8  # staged must be predicted this much faster than fused to be chosen


def _staged_time(
    n_items: int, measured: list[tuple[float, float]], sizes: list[float], config: list[tuple[str, int]],
    cores: int, costs: Any, gil_free: bool, others: float = 0.0,
) -> tuple[float, str]:
    """Predicted seconds for ``n_items`` staged, and the bound that sets the pace: per item the
    slowest of a stage's time over its workers (plus a process task's round trip), the cores'
    share of all the CPU (pickling included), or the caller's GIL (Python in thread and serial
    stages, process stages' pickling, the handoffs). ``sizes``: bytes each stage's input pickles to.
    ``others``: cores other processes were busy on during the sample; the stages' workers then
    get their fair share of the cores beside them, as optimize()'s pools do (fused's prediction)."""
    per_stage, gil, cpu = [], 0.0, 0.0
    for i, ((w, c), (kind, k)) in enumerate(zip(measured, config)):
        ship = (sizes[i] + sizes[i + 1]) * costs.process_seconds_per_byte if kind == "process" else 0.0
        n = k if kind != "serial" else 1
        pace = float(n) if others <= 0 else fair_progress(n, min(c / w, 1.0) if w > 0 else 0.0, cores, others)
        if kind == "process":
            per_stage.append((w + ship + costs.process_task_overhead) / pace)
            cpu += c + 2 * ship
            gil += ship
        else:
            per_stage.append(w / pace)
            cpu += c
            gil += 0.0 if gil_free and kind == "thread" else c
        gil += HANDOFF_COST
    slowest = max(range(len(per_stage)), key=per_stage.__getitem__)
    usable = cores_beside(sum(k for _, k in config), cores, others)
    bounds = {f"stage {slowest}": per_stage[slowest], "the GIL": gil, "the cores": cpu / max(usable, 1e-9)}
    pace = max(bounds, key=bounds.__getitem__)
    start = sum(costs.process_start(k) if kind == "process" else costs.thread_start(k) for kind, k in config)
    fill = sum(w for w, _ in measured)
    return start + fill + n_items * bounds[pace], pace


def _best_config(
    stages: Sequence[Stage], measured: list[tuple[float, float]], sizes: list[float], cores: int, costs: Any,
    gil_free: bool, n_items: int, others: float = 0.0,
) -> tuple[list[tuple[str, int]], float, str]:
    """The staged config predicted fastest over threads or processes for each stage not
    pinned (workers by the stages' shares); within 5%, the one with fewer process stages
    (each item of one costs the caller a round trip). (config, predicted seconds, pace)."""
    choices = [
        [s.executor_type] if s.executor_type else (["thread", "process"] if w > 0 and _picklable(s.func) else ["thread"])
        for s, (w, _) in zip(stages, measured)
    ]
    options = list(itertools.product(*choices)) if math.prod(map(len, choices)) <= 64 else [None]
    scored = []
    for kinds in options:
        config = _staged_config(stages, measured, cores, kinds)
        t, pace = _staged_time(n_items, measured, sizes, config, cores, costs, gil_free, others)
        scored.append((t, sum(k == "process" for k, _ in config), config, pace))
    fastest = min(t for t, *_ in scored)
    t, _, config, pace = min((x for x in scored if x[0] <= 1.05 * fastest), key=lambda x: (x[1], x[0]))
    return config, t, pace


def _stage_figures(fused: Any, fn: Fused, n: int) -> list[tuple[float, float]]:
    """Each stage's (wall, CPU) seconds an item: from the tuning cache on a hit (no item
    ran), else from the sample, then kept with the sample's entry for the next time."""
    p = fused.profile
    if fused.cache == "hit":
        fn.out_bytes = [float(b) for b in p.stage_bytes]
        return [(float(w), float(c)) for w, c in p.stage_times]
    measured = fn.measured()
    if fused.cache == "miss" and fused.cache_key and fn.calls and wisdom.worth_keeping(p):
        sizes = tuple(b if b is not None else float("inf") for b in fn.out_bytes)
        wisdom.store(fused.cache_key, wisdom.func_name(fn.chain), replace(p, stage_times=tuple(measured), stage_bytes=sizes))
    return measured


def _picklable(func: Callable[[Any], Any]) -> bool:
    return _serialize.measure(func)[0] is not None  # pickle or cloudpickle can send it


def _choose(stages: Sequence[Stage], fused: Any, fn: Fused, measured: list[tuple[float, float]], cores: int,
            reasons: list[str]) -> tuple[str, float, list[tuple[str, int]]]:
    """Fused or staged, from the same measurements: fused's prediction is optimize()'s;
    staged's is :func:`_staged_time` for the best staged config. Staged only where
    clearly faster (STAGED_MARGIN): its model is the cruder of the two. Returns (mode,
    predicted items/s, the staged config)."""
    if fused.n_remaining == 0:
        reasons.append("fused: optimize()'s sample ran every item, nothing is left to run")
        return "fused", float("inf"), _staged_config(stages, measured, cores)
    rest = fused.n_remaining
    p = fused.profile
    gil_free = bool(p.thread_scaling and p.probe_threads >= 2 and p.thread_scaling >= 0.8 * p.probe_threads)
    sizes = [p.item_bytes] + [b if b is not None else p.result_bytes for b in fn.out_bytes]
    config, t_staged, pace = _best_config(
        stages, measured, sizes, cores, pool_costs(fused.start_method), gil_free, rest, p.others_cores
    )
    t_fused = fused.predicted_time
    how = " / ".join(k if k == "serial" else f"{k} x{n}" for k, n in config)
    if t_staged < STAGED_MARGIN * t_fused:
        reasons.append(
            f"staged ({how}) predicted {t_staged:.3f} s for the {rest} items left, fused "
            f"({fused.executor_type} x{fused.n_jobs}) {t_fused:.3f} s: each stage on its own pool, paced by {pace}"
        )
        return "staged", rest / t_staged if t_staged > 0 else float("inf"), config
    reasons.append(
        f"fused ({fused.executor_type} x{fused.n_jobs}) predicted {t_fused:.3f} s for the {rest} items left, staged "
        f"({how}) {t_staged:.3f} s, paced by {pace}: every item through all stages on one pool"
    )
    return "fused", rest / t_fused if t_fused > 0 else float("inf"), config

