"""The BLAS step: native threads (a BLAS pool) beside the items, and BLAS capped for them.

Pools cap a BLAS pool at ``cores // n`` threads a worker. Where native threads computed
beside the sampled items, or may have, two more items are timed with BLAS at one thread
(:func:`_blas_step`); a BLAS pool of several threads running is capped on the probe's threads
as a thread pool caps it (:func:`_blas_live`, :func:`_blas_capped`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...backends.blas import blas_share, capped_blas
from .. import constants
from ..measure import native_threads
from ..system import threaded_blas_loaded
from .serial import _run_serially, _Stats

if TYPE_CHECKING:
    from .sampler import _Sampler


def _blas_step(sp: "_Sampler", stats: _Stats) -> tuple[float | None, _Stats]:
    """Native threads (a BLAS pool) computed beside the items, or may have: time two more
    with BLAS capped at one thread, as every pool of ``cores`` workers runs them. Small
    matrix work often runs faster so (an SVD of 220 x 220 took 2.6 ms on one OpenBLAS
    thread, 4.8 ms on two). Whether the pool's second thread shows in the CPU time varies
    (it spins or sleeps: the same SVD read CPU/wall 1.0-2.3), so with a multi-threaded BLAS
    loaded, computing items of a millisecond or more are timed so too. Returns the capped
    item time where capping made items faster (BLAS work: by 5% where native threads were
    seen beside them, 10% on suspicion), and the stats: where native
    threads seemed to compute beside the items but capping them changed nothing, they were
    not the items' (a BLAS pool spinning on after someone else's call: pure Python read
    CPU/wall 1.7), and the CPU ratio is the calling thread's own."""
    first = sp.first.cpu / sp.first.active if sp.first.time > 0 else 0.0
    native = max(first, stats.cpu_ratio) >= constants.NATIVE_THREADS
    left = None if sp.n_total is None else sp.n_total - sp.kept.done
    if (
        sp.remote is not None
        or sp.src.done
        or stats.mean < 1e-3
        or stats.cpu_ratio < constants.CPU_BOUND
        or (left is not None and left < constants.BLAS_STEP_MIN_ITEMS)
    ):
        return None, stats  # (two serial items of a short job cost more than they tell)
    if not native and (stats.cpu_ratio < constants.PURE_COMPUTE or not native_threads() or not threaded_blas_loaded()):
        # Work that waits times unevenly (file writes read 10% faster capped). A BLAS pool
        # that has not started its threads was not used: capping it would start them, and
        # they spin for about 0.1 s after (the probe after it read sha256 as x1.0).
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
    if per_item < (constants.NATIVE_FASTER if native else constants.BLAS_FASTER) * stats.mean:
        return per_item, stats
    if native and per_item * constants.BLAS_FASTER < stats.mean:  # capped, neither faster nor slower
        return None, replace(stats, cpu_ratio=min(stats.own_ratio, stats.cpu_ratio))
    return None, stats


def _blas_live(stats: _Stats) -> bool:
    """A BLAS pool of several threads is loaded and running beside computing items: the
    probe's threads and thread pools cap it (``Profile.blas_live``)."""
    return stats.cpu_ratio >= constants.CPU_BOUND and native_threads() > 0 and threaded_blas_loaded()


def _blas_capped(sp: "_Sampler", k: int) -> Any:
    """BLAS capped for a probe on k threads as a pool of k threads caps it: where the sample
    timed items so (native threads spinning beside each item would read as scaling), or a
    multi-threaded BLAS pool is running (``blas_live``)."""
    return capped_blas(blas_share(k)) if sp.blas.single_time or sp.blas.live else nullcontext()
