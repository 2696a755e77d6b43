"""The sample's results, handed to ``execute()`` only where they belong to its items: the very
object optimize() sampled, and (unless a one-shot iterator) its first items, read again, the
items the sample ran: values that cannot change (numbers, strings, bytes, paths, tuples of
them) the same or equal, arrays of the same checksum, anything else pickled the same as when
the sample ran it (a list item changed in place is the same object with other contents).
"""

from __future__ import annotations

import operator
import pickle
import threading
import time
import weakref
import zlib
from decimal import Decimal
from fractions import Fraction
from itertools import chain, islice
from pathlib import PurePath
from typing import Any, Callable, Iterator

from ...backends.worker import take_some

__all__ = ["SampleStash", "same_items", "snapshots", "within"]


class _Checked:
    """A NumPy array item as it was when the sample ran it: shape, dtype and checksum."""

    __slots__ = ("shape", "dtype", "crc")

    def __init__(self, a: Any) -> None:
        self.shape, self.dtype, self.crc = a.shape, a.dtype, _crc(a)

    def same(self, b: Any) -> bool:
        return self.crc is not None and type(b).__module__ == "numpy" and getattr(b, "shape", None) == self.shape and b.dtype == self.dtype and _crc(b) == self.crc


def _crc(a: Any) -> int | None:
    if a.dtype.hasobject:
        return None  # object arrays: never proven the same
    import numpy as np

    return zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))


# Values that cannot change after the sample ran them (exact types: a subclass may add state).
_FROZEN = frozenset({int, float, complex, str, bytes, bool, type(None), range, Decimal, Fraction})
# Pickled snapshots of changeable items, at most this many bytes for one sample (beyond it the
# sampled items run again: a second run of the sample costs less than proving it).
SNAPSHOT_BYTES = 8 << 20


class _Pickled:
    """A changeable item as it was when the sample ran it: its pickle."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Unproven:
    """An item that could have changed and cannot be compared (it does not pickle): never the same."""

    __slots__ = ()


def _frozen(item: Any, depth: int = 0) -> bool:
    t = type(item)
    if t in _FROZEN or (t.__module__ == "pathlib" and isinstance(item, PurePath)):
        return True
    if t is tuple or t is frozenset:
        return depth < 3 and all(_frozen(x, depth + 1) for x in item)
    # NumPy scalars, but not a structured array's element (np.void: a view into its array)
    return t.__module__ == "numpy" and t.__name__ != "void" and any(b.__name__ == "generic" and b.__module__ == "numpy" for b in t.__mro__)


def _pickled_to_prove(item: Any) -> bool:
    """An item proven unchanged only by its pickle (not a value that cannot change, not an array)."""
    return not _frozen(item) and not (type(item).__module__ == "numpy" and getattr(item, "ndim", 0) >= 1)


def snapshots(items: list[Any], late: Callable[[], bool]) -> list[Any]:
    """The sampled items as they are now: values that cannot change as they are, arrays by
    checksum, anything else by its pickle (``_Unproven`` past SNAPSHOT_BYTES, once ``late()``,
    or unpicklable)."""
    out: list[Any] = []
    room = SNAPSHOT_BYTES
    for item in items:
        if _frozen(item):
            out.append(item)
        elif not _pickled_to_prove(item):
            out.append(_Checked(item))
        elif room <= 0 or late():
            out.append(_Unproven())
        else:
            try:
                data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                out.append(_Unproven())
                continue
            room -= len(data)
            out.append(_Pickled(data) if room >= 0 else _Unproven())
    return out


def within(budget: float) -> Callable[[], bool]:
    """A clock for :func:`snapshots`: True once this thread has spent ``budget`` CPU seconds
    (CPU, not wall: a busy machine's pre-emption is not pickling's cost)."""
    t0 = time.thread_time()
    return lambda: time.thread_time() - t0 > budget


def _same(kept: Any, item: Any) -> bool:
    t = type(kept)
    if t is _Pickled:
        try:
            return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) == kept.data
        except Exception:
            return False
    if t is _Checked:
        return kept.crc is not None and kept.same(item)
    if t is _Unproven:
        return False
    if kept is item:
        return True
    if t is not type(item):
        return False
    try:  # equal is not enough: (1,) == (1.0,), 0.0 == -0.0
        return pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL) == pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False


def same_items(kept: list[Any], head: Any) -> bool:
    """``head`` (items read again) are the ones ``kept`` (:func:`snapshots`) was taken of."""
    if len(head) != len(kept):
        return False
    if all(map(operator.is_, kept, head)):  # the same values that cannot change: at C speed
        return True
    if any(type(k) is _Unproven for k in kept):
        return False
    return all(map(_same, kept, head))


def _is_array(data: Any) -> bool:
    return type(data).__module__ == "numpy" and hasattr(data, "dtype") and getattr(data, "ndim", 0) >= 1


def _raising(error: Exception | None) -> Iterator[Any]:
    """An input's end: nothing, or the exception the input raised there."""
    if error is not None:
        raise error
    yield from ()


class SampleStash:
    """Items already run by the sample and their results, kept for ``execute()``.

    ``claim()`` hands the results out once, and only for the items they were made from. A
    one-shot iterator's items are kept too: with another function they run again.
    """

    def __init__(
        self, func: Callable[..., Any], data: Any, one_shot: bool, item_blocks: list[Any], result_blocks: list[list[Any]],
        ahead: list[Any], exhausted: bool, failures: list[int], input_error: Exception | None = None,
    ) -> None:
        self.func = func
        self.one_shot = one_shot
        items = list(chain.from_iterable(item_blocks))  # a Span reads the live list: copy
        self.n_done = len(items)
        self.items = items  # as run; freeze() keeps what they are when the caller gets them back
        self.block: _Checked | None = None
        self.frozen = False
        self.result_blocks = result_blocks
        self.ahead = ahead  # a one-shot iterator's items taken but not run: they go first
        self.exhausted = exhausted
        self.failures = failures
        self.input_error = input_error  # a one-shot input that raised: raised again after the rest
        self._used = False
        self._lock = threading.Lock()
        try:
            ref = weakref.ref(data)
            self._data: Callable[[], Any] = ref
        except TypeError:  # lists, tuples, ranges: held (an id alone passes to the next object)
            self._data = lambda: data

    def freeze(self, data: Any, budget: float, per_item: float = 0.0) -> None:
        """The sampled items as they are now, before optimize() hands them back to its caller
        (who may change them before execute()): an array's sampled rows by one checksum,
        other items one by one (:func:`snapshots`). Pickling past ``budget`` seconds (half
        the sampled items' own time) proves nothing worth its cost: the claim runs them again.
        Where the sample's own figure for pickling an item (``per_item``) says the items that
        need it would pass the budget, none is pickled (one unproven item reruns them all:
        sorting 1 MB lists spent 199 ms of a 440 ms optimize() pickling, then ran them again).
        Inside execute() nothing comes between sample and claim: no snapshot is taken."""
        if self.one_shot or self.frozen:
            return
        self.frozen = True
        if _is_array(data):
            self.block, self.items = _Checked(data[: self.n_done]), []
            return
        if per_item * sum(map(_pickled_to_prove, self.items)) > budget:
            self.items = [_Unproven()] * self.n_done
            return
        self.items = snapshots(self.items, within(budget))

    def matches(self, data: Any) -> bool:
        """The object optimize() sampled, not yet claimed (its items are checked on claim)."""
        return not self._used and self._data() is data

    def claim(self, func: Callable[..., Any], data: Any) -> tuple[list[list[Any]], Iterator[Any]] | None:
        """(result blocks to hand back first, iterator over the items still to run), once;
        None where ``data`` is not what was sampled (run it all, from its start)."""
        with self._lock:
            if not self.matches(data):
                return None
            self._used = True
        if self.one_shot:
            rest: Iterator[Any] = chain(self.ahead, data) if self.ahead else data
            if self.exhausted:  # (nothing left in the input, or it raised)
                rest = chain(self.ahead, _raising(self.input_error))
            if func is not self.func:  # another function: the kept items run again, then the rest
                return [], chain(self.items, rest)
            return self._hand_over(), rest
        if func is not self.func:
            return [], iter(data)
        if not self.frozen:  # within one execute(): the items the sample just ran
            it = iter(data)
            next(islice(it, self.n_done, self.n_done), None)
            return self._hand_over(), it
        if self.block is not None:
            n = self.n_done
            if len(data) < n or not self.block.same(data[:n]):
                return [], iter(data)
            it = iter(data)
            next(islice(it, n, n), None)  # past the rows the sample ran
            return self._hand_over(), it
        it = iter(data)
        head, error = take_some(it, self.n_done)
        if error is not None or not same_items(self.items, head):
            return [], iter(data)
        return self._hand_over(), it

    def _hand_over(self) -> list[list[Any]]:
        """The result lists, given away: the caller may keep (and extend) them."""
        blocks, self.result_blocks = self.result_blocks, []
        return blocks


