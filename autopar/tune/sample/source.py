"""Where the sample takes its items from (:class:`_Source`), and :func:`known_length`, the
input's length where it can be known without reading it."""

from __future__ import annotations

import operator
from itertools import islice
from typing import Any, Iterable

from ...backends.worker import Span

__all__ = ["known_length", "one_shot"]


def known_length(data: Any, n_items: int | None) -> int | None:
    if n_items is not None:
        return n_items
    try:
        return len(data)
    except TypeError:
        pass
    hint = operator.length_hint(data, -1)
    return hint if hint > 0 else None


def one_shot(data: Any) -> bool:
    """An iterator: iterating it takes its items (``iter()`` of it is itself, and has no
    effect on it)."""
    try:
        return iter(data) is data
    except Exception:  # (not iterable; a closed file)
        return False


class _Source:
    """Where the sample takes items from. Lists and tuples are sliced (a copy of pointers),
    anything else goes through ``islice``; items taken ahead and not run go back in front."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data
        self.it = iter(data)
        self.one_shot = self.it is data
        self.seq = data if type(data) in (list, tuple) else None
        self.pos = 0
        self.exhausted = False
        self.error: Exception | None = None  # what the input raised, if it did
        self.ahead: list[Any] = []

    def pull(self, n: int) -> list[Any]:
        head, self.ahead = self.ahead[:n], self.ahead[n:]
        n -= len(head)
        if n <= 0:
            return head
        if self.seq is not None:
            batch = self.seq[self.pos : self.pos + n]
            batch = list(batch) if type(batch) is tuple else batch
            self.pos += len(batch)
        else:
            batch = []
            try:
                batch.extend(islice(self.it, n))  # what was read before an error stays
            except Exception as exc:  # the input itself failed: the run raises it after these
                self.error = exc
                self.exhausted = True
        self.exhausted = self.exhausted or len(batch) < n
        return head + batch if head else batch

    def span(self, n: int) -> "list[Any] | Span":
        """The next ``n`` items, uncopied where the input is a list or tuple and nothing was put back."""
        if self.seq is None or self.ahead:
            return self.pull(n)
        part = Span(self.seq, self.pos, min(n, len(self.seq) - self.pos))
        self.pos += len(part)
        self.exhausted = self.exhausted or len(part) < n
        return part

    def push_back(self, items: list[Any]) -> None:
        self.ahead[:0] = items

    @property
    def done(self) -> bool:
        """Nothing left to pull: the input ended and nothing was put back."""
        return self.exhausted and not self.ahead
