"""What the sample measured: :class:`Profile`, the figures the model decides on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Profile"]


@dataclass(frozen=True)
class Profile:
    """What the sample measured. Times in seconds, sizes in bytes, per item unless named.

    ``*_pickle_time`` is a dumps + loads round trip; ``*_load_time`` the loads part of it.
    """

    n_sampled: int
    n_probed: int
    n_items: int | None
    item_time_mean: float
    item_time_std: float
    item_time_max: float
    cpu_ratio: float
    func_bytes: int
    func_pickle_time: float
    item_bytes: float
    item_pickle_time: float
    result_bytes: float
    result_pickle_time: float
    transport: str | None
    pickle_error: str | None
    peak_memory_per_item: int
    thread_scaling: float | None
    probe_threads: int
    sample_time: float
    exhausted: bool
    item_load_time: float = 0.0
    result_load_time: float = 0.0
    probe_rounds: int = 0
    items_shared: bool = False  # every sampled item is one and the same object
    single_blas_time: float | None = None  # item time with BLAS at one thread, where faster (or, beside others' work, not slower)
    blas_live: bool = False  # a BLAS pool of several threads was loaded and running: probes and thread pools cap it
    # A pipeline's stages: each one's (wall, CPU) seconds an item, and its output's bytes (inf: unpicklable).
    stage_times: tuple[tuple[float, float], ...] = ()
    stage_bytes: tuple[float, ...] = ()
    warmup_time: float | None = None  # the first item's time where it was a one-time cost
    others_cores: float = 0.0  # the cores other processes kept busy while the sample ran

    @property
    def n_done(self) -> int:
        return self.n_sampled + self.n_probed

    @property
    def n_remaining(self) -> int | None:
        if self.exhausted:
            return 0
        return None if self.n_items is None else max(self.n_items - self.n_done, 0)

    @property
    def item_time_cv(self) -> float:
        return self.item_time_std / self.item_time_mean if self.item_time_mean > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
