"""The BLAS step: where native threads (a BLAS pool) computed beside the items, or may have
(their CPU reads little, but they ran while the items did, or beside others' work on every
core), two more are timed with BLAS at one thread, as pools cap it (``cores // n`` a worker);
a running BLAS pool is capped on the probe's threads too.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...backends.blas import blas_share, capped_blas
from .. import constants
from ..measure import native_cpu_since, native_threads
from ..system import threaded_blas_loaded
from .serial import _run_serially, _Stats

if TYPE_CHECKING:
    from .sampler import _Sampler


def _blas_step(sp: "_Sampler", stats: _Stats) -> tuple[float | None, _Stats]:
    """Time two more items with BLAS capped at one thread where native threads computed
    beside them (or, with a multi-threaded BLAS loaded, may have: its threads ran at all
    while the items did, or others' work wanted every core). Returns the capped item
    time where that made items faster (beyond what the items' spread tells apart), or,
    beside others' work on every core, not slower; and the stats, with the calling thread's
    own CPU ratio where capping changed nothing (the native threads were not the items')."""
    first = sp.first.cpu / sp.first.active if sp.first.time > 0 else 0.0
    native = max(first, stats.cpu_ratio) >= constants.NATIVE_THREADS
    left = None if sp.n_total is None else sp.n_total - sp.kept.done
    # Seen computing, or beside others' work on every core (where a BLAS pool's threads wait
    # on each other behind it and its CPU reads nothing): worth two items of a short job.
    crowded = _crowded(sp)
    suspect = native or crowded
    if (
        sp.remote is not None
        or sp.src.done
        or stats.mean < 1e-3
        or stats.cpu_ratio < constants.CPU_BOUND
        or (left is not None and left < (constants.BLAS_STEP_MIN_NATIVE if suspect else constants.BLAS_STEP_MIN_ITEMS))
    ):
        return None, stats
    if not native and not crowded and _pool_idle(sp):
        # A BLAS pool whose threads did not run while the items did was not used by them
        # (beside others' work on every core they may wait behind it instead, reading
        # nothing: crowded is timed). Asked first: it costs no library scan.
        return None, stats
    if not native and (stats.cpu_ratio < constants.PURE_COMPUTE or not native_threads() or not threaded_blas_loaded()):
        # Work that waits times unevenly; a BLAS pool that has not started its threads was not used.
        return None, stats
    items = sp.src.pull(2)
    if not items:
        return None, stats
    with capped_blas(1):
        t0 = time.perf_counter()
        failed = _run_serially(sp, items)
        per_item = (time.perf_counter() - t0) / len(items)
    if failed:
        return None, stats
    # Faster beyond what two items of the sample's spread tell apart (items of a heavy tail
    # differ more than capping BLAS would change them).
    noise = 2.0 * stats.std / math.sqrt(len(items))
    if per_item < (constants.NATIVE_FASTER if native else constants.BLAS_FASTER) * stats.mean - noise:
        return per_item, stats
    if per_item <= stats.mean - noise and crowded:
        # Beside others' work a BLAS pool's items take their time or far longer (its threads
        # wait on each other behind the other work: 11 SVDs took 0.24-0.95 s beside three
        # spinning processes, 0.08-0.12 s capped); capped, and not slower beyond the items'
        # spread (pure Python of a heavy tail beside the load came out under its mean by
        # chance), they are kept so.
        return per_item, stats
    if native and per_item * constants.BLAS_FASTER < stats.mean:  # capped, neither faster nor slower
        return None, replace(stats, cpu_ratio=min(stats.own_ratio, stats.cpu_ratio))
    return None, stats


def _pool_idle(sp: "_Sampler") -> bool:
    """The native threads (a BLAS pool) ran under ``BLAS_IDLE`` of the time since the sample
    began: the items did not use them (a pool left spinning by an earlier call counts as
    running, so the step is timed as before)."""
    ran = native_cpu_since(sp.native_cpu0)
    return ran is not None and ran < constants.BLAS_IDLE * (time.perf_counter() - sp.t_begin)


def _crowded(sp: "_Sampler") -> bool:
    """Others' work wanted every usable core while the sample ran (as the probe's
    ``_saturated`` reads it)."""
    return sp.others is not None and sp.others.wanted() >= constants.OTHERS_SATURATED * sp.cores


def _blas_live(sp: "_Sampler", stats: _Stats) -> bool:
    """A BLAS pool of several threads is loaded and running beside computing items (not
    where its threads did not run while the items did: see :func:`_pool_idle`)."""
    return (
        stats.cpu_ratio >= constants.CPU_BOUND and native_threads() > 0 and not _pool_idle(sp) and threaded_blas_loaded()
    )


def _blas_capped(sp: "_Sampler", k: int) -> Any:
    """BLAS capped for a probe on k threads as a pool of k threads caps it, where the sample
    timed items so or a multi-threaded BLAS pool is running."""
    return capped_blas(blas_share(k)) if sp.blas.single_time or sp.blas.live else nullcontext()
