"""One frozen options object (:class:`Options`), built once from a public call's keyword
arguments (:meth:`Options.of`), validated there, and read by every step after it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .tune.system import START_METHODS, usable_cores

__all__ = ["EXECUTOR_TYPES", "POOL_TYPES", "Options", "check_flag", "check_func_and_data", "check_pool_args"]

EXECUTOR_TYPES = ("serial", "thread", "process")  # what optimize() chooses among
POOL_TYPES = EXECUTOR_TYPES + ("dask",)  # what a caller may ask for
NO_LIMIT = 1e9  # seconds: a timeout this long (infinity included) is no limit (timers stop near 1e9)


def check_pool_args(
    executor_type: str | None, n_jobs: int | None, start_method: str | None = None
) -> tuple[str | None, int | None]:
    """Validate the pool arguments; returns (executor_type or None for auto, n_jobs)."""
    if executor_type in (None, "auto"):
        executor_type = None
    elif executor_type not in POOL_TYPES:
        raise ValueError(
            f"executor_type must be one of 'auto', {', '.join(map(repr, POOL_TYPES))}; "
            f"got {executor_type!r}"
        )
    if n_jobs is not None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
            raise TypeError(f"n_jobs must be an int, got {type(n_jobs).__name__}")
        if n_jobs == -1:
            n_jobs = usable_cores()
        elif n_jobs < 1:
            raise ValueError(f"n_jobs must be a positive int or -1 (all usable cores), got {n_jobs}")
    if start_method is not None and start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
    return executor_type, n_jobs


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_func_and_data(func: Any, data: Any) -> None:
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}: {func!r:.80}")
    try:
        iter(data)
    except TypeError:
        raise TypeError(f"data must be iterable, got {type(data).__name__}") from None
    if not hasattr(type(data), "__iter__"):
        _check_indexed(data)


def _check_indexed(data: Any) -> None:
    """``data`` iterates through ``__getitem__`` from 0 (it has no ``__iter__``): an object
    indexed by labels would fail at its first item with a bare ``KeyError: 0``."""
    try:
        empty = len(data) == 0
    except TypeError:
        return
    if empty:
        return
    try:
        data[0]
    except (KeyError, IndexError, TypeError) as exc:
        name = type(data).__name__
        raise TypeError(
            f"data ({name}) has no __iter__, so Python reads it as data[0], data[1], ..., and data[0] "
            f"raised {type(exc).__name__}: {exc}; pass a list of its items (e.g. list(data.values()))"
        ) from exc


def _positive_int(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")


@dataclass(frozen=True)
class Options:
    """How to decide and how to run; see :func:`autopar.execute` for each field."""

    executor_type: str | None = None
    n_jobs: int | None = None
    chunksize: int | None = None
    prefer_threads_for_io: bool = True
    start_method: str | None = None
    n_items: int | None = None
    max_jobs: int | None = None
    sample_time: float = 0.2
    errors: str = "raise"
    progress: Any = False
    desc: str | None = None
    adapt: bool = True
    timeout: float | None = None
    retries: int = 0
    retry_backoff: float = 0.1
    scheduler: str | None = None
    cluster: Any = None  # a distributed.Client whose cluster optimize() may choose
    cache: bool = True  # the tuning cache (autopar.tune.wisdom)

    def __post_init__(self) -> None:
        kind, n_jobs = check_pool_args(self.executor_type, self.n_jobs, self.start_method)
        object.__setattr__(self, "executor_type", kind)  # normalising in __post_init__ only
        object.__setattr__(self, "n_jobs", n_jobs)
        _positive_int("chunksize", self.chunksize)
        _positive_int("max_jobs", self.max_jobs)
        if self.n_items is not None and (isinstance(self.n_items, bool) or not isinstance(self.n_items, int) or self.n_items < 0):
            raise ValueError(f"n_items must be an int >= 0, got {self.n_items!r}")
        if self.errors not in ("raise", "collect"):
            raise ValueError(f"errors must be 'raise' or 'collect', got {self.errors!r}")
        t = self.timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, got {t!r}")
        if t is not None and t >= NO_LIMIT:  # infinity (or more than a few decades): no limit
            object.__setattr__(self, "timeout", None)
        p = self.progress
        if not isinstance(p, bool) and not callable(p):
            raise TypeError(f"progress must be True, False or a callable f(done, total), got {p!r}")
        r = self.retries
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"retries must be an int >= 0, got {r!r}")
        b = self.retry_backoff
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < float("inf"):
            raise ValueError(f"retry_backoff must be a finite number >= 0, got {b!r}")
        if self.scheduler is not None:
            if not isinstance(self.scheduler, str) or not self.scheduler:
                raise ValueError(f"scheduler must be a Dask scheduler address such as 'tcp://127.0.0.1:8786', got {self.scheduler!r}")
            if kind not in (None, "dask"):
                raise ValueError(f"scheduler= runs on Dask; it does not go with executor_type={kind!r}")
            object.__setattr__(self, "executor_type", "dask")
        if self.cluster is not None and not hasattr(self.cluster, "scheduler_info"):
            raise TypeError(f"cluster must be a dask.distributed Client, got {type(self.cluster).__name__}")
        if self.cluster is not None and self.scheduler is not None:
            raise ValueError("give scheduler= or cluster=, not both")
        if self.cluster is not None and kind not in (None, "dask"):
            raise ValueError(f"cluster= makes the cluster a candidate; it does not go with executor_type={kind!r}")
        check_flag("cache", self.cache)
        s = self.sample_time
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < float("inf"):
            raise ValueError(f"sample_time must be a finite number of seconds >= 0, got {s!r}")
        check_flag("adapt", self.adapt)
        if self.desc is not None and not isinstance(self.desc, str):
            raise TypeError(f"desc must be a str (the progress bar's label) or None, got {self.desc!r}")

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> "Options":
        """The options among a call's ``locals()``."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})

    @property
    def collect(self) -> bool:
        return self.errors == "collect"

    @property
    def fully_given(self) -> bool:
        """Nothing left to decide: serial, or a pool kind with n_jobs and chunksize."""
        return self.executor_type == "serial" or bool(self.executor_type and self.n_jobs and self.chunksize)

    @property
    def on_dask(self) -> bool:
        return self.executor_type == "dask"
