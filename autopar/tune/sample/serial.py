"""The serial sample: timed batches on the calling thread until the budget is spent (doubling
while items are fast), and the item figures they give (:func:`item_stats`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...backends.worker import Span, run_items
from .. import constants
from ..measure import CpuMeter
from .remote import _timed_remote

if TYPE_CHECKING:
    from .sampler import _Sampler


@dataclass
class _Stats:
    mean: float
    std: float
    tmax: float
    cpu_ratio: float
    reference: float  # the robust mean, for the probe
    own_ratio: float  # the calling thread's CPU / wall alone (no native threads counted)


def share_of(sp: "_Sampler", work: float, cap: float) -> float:
    """Seconds a sample step may take of ``work`` seconds of serial work: SAMPLE_SHARE of it,
    at least the floor ``min_budget``, at most ``cap``. On a machine of more cores than
    TUNED_CORES share and floor shrink by their ratio: the job's time on the cores shrinks
    so, and every core but the sample's waits while it runs."""
    spread = max(sp.cores, constants.TUNED_CORES) / constants.TUNED_CORES
    return min(cap, max(sp.min_budget, constants.SAMPLE_SHARE * work) / spread)


def _target(sp: "_Sampler", mean: float) -> float:
    work = constants.UNKNOWN_SECONDS if sp.n_total is None else sp.n_total * mean
    return share_of(sp, work, sp.budget)


def serial_batches(sp: "_Sampler") -> None:
    """Timed batches, doubling while items take under 1 ms, until the budget is spent."""
    first = sp.first
    min_timed = 0 if first.waiting else (2 if first.time < 0.005 else 1)
    batch_size = 1
    while not sp.src.done:
        timed = sp.timings.n_timed
        mean = sp.timings.seconds / timed if timed else first.time
        if sp.n_total is not None and sp.kept.done >= sp.n_total:
            break
        elapsed = time.perf_counter() - sp.t_begin
        target = _target(sp, mean)
        # The first item stands alone only when longer than the budget, and not a one-time cost.
        stands = first.time >= sp.budget and not first.warmup
        if (elapsed >= target or first.waiting) and (timed >= min_timed or stands):
            break
        if sp.n_total is not None:
            left = sp.n_total - sp.kept.done
            batch_size = min(batch_size, left)
            if sp.finish and batch_size < left <= constants.FINISH_SEEN * timed and left * mean < constants.MIN_SAVING:
                # Under MIN_SAVING of work left the model ranks no pool: the sample runs the rest.
                batch_size = left
        batch = sp.src.span(batch_size)
        if not batch:
            break
        if sp.remote is not None:
            if not _timed_remote(sp, batch):
                break
            batch_size = batch_size * 2 if sp.timings.batches[-1][1] / len(batch) < 1e-3 else 1
            continue
        dt = _timed_batch(sp, batch, batch_size * mean >= 1e-3)
        batch_size = batch_size * 2 if dt / len(batch) < 1e-3 else 1


def _timed_batch(sp: "_Sampler", batch: "list[Any] | Span", attribute: bool) -> float:
    """Run one serial batch on the calling thread, keep and time it; its wall seconds."""
    meter = CpuMeter(attribute=attribute, exclude=sp.not_ours() if attribute else frozenset())
    with sp.memory.watched() as mem:
        meter.start()
        out, failed = run_items(sp.func, sp.kept.done, batch, sp.collect, remote=False, out=sp.kept.results)
        dt, do, dc = meter.stop()
    sp.kept.fail(failed, "serial (sample)")
    sp.memory.record(mem, len(batch))
    sp.kept.keep(batch, out)
    pos = sp.kept.done - (len(batch) + 1) / 2  # keep() counted them
    if dt >= 1e-3:  # long enough for the CPU clock to mean something
        active = CpuMeter.active(dt, meter.queued, do)  # less the wait for a core
        sp.timings.add(len(batch), dt, pos, dc / active, min(do, dc) / active)
    else:
        sp.timings.add(len(batch), dt, pos)
    return dt


def _run_serially(sp: "_Sampler", items: list[Any]) -> bool:
    """Run ``items`` on the calling thread and keep them; whether any failed (collected)."""
    out, failed = run_items(sp.func, sp.kept.done, items, sp.collect, remote=False)
    sp.kept.fail(failed, "serial (sample)")
    sp.kept.keep(items, out)
    return bool(failed)


def item_stats(sp: "_Sampler") -> _Stats:
    timings, first = sp.timings, sp.first
    timed = timings.n_timed
    if not timed:  # only the first item ran
        t, active = first.time, first.active
        ratio, own = (first.cpu / active, first.own / active) if t > 0 else (1.0, 1.0)
        return _Stats(t, 0.0, t, ratio, t, own)
    batches, ratios, own_ratios = timings.batches, timings.ratios, timings.own_ratios
    mean = timings.seconds / timed
    var = sum(b * (t / b - mean) ** 2 for b, t in batches) / len(batches)
    tmax = max(max(t / b for b, t in batches), 0.0 if first.warmup else first.time)
    ratio = sorted(ratios)[(len(ratios) - 1) // 2] if ratios else 1.0
    own = sorted(own_ratios)[(len(own_ratios) - 1) // 2] if own_ratios else ratio
    reference = _robust_mean(batches) or mean
    ahead = _growing_mean(batches, timings.batch_pos, sp.kept.done, sp.n_total, mean)
    if ahead > mean:  # the items not run yet, if the trend goes on; the probe runs those
        var += (ahead - mean) ** 2
        mean, tmax, reference = ahead, max(tmax, ahead), ahead
    return _Stats(mean, math.sqrt(var), tmax, ratio, reference, own)


def _robust_mean(batches: list[tuple[int, float]]) -> float | None:
    """Mean item time with outliers (over 3x the median, noise on a shared machine) left out."""
    if not batches:
        return None
    per_item = sorted(t / b for b, t in batches)
    median = per_item[len(per_item) // 2]
    kept = [(b, t) for b, t in batches if t / b <= 3 * median]
    return sum(t for _, t in kept) / sum(b for b, _ in kept)


def _growing_mean(
    batches: list[tuple[int, float]], positions: list[float], done: int, n_total: int | None, mean: float
) -> float:
    """Mean item time over the items not run yet where the timed batches (items, seconds; at
    ``positions`` in the input) show items growing along the input (a linear trend of
    R^2 >= GROWTH_FIT over GROWTH_POINTS batches or more, to GROWTH_FACTOR times the mean
    so far or more, that holds with any one batch left out); else ``mean``."""
    n, pts = n_total, [(pos, b, t / b) for pos, (b, t) in zip(positions, batches)]
    if n is None or n <= done or len(pts) < constants.GROWTH_POINTS:
        return mean
    fit = _trend(pts)
    # One long item among short ones (sizes of a heavy tail, in no order) makes a trend of
    # the batch it falls in; items that grow along the input show it without any one batch.
    if fit is None or any(_trend(pts[:i] + pts[i + 1:]) is None for i in range(len(pts))):
        return mean
    slope, mx, my = fit
    ahead = my + slope * ((done + n - 1) / 2 - mx)
    return ahead if ahead >= constants.GROWTH_FACTOR * mean else mean


def _trend(pts: list[tuple[float, int, float]]) -> tuple[float, float, float] | None:
    """A rising linear trend of per-item time along the input, weighted by batch size, of
    R^2 >= GROWTH_FIT: (slope, mean position, mean item time); None where there is none."""
    w = [b for _, b, _ in pts]
    x = [pos for pos, _, _ in pts]
    y = [t for _, _, t in pts]
    W = sum(w)
    mx = sum(wi * xi for wi, xi in zip(w, x)) / W
    my = sum(wi * yi for wi, yi in zip(w, y)) / W
    sxx = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x))
    syy = sum(wi * (yi - my) ** 2 for wi, yi in zip(w, y))
    sxy = sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, y))
    if sxx <= 0 or syy <= 0 or sxy <= 0 or sxy * sxy < constants.GROWTH_FIT * sxx * syy:
        return None
    return sxy / sxx, mx, my
