"""Cheap facts about the machine, read every time a process asks (:func:`system_info`): usable
cores (affinity, cgroup quota), memory, start method, GIL, BLAS pools. The costly ones, measured
with real pools, live in :mod:`autopar.tune.costs`.
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import os
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = ["START_METHODS", "SystemInfo", "default_start_method", "system_info", "usable_cores"]

START_METHODS = ("fork", "spawn", "forkserver")  # multiprocessing's, on the platforms autopar runs on

_CGROUP_FILES = (
    "/sys/fs/cgroup/cpu.max",  # cgroup v2
    "/sys/fs/cgroup/memory.max",
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",  # cgroup v1
    "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",
)


@functools.lru_cache(maxsize=1)
def _cgroup_files() -> frozenset[str]:
    """The cgroup files this process has (fixed while it runs; their values are read every time)."""
    return frozenset(p for p in _CGROUP_FILES if os.path.exists(p))


def _read(path: str) -> str | None:
    """A cgroup file's text, or None where it cannot be read."""
    if path not in _cgroup_files():
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read().decode()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_cpu_quota() -> float | None:
    """Cores allowed by the cgroup CPU quota, or None when there is no quota."""
    text = _read(_CGROUP_FILES[0])
    if text is not None:
        try:
            quota, period = text.split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        except ValueError:
            pass
    try:
        quota_us = int(_read(_CGROUP_FILES[2]) or "")
        period_us = int(_read(_CGROUP_FILES[3]) or "")
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except ValueError:
        pass
    return None


def _cgroup_memory_limit() -> int | None:
    for path in (_CGROUP_FILES[1], _CGROUP_FILES[4]):
        text = (_read(path) or "").strip()
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def usable_cores() -> int:
    """Cores this process may really use: CPU affinity and cgroup quota, not ``os.cpu_count()``.

    ``AUTOPAR_CPU_COUNT`` overrides the measured figure (useful to model a smaller machine).
    """
    return _usable_cores(_cgroup_cpu_quota())


def _usable_cores(quota: float | None) -> int:
    override = os.environ.get("AUTOPAR_CPU_COUNT")
    if override:
        return max(1, int(override))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _blas_pools() -> tuple[dict[str, Any], ...]:
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "num_threads", "version")
    return tuple({k: pool.get(k) for k in keys} for pool in threadpool_info())


_blas_seen: tuple[int, bool] = (-1, False)


def threaded_blas_loaded() -> bool:
    """Whether a BLAS library with more than one thread is loaded (scanned again only when
    modules were imported since: native libraries come in with imports)."""
    global _blas_seen
    n = len(sys.modules)
    if _blas_seen[0] != n:
        try:
            found = any(p.get("user_api") == "blas" and (p.get("num_threads") or 1) > 1 for p in _blas_pools())
        except Exception:  # threadpoolctl could not inspect a library: take none as loaded
            found = False
        _blas_seen = (n, found)
    return _blas_seen[1]


@dataclass(frozen=True)
class SystemInfo:
    """What autopar knows about the machine, read when asked (cheap)."""

    usable_cores: int
    logical_cores: int
    physical_cores: int
    total_memory: int
    available_memory: int
    cgroup_cpu_quota: float | None
    cgroup_memory_limit: int | None
    start_method: str
    gil_enabled: bool
    python: str
    platform: str
    blas: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_start_method() -> str:
    """The start method autopar uses when none is given (``AUTOPAR_START_METHOD`` overrides)."""
    method = os.environ.get("AUTOPAR_START_METHOD") or mp.get_start_method(allow_none=True)
    return method or mp.get_context().get_start_method()


@functools.lru_cache(maxsize=1)
def _static_facts() -> dict[str, Any]:
    """Facts that do not change while a process runs."""
    return dict(
        logical_cores=psutil.cpu_count(logical=True) or 1, physical_cores=psutil.cpu_count(logical=False) or 1,
        gil_enabled=_gil_enabled(), python=f"{platform.python_implementation()} {platform.python_version()}",
        platform=_platform(),
    )


def _platform() -> str:
    """System, release and machine (cheaper than ``platform.platform()``)."""
    if hasattr(os, "uname"):
        u = os.uname()
        return f"{u.sysname}-{u.release}-{u.machine}"
    return platform.platform()


def system_info(*, blas: bool = True) -> SystemInfo:
    """What autopar sees of the machine. ``blas=False`` skips scanning the loaded BLAS
    libraries (a few ms), which the optimizer does not need; ``blas`` is then empty."""
    vm = psutil.virtual_memory()
    mem_limit = _cgroup_memory_limit()
    available = vm.available if mem_limit is None else min(vm.available, mem_limit)
    quota = _cgroup_cpu_quota()
    return SystemInfo(
        usable_cores=_usable_cores(quota), total_memory=vm.total, available_memory=available,
        cgroup_cpu_quota=quota, cgroup_memory_limit=mem_limit, start_method=default_start_method(),
        blas=_blas_pools() if blas else (), **_static_facts(),
    )
