"""What pickling costs: the function (always cloudpickle), and the first, middle and last
item and result the sample ran (dumps + loads, bytes), for the model's process candidates."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import _serialize

if TYPE_CHECKING:
    from .sampler import _Sampler


@dataclass
class _Pickling:
    transport: str | None
    error: str | None
    func_bytes: int = 0
    func_time: float = 0.0
    item_bytes: float = 0.0
    item_time: float = 0.0
    item_load: float = 0.0
    result_bytes: float = 0.0
    result_time: float = 0.0
    result_load: float = 0.0
    items_shared: bool = False


def _pickling_step(sp: "_Sampler") -> _Pickling:
    """The function (always cloudpickle) and the first, middle and last (item, result)."""
    fmethod, fbytes, ftime, _, ferr = _serialize.measure(sp.user_func, allow_plain=False)
    out = _Pickling(None, None, fbytes, ftime)
    blocks = sp.kept.item_blocks
    nb = len(blocks)
    picks = sorted({(0, 0), (nb // 2, 0), (nb - 1, len(blocks[-1]) - 1)}) if nb else []
    if nb and blocks[0][0] is blocks[-1][-1]:
        picks = picks[:1]  # one object passed as every item (``[buf] * n``): measured once
    item_method: str | None = _serialize.PICKLE
    result_method: str | None = _serialize.PICKLE
    errors = [f"function: {ferr}"] if ferr else []
    work = sp.first.time + sp.timings.seconds  # seconds of items run so far
    measured = 0
    for b, j in picks:
        if measured and out.item_time + out.result_time > 0.25 * work:
            break  # pickling costs more than a quarter of the work: one pair tells enough
        i = sum(len(x) for x in blocks[:b]) + j
        m, size, secs, load, err = _serialize.measure(blocks[b][j])
        item_method = _serialize.worse(item_method, m)
        out.item_bytes, out.item_time, out.item_load = out.item_bytes + size, out.item_time + secs, out.item_load + load
        if err:
            errors.append(f"item {i}: {err}")
        m, size, secs, load, err = _serialize.measure(sp.kept.results[i])
        result_method = _serialize.worse(result_method, m)
        out.result_bytes, out.result_time = out.result_bytes + size, out.result_time + secs
        out.result_load += load
        if err:
            errors.append(f"result of item {i}: {err}")
        measured += 1
    n = max(measured, 1)
    for name in ("item_bytes", "item_time", "item_load", "result_bytes", "result_time", "result_load"):
        setattr(out, name, getattr(out, name) / n)
    out.transport = _serialize.worse(item_method, result_method) if fmethod is not None else None
    out.error = "; ".join(errors) or None
    # One object passed as every item (``[table] * n``) is pickled once per chunk (pickle's memo).
    items = itertools.chain.from_iterable(blocks)
    first = next(items, None)
    out.items_shared = sp.kept.done >= 2 and all(x is first for x in items)
    return out
