"""Sample the work: run a few items serially, then a few on threads at once, and measure.

The steps, each in a module of its own, taken in order by :class:`~.sampler._Sampler`::

    source ──► first item ──► serial batches ──► item stats ──► pickling ──► probe ──► assemble
    (_Source:   (warm-up, RSS   (doubling while    (robust mean,  (func, first,  (k threads,   Profile +
     pull,       growth, maybe   items < 1 ms,      spread, CPU    middle, last   rounds until  SampleStash
     push back)  one item run    CPU per batch)     ratio)         item/result)   clear)
                 ahead)

:mod:`.source`, :mod:`.warmup`, :mod:`.serial`, :mod:`.pickling`, :mod:`.blas` (BLAS capped),
:mod:`.probe`, :mod:`.remote` (the items in a worker process), :mod:`.state` (what the steps
found), :mod:`.profile` and :mod:`.stash` (what the sample hands on). The tuned constants are
in :mod:`autopar.tune.constants`. Every item the sample ran is kept with its result in a
:class:`SampleStash`, so ``execute()`` neither loses items of a one-shot iterator nor computes
them twice.
"""

from __future__ import annotations

from .profile import Profile
from .sampler import sample
from .source import known_length, one_shot
from .stash import SampleStash

__all__ = ["Profile", "SampleStash", "sample", "known_length", "one_shot"]
