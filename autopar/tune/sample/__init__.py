"""Sample the work: run a few items serially, then a few on threads at once, and measure.

The steps, each in a module of its own, taken in order by :class:`~.sampler._Sampler`::

    source ──► first item ──► serial batches ──► item stats ──► pickling ──► probe ──► assemble
    (_Source:   (warm-up, RSS   (doubling while    (robust mean,  (func, first,  (k threads,   Profile +
     pull,       growth, maybe   items < 1 ms,      spread, CPU    middle, last   rounds until  SampleStash
     push back)  one item run    CPU per batch)     ratio)         item/result)   clear)
                 ahead)

:mod:`.source` (pulling items, putting them back), :mod:`.warmup` (the first item, items run
ahead beside it, warm-up detection), :mod:`.serial` (timed batches, item figures),
:mod:`.pickling`, :mod:`.blas` (BLAS capped), :mod:`.probe` (the concurrency probe),
:mod:`.remote` (the items in a worker process), :mod:`.state` (what the steps found),
:mod:`.profile` and :mod:`.stash` (what the sample hands on); :mod:`.sampler` takes the steps
in order. The tuned constants are in :mod:`autopar.tune.constants`.

The serial sample grows until a time budget is spent (``budget`` seconds, or ``SAMPLE_SHARE``
of the estimated total when the item count is known, whichever is smaller, never below
``min_budget``). On 2 cores a serial share f of the job costs about f of the parallel run's
time, so the share is kept small. A thread polls the resident memory while the second item,
or for items too long for that the first probe round, runs; the first item is left out of the
timing figures when other items were timed (it pays the warm-up).

The item's CPU time is the calling thread's, plus threads the function starts, plus native
helper threads (BLAS) while the calling thread computes too; see
:class:`~autopar.tune.measure.CpuMeter`. Library threads spinning in the background do not
make a sleeping item CPU-bound.

The **concurrency probe** (only when threads are candidates) runs the next items on ``k``
threads at once, in rounds until the scaling is clear (see :mod:`.probe`). In a short job
where threads are candidates, items run ahead beside the first (see :mod:`.warmup`).

Every item the sample or the probe ran is kept with its result in a :class:`SampleStash`, so
``execute()`` neither loses items of a one-shot iterator nor computes them twice. The stash
never holds a one-shot iterator itself (it would keep it alive through the registry of
pending results): ``execute()`` passes the same iterator back.
"""

from __future__ import annotations

from .profile import Profile
from .sampler import sample
from .source import known_length
from .stash import SampleStash

__all__ = ["Profile", "SampleStash", "sample", "known_length"]
