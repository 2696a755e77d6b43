"""A small asyncio service on autopar.Manager: requests arrive, each reads a TIFF stack (I/O),
computes its maximum projection's contrast limits (CPU), and writes a WebP preview (I/O).

    python examples/service.py

The manager routes each function by what its calls measured (``m.routes_info()`` says where
and why), retries a flaky read, keeps the event loop free, and counts everything.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

import autopar


def read_stack(path: str) -> np.ndarray:
    # A network share that drops a read now and then (SystemRandom: forked workers share the
    # parent's `random` state, and their failures would come in step).
    if random.SystemRandom().random() < 0.1:
        raise OSError(f"{path}: read failed, try again")
    return tifffile.imread(path)


def contrast_limits(stack: np.ndarray) -> tuple[float, float]:
    projection = stack.max(axis=0).astype(np.float64)
    total = 0.0
    for row in projection[::4]:  # some pure-Python work, as real code has
        total += sum(float(v) for v in row[::8])
    lo, hi = np.percentile(projection, [1, 99.5])
    return float(lo), float(hi) + total * 0.0


def write_preview(stack: np.ndarray, limits: tuple[float, float], out: str) -> str:
    lo, hi = limits
    image = np.clip((stack.max(axis=0) - lo) / max(hi - lo, 1e-9), 0, 1)
    Image.fromarray((image * 255).astype(np.uint8)).save(out, "WEBP", quality=80)
    return out


async def handle(m: autopar.Manager, path: Path, out: Path) -> str:
    stack = await m.run(read_stack, str(path), retry=autopar.Retry(attempts=4, backoff=0.01, on=(OSError,)))
    limits = await m.run(contrast_limits, stack)
    return await m.run_io(write_preview, stack, limits, str(out))


async def main(folder: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        p = folder / f"stack{i:02d}.tif"
        tifffile.imwrite(p, rng.integers(0, 4000, size=(8, 256, 256), dtype=np.uint16))
        paths.append(p)
    t0 = time.perf_counter()
    async with autopar.Manager() as m:
        done = await asyncio.gather(*(handle(m, p, p.with_suffix(".webp")) for p in paths))
        print(f"served {len(done)} requests in {time.perf_counter() - t0:.2f} s")
        print("routes:")
        for name, route in m.routes_info().items():
            print(f"  {name}: {route['lane']} ({route['why']})")
        for lane, s in m.stats().items():
            if s["submitted"]:
                print(f"  {lane}: {s['completed']} completed, {s['retried']} retried, {s['failed']} failed, at most {s['max_concurrent']} at once")
        print(f"throttle: {m.throttle.factor:.2f} ({m.throttle.reason})")


if __name__ == "__main__":
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
