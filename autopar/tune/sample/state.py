"""What the sample's steps found, in small objects, each written by one owner; the sampler
(:class:`~autopar.tune.sample.sampler._Sampler`) holds one of each.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

from ...backends.worker import Span
from ...errors import ItemFailed, settle
from ..measure import PeakRSS

__all__ = ["BlasReading", "FirstItem", "Kept", "Memory", "Timings"]


class Kept:
    """Every item the sample or the probe ran, with its result, in input order: for the
    profile's counts and the :class:`~autopar.tune.sample.stash.SampleStash`."""

    def __init__(self, collect: bool) -> None:
        self.collect = collect
        self.item_blocks: list[list[Any] | Span] = []  # items in blocks, one per batch
        self.results: list[Any] = []  # one list: execute() adopts it, no join of blocks
        self.failures: list[int] = []  # indices of the items that failed (collect mode)
        self.done = 0
        self.n_probed = 0  # of ``done``, the items the probe ran

    def keep(self, items: "list[Any] | Span", results: list[Any], probed: bool = False) -> None:
        self.item_blocks.append(items)
        if results is not self.results:  # serial batches write into it directly
            self.results.extend(results)
        self.done += len(items)
        if probed:
            self.n_probed += len(items)

    def fail(self, failed: list[Any], where: str) -> None:
        """Items that failed where the sample ran them: raised, or (collect mode) kept."""
        self.failures += settle(failed, where, self.collect)

    def settled(self, results: list[Any]) -> None:
        """Items that failed among ``results`` settled already (the probe's, collecting): kept."""
        if self.collect:
            self.failures += [r.index for r in results if isinstance(r, ItemFailed)]


class Timings:
    """The timed items: (items, seconds) per batch, where each lies in the input, and the CPU
    over wall time of batches long enough to tell."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float]] = []  # timed (items, seconds)
        self.batch_pos: list[float] = []  # each timed batch's middle position in the input
        self.ratios: list[float] = []  # the function's CPU / wall of batches long enough to tell
        self.own_ratios: list[float] = []  # the calling thread's alone, of the same batches

    def add(self, n: int, seconds: float, pos: float, ratio: float | None = None, own: float | None = None) -> None:
        self.batches.append((n, seconds))
        self.batch_pos.append(pos)
        if ratio is not None:
            self.ratios.append(ratio)
        if own is not None:
            self.own_ratios.append(own)

    @property
    def n_timed(self) -> int:
        return sum(b for b, _ in self.batches)

    @property
    def seconds(self) -> float:
        return sum(t for _, t in self.batches)


@dataclass
class FirstItem:
    """The first item's figures (seconds), and what the items run beside it showed."""

    time: float = 0.0
    cpu: float = 0.0
    own: float = 0.0
    active: float = 0.0  # the first item's wall time less its wait for a core
    end: float = 0.0
    warmup: bool = False  # the first call's one-time cost held up an item beside it
    waiting: bool = False  # an item that mostly waits: the thread probe measures it better
    ahead_round: tuple[float, int, int] | None = None  # run ahead at once: (scaling, threads, items)


class Memory:
    """Peak resident memory an item: the first item's growth, then one batch or probe round
    watched by the RSS poller where items are long enough (``watch``)."""

    def __init__(self) -> None:
        self.peak = 0
        self.watch = False

    def watched(self) -> ContextManager[Any]:
        return PeakRSS() if self.watch else nullcontext()

    def record(self, mem: Any, n: int) -> None:
        """``n`` items ran under ``watched()``'s poller ``mem``: their peak, once."""
        if self.watch:
            self.peak, self.watch = max(self.peak, mem.peak // n), False


@dataclass
class BlasReading:
    single_time: float | None = None  # item time with BLAS at one thread (the BLAS step)
    live: bool = False  # a BLAS pool of several threads was loaded and running (the probe)
