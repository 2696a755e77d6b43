"""The one retry policy (:class:`Retry`, public as ``autopar.Retry``), of the Manager's calls
(``retry=``) and of ``execute(retries=, retry_backoff=)`` (:meth:`Retry.for_lost_items`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import WorkerDied

__all__ = ["Retry"]

# Never retried, whatever ``on`` says (nor an exception whose class has ``retryable = False``).
_NEVER = (asyncio.CancelledError, concurrent.futures.CancelledError)


@dataclass(frozen=True)
class Retry:
    """Attempts, exponential backoff with jitter, and which exceptions are worth another try.

    Attempt k (k = 1 for the first retry) waits ``min(max_backoff, backoff * 2**(k-1))``
    scaled by a random factor in ``[1 - jitter, 1]`` ("equal jitter": never longer than the
    bound, never all callers at once). Cancellation, and a call refused by an open circuit
    breaker (:class:`~autopar.service.policy.CircuitOpen`), are never retried.
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    on: tuple[type[BaseException], ...] = (Exception,)
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Retry(attempts=) must be an int >= 1, got {self.attempts!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("Retry(backoff=, max_backoff=) must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Retry(jitter=) must be within [0, 1], got {self.jitter!r}")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise TypeError(f"Retry(on=) takes exception types, got {self.on!r}")
        object.__setattr__(self, "on", on)

    @classmethod
    def for_lost_items(cls, retries: int, backoff: float) -> "Retry":
        """``execute(retries=, retry_backoff=)`` as a policy: items lost with a dead worker go
        again up to ``retries`` times, after ``backoff * 2**(k-1)`` seconds before retry k."""
        return cls(attempts=retries + 1, backoff=backoff, max_backoff=float("inf"), on=(WorkerDied,), jitter=0.0)

    def retries(self, exc: BaseException, attempt: int) -> bool:
        """Whether a call whose attempt number ``attempt`` (1-based) raised ``exc`` goes again."""
        if attempt >= self.attempts or isinstance(exc, _NEVER) or not getattr(exc, "retryable", True):
            return False
        return isinstance(exc, self.on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        bound = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return bound * (1.0 - self.jitter * self.rng.random())

    def delays(self) -> Iterator[float]:
        """The waits before each retry, in order (attempts - 1 of them)."""
        return (self.delay(k) for k in range(1, self.attempts))
