"""The stages, and the stages as one function: :class:`Stage` (one step, what it pins) and
:class:`Fused` (the stages composed into one picklable function, :func:`_compose`)."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import annotate_stage
from ..options import EXECUTOR_TYPES, check_pool_args

TIMED_CALLS = 64  # items of the sample whose stages are timed one by one


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. Pin what must be pinned (``executor_type``, ``n_jobs``); what
    is not pinned is chosen. ``ordered``: the stage takes its items in input order (a sink
    that appends to one file); False passes them on as they finish."""

    func: Callable[[Any], Any]
    name: str | None = None
    executor_type: str | None = None
    n_jobs: int | None = None
    ordered: bool = True

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise TypeError(f"a stage needs a callable, got {type(self.func).__name__}")
        kind, n_jobs = check_pool_args(self.executor_type, self.n_jobs)  # the checks execute() makes
        if kind is not None and kind not in EXECUTOR_TYPES:
            raise ValueError(f"a stage's executor_type must be one of {EXECUTOR_TYPES}, got {kind!r}")
        object.__setattr__(self, "executor_type", kind)
        object.__setattr__(self, "n_jobs", n_jobs)
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.func, "__name__", type(self.func).__name__))

    @property
    def pinned(self) -> bool:
        return self.executor_type is not None or self.n_jobs is not None


class Fused:
    """The stages as one function (picklable when each stage is): an item's failure names
    its stage. While ``timed`` (optimize()'s sample, in the caller) each stage's wall and
    CPU seconds are added up."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.funcs = [s.func for s in stages]
        self.names = [str(s.name) for s in stages]
        self.timing = [False]  # read by the composed function: time this item stage by stage
        self.calls = 0
        self.wall = [0.0] * len(self.funcs)
        self.cpu = [0.0] * len(self.funcs)
        self.out_bytes: list[float | None] = [None] * len(self.funcs)  # a stage's output pickled (first timed item)
        self.chain = _compose(self)

    @property
    def timed(self) -> bool:
        return self.timing[0]

    @timed.setter
    def timed(self, on: bool) -> None:
        self.timing[0] = bool(on) and self.calls < TIMED_CALLS

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "chain"}
        state["timing"] = [False]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.chain = _compose(self)

    def __call__(self, item: Any) -> Any:
        return self.chain(item)

    def _timed(self, item: Any) -> Any:
        """One item, each stage's wall and CPU time added up (the sample's first TIMED_CALLS items)."""
        for i, (func, name) in enumerate(zip(self.funcs, self.names)):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                item = func(item)
            except Exception as exc:
                annotate_stage(exc, name)
                raise
            self.wall[i] += time.perf_counter() - t0
            self.cpu[i] += time.thread_time() - c0
            if self.out_bytes[i] is None:
                self.out_bytes[i] = _pickled_size(item)
        self.calls += 1
        if self.calls >= TIMED_CALLS:
            self.timing[0] = False
        return item

    def measured(self) -> list[tuple[float, float]]:
        n = max(self.calls, 1)
        return [(w / n, c / n) for w, c in zip(self.wall, self.cpu)]


def _compose(fused: Fused) -> Callable[[Any], Any]:
    """The stages as one generated function, ``x = f0(x)``, ``x = f1(x)``, ... (no loop: cheaper
    for tiny stages); a failure is annotated with its stage; while ``fused.timing[0]`` an item
    goes through ``_timed``. Process pools get it by cloudpickle (by value)."""
    ns: dict[str, Any] = {"timing": fused.timing, "timed": fused._timed, "annotate_stage": annotate_stage}
    lines = ["def pipeline(x):", "    if timing[0]:", "        return timed(x)"]
    for i, (func, name) in enumerate(zip(fused.funcs, fused.names)):
        ns[f"f{i}"], ns[f"n{i}"] = func, name
        lines += ["    try:", f"        x = f{i}(x)", "    except Exception as e:", f"        annotate_stage(e, n{i})", "        raise"]
    lines.append("    return x")
    exec("\n".join(lines), ns)  # noqa: S102 - the source is built here from stage indices only
    chain = ns["pipeline"]
    chain.__qualname__ = "pipeline(" + " -> ".join(fused.names) + ")"
    chain.fused = fused
    chain.key_funcs = tuple(fused.funcs)  # the tuning cache's key: the stages themselves
    return chain


def _pickled_size(value: Any) -> float:
    """Bytes ``value`` pickles to (inf where it does not pickle: no process stage after it)."""
    try:
        return float(len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
    except Exception:
        return float("inf")
