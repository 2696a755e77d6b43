"""Errors autopar raises, and how a worker's exception reaches the caller: as its own type,
with a note naming the item index (also ``autopar_item_index``) and the executor, and a process
worker's traceback chained as ``__cause__`` (as ``concurrent.futures`` does)."""

from __future__ import annotations

import sys
from contextlib import suppress
from typing import Any

if sys.version_info < (3, 11):  # pragma: no cover - 3.10
    import exceptiongroup  # noqa: F401  (its import makes tracebacks print __notes__, as 3.11 does)

__all__ = [
    "AutoparError", "ItemFailed", "ItemTimeout", "RemoteTraceback", "WorkerDied", "WorkerError", "add_note", "annotate",
    "annotate_stage",
]


class AutoparError(Exception):
    """Base class of the errors autopar raises itself."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker process."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class WorkerError(AutoparError):
    """A worker exception that could not be sent back as itself (it does not pickle)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (WorkerError, (self.type_name, self.message))


class WorkerDied(AutoparError):
    """A worker process ended without returning (killed, crashed, or exited).

    ``items`` holds the indices of the items that were in flight on the pool when it broke.
    """

    def __init__(self, message: str, items: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.items = items

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (WorkerDied, (str(self), self.items))


class ItemTimeout(AutoparError, TimeoutError):
    """An item ran longer than the ``timeout`` given to execute()."""


class ItemFailed:
    """Stands in the results, with ``errors="collect"``, for an item whose function raised.

    ``index`` is the item's position in the input, ``exception`` what it raised, and
    ``traceback`` the worker's formatted traceback (empty for threads and serial runs, where
    the exception carries its own).
    """

    __slots__ = ("index", "exception", "traceback")

    def __init__(self, index: int, exception: BaseException, traceback: str = "") -> None:
        self.index = index
        self.exception = exception
        self.traceback = traceback

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (ItemFailed, (self.index, self.exception, self.traceback))

    def __repr__(self) -> str:
        return f"ItemFailed(index={self.index}, exception={self.exception!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemFailed) and other.index == self.index and (
            type(other.exception) is type(self.exception) and other.exception.args == self.exception.args
        )

    __hash__ = None  # type: ignore[assignment]


def annotate(exc: BaseException, index: int, where: str) -> BaseException:
    """Name the failing item on ``exc`` (a note and an attribute), once."""
    return _mark(exc, "autopar_item_index", index, f"autopar: raised by item {index} in a {where} worker")


def annotate_stage(exc: BaseException, stage: str) -> BaseException:
    """Name the pipeline stage ``exc`` came from (a note and an attribute), once."""
    return _mark(exc, "autopar_stage", stage, f"autopar: in pipeline stage {stage!r}")


def _mark(exc: BaseException, attr: str, value: Any, note: str) -> BaseException:
    if getattr(exc, attr, None) is not None:
        return exc
    with suppress(AttributeError, TypeError):
        setattr(exc, attr, value)
    add_note(exc, note)
    return exc


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; before Python 3.11, the same list by hand (``exceptiongroup``,
    a dependency there, prints it in tracebacks as 3.11 does)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        with suppress(AttributeError, TypeError):
            exc.__dict__.setdefault("__notes__", []).append(note)


def settle(failures: "list[tuple[int, BaseException, str]]", where: str, collect: bool) -> list[int]:
    """The one failure rule, wherever items run: name the item on each failure; raise the first
    unless collecting (``KeyboardInterrupt`` and the like always raise); the collected indices.
    ``failures``: ``(index, exception, remote traceback text)``, the text becoming ``__cause__``."""
    for index, exc, tb in failures:
        if tb and exc.__cause__ is None:
            exc.__cause__ = RemoteTraceback(tb)
        annotate(exc, index, where)
        if not collect or not isinstance(exc, Exception):
            raise exc
    return [index for index, _, _ in failures]


def unwrapped(exc: RuntimeError) -> BaseException:
    """The StopIteration an item raised, where leaving a generator of autopar's turned it
    into ``RuntimeError("generator raised StopIteration")`` (PEP 479); else ``exc``."""
    cause = exc.__cause__
    if isinstance(cause, StopIteration) and getattr(cause, "autopar_item_index", None) is not None:
        return cause
    return exc
