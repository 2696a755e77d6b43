"""A pipeline's arguments, checked at once with their names (not later, in a stage)."""

from __future__ import annotations

from typing import Any, Sequence

from ..options import EXECUTOR_TYPES, Options
from .compose import Stage
from .plan import PipelinePlan


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_run_args(items: Any = (), *, plan: Any = None, queue_size: Any = None, **options: Any) -> None:
    """The items, the plan, the queues' bound, and ``options`` (errors, sample_time, cache,
    progress, desc) as :class:`~autopar.options.Options` checks them."""
    try:
        iter(items)
    except TypeError:
        raise TypeError(f"items must be iterable, got {type(items).__name__}") from None
    if plan is not None and not isinstance(plan, PipelinePlan):
        raise TypeError(f"plan must be a PipelinePlan from Pipeline.optimize(), got {type(plan).__name__}")
    if queue_size is not None:
        _positive_int("queue_size", queue_size)
    Options(**options)


def _check_timeout(timeout: Any) -> None:
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if timeout is not None and not (number and 0 <= timeout < float("inf")):
        raise ValueError(f"timeout must be a finite number of seconds >= 0 or None, got {timeout!r}")


def _checked_config(stages: Sequence[Stage], config: Any) -> list[tuple[str, int]]:
    """``config`` as a list of (executor_type, n_jobs), one per stage, each a pool kind a
    stage runs on and a positive worker count; a pin it breaks is an error."""
    try:
        pairs = [tuple(c) for c in config]
    except TypeError:
        raise TypeError(f"config must be a list of (executor_type, n_jobs) pairs, got {config!r}") from None
    if len(pairs) != len(stages) or any(len(c) != 2 for c in pairs):
        raise ValueError(f"config must give (executor_type, n_jobs) for each of the {len(stages)} stages, got {config!r}")
    out = []
    for stage, (kind, n) in zip(stages, pairs):
        if kind not in EXECUTOR_TYPES:
            raise ValueError(f"config: stage {stage.name!r}'s executor_type must be one of {EXECUTOR_TYPES}, got {kind!r}")
        _positive_int(f"config: stage {stage.name!r}'s n_jobs", n)
        if stage.executor_type not in (None, kind) or stage.n_jobs not in (None, n):
            raise ValueError(f"config: stage {stage.name!r} is pinned to {stage.executor_type or 'any'} x{stage.n_jobs or 'any'}, got {kind} x{n}")
        out.append((kind, n))
    return out

