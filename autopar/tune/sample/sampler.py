"""The sampler: the steps in order over one input (each in its module), and :func:`sample`."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from ...backends.worker import Limited
from .. import constants
from ..measure import LeftSpinning, OthersMeter, native_cpu
from .blas import _blas_step
from .pickling import _Pickling, _pickling_step
from .probe import _misread_is_cheap, _probe_step
from .profile import Profile
from .remote import RemoteItems
from .serial import _Stats, item_stats, serial_batches
from .source import _Source, known_length
from .stash import SampleStash
from .state import BlasReading, FirstItem, Kept, Memory, Timings
from .warmup import first_item

__all__ = ["sample"]


class _Sampler:
    """One sample of ``func`` over ``data``; ``run()`` takes the steps in order. The caller's
    settings are set once; what the steps find is in ``src`` and the :mod:`.state` objects."""

    def __init__(
        self, func: Callable[..., Any], data: Iterable[Any], n_items: int | None, budget: float, min_budget: float,
        probe_threads: int, probe: bool, collect: bool, finish: bool = False, timeout: float | None = None,
        remote: RemoteItems | None = None, cores: int = constants.TUNED_CORES,
    ) -> None:
        self.t_begin = time.perf_counter()
        # Other processes' use of the cores meanwhile (not beside our own worker process).
        self.others = OthersMeter() if remote is None else None
        # Native threads running before the function did: not its work (a BLAS pool spinning).
        self.spinning = LeftSpinning() if remote is None else None
        # What native threads (a BLAS pool) have run so far: whether they run beside the items.
        self.native_cpu0 = native_cpu() if remote is None else None
        self.finish = finish
        self.func = Limited(func, timeout) if timeout is not None else func
        self.user_func, self.data, self.remote = func, data, remote
        self.budget, self.min_budget = budget, min_budget
        self.cores = cores  # usable cores: the budgets' share of the job shrinks with more (serial.share_of)
        self.probe_threads, self.probe_wanted, self.collect = probe_threads, probe, collect
        self.src = _Source(data)
        self.n_total = known_length(data, n_items)
        self.kept = Kept(collect)
        self.timings = Timings()
        self.first = FirstItem()
        self.memory = Memory()
        self.blas = BlasReading()

    def run(self) -> tuple[Profile, SampleStash]:
        if self.first_item():
            self.serial_batches()
        stats = self.item_stats()
        pickling = _pickling_step(self)
        self.blas.single_time, stats = _blas_step(self, stats)
        scaling, k_used, rounds = _probe_step(self, stats, _misread_is_cheap(pickling, stats))
        return self.assemble(stats, pickling, scaling, k_used, rounds)

    def not_ours(self) -> frozenset[int]:
        """Native threads whose CPU is not the function's now (see LeftSpinning)."""
        return self.spinning.now() if self.spinning is not None else frozenset()

    def first_item(self) -> bool:
        return first_item(self)

    def serial_batches(self) -> None:
        serial_batches(self)

    def item_stats(self) -> _Stats:
        return item_stats(self)

    def assemble(self, stats: _Stats, pk: _Pickling, scaling: float | None, k_used: int, rounds: int) -> tuple[Profile, SampleStash]:
        exhausted = self.src.done
        kept = self.kept
        n_total = kept.done if exhausted else self.n_total
        profile = Profile(
            n_sampled=kept.done - kept.n_probed, n_probed=kept.n_probed, n_items=n_total, item_time_mean=stats.mean,
            item_time_std=stats.std, item_time_max=stats.tmax, cpu_ratio=stats.cpu_ratio, func_bytes=pk.func_bytes,
            func_pickle_time=pk.func_time, item_bytes=pk.item_bytes, item_pickle_time=pk.item_time,
            result_bytes=pk.result_bytes, result_pickle_time=pk.result_time, transport=pk.transport,
            pickle_error=pk.error, peak_memory_per_item=int(self.memory.peak), thread_scaling=scaling,
            probe_threads=k_used, sample_time=time.perf_counter() - self.t_begin, exhausted=exhausted,
            item_load_time=pk.item_load, result_load_time=pk.result_load, probe_rounds=rounds,
            items_shared=pk.items_shared, single_blas_time=self.blas.single_time, blas_live=self.blas.live,
            warmup_time=self.first.time if self.first.warmup else None,
            others_cores=self.others.cores() if self.others is not None else 0.0,
        )
        stash = SampleStash(
            func=self.user_func, data=self.data, one_shot=self.src.one_shot, item_blocks=kept.item_blocks,
            result_blocks=[kept.results] if kept.results else [], ahead=self.src.ahead, exhausted=exhausted,
            failures=kept.failures, input_error=self.src.error,
        )
        return profile, stash


def sample(
    func: Callable[..., Any], data: Iterable[Any], *, n_items: int | None = None, budget: float = 0.2,
    min_budget: float = 0.01, probe_threads: int = 2, probe: bool = True, collect: bool = False, finish: bool = False,
    timeout: float | None = None, in_process: str | None = None, cores: int | None = None,
) -> tuple[Profile, SampleStash]:
    """Run a sample of ``data`` through ``func`` and measure it; see :mod:`autopar.tune.sample`.

    ``probe=False``: nothing on helper threads (no item run ahead, no thread probe).
    ``finish``: a rest under ``MIN_SAVING`` of work runs in the sample. ``timeout``: each
    item's time limit. ``in_process``: a start method; the items run in a worker process.
    ``cores``: the usable cores (TUNED_CORES if not given); the sample's share of the job
    shrinks with more (:func:`.serial.share_of`).
    """
    cores = cores or constants.TUNED_CORES
    if in_process is None:
        return _Sampler(
            func, data, n_items, budget, min_budget, probe_threads, probe, collect, finish, timeout, cores=cores
        ).run()
    remote = RemoteItems(func, in_process, collect, timeout)
    try:
        sampler = _Sampler(
            func, data, n_items, budget, min_budget, probe_threads, False, collect, False, remote=remote, cores=cores
        )
        return sampler.run()
    except BaseException:
        remote.broken = True  # (Ctrl-C, an item's error): the worker is killed, not waited for
        raise
    finally:
        remote.close()
