"""Built-in workloads: one of each kind the optimizer must tell apart.

Used by the quickstart example, the benchmark and the decision tests. Every function is
importable at module level, so each runs in any pool under any start method.
"""

from __future__ import annotations

import time

import numpy as np

from ._atomic import atomic_write

__all__ = ["large_input", "large_result", "numpy_gil_free", "pure_python_cpu", "skewed", "sleep_io", "tiny"]


def pure_python_cpu(n: int) -> int:
    """A pure-Python loop: CPU-bound and holds the GIL."""
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def numpy_gil_free(seed: int, size: int = 1_000_000) -> float:
    """Element-wise NumPy on a few MB: CPU-bound, releases the GIL, tiny pickles."""
    rng = np.random.default_rng(seed)
    a = rng.random(size)
    b = np.sqrt(a) * np.sin(a) + np.exp(-a)
    b.sort()
    return float(b[size // 2])


def sleep_io(seconds: float) -> float:
    """Waiting (I/O stand-in): no CPU, releases the GIL."""
    time.sleep(seconds)
    return seconds


def tiny(x: int) -> int:
    """A task far smaller than any dispatch cost."""
    return x + 1


def large_result(seed: int, nbytes: int = 4 << 20) -> np.ndarray:
    """Makes a 4 MB array: the result dominates transfer cost."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, size=nbytes, dtype=np.uint8)


def large_input(arr: np.ndarray) -> float:
    """Reduces an 8 MB input: the item dominates transfer cost."""
    return float(np.percentile(arr, 99.0))


def skewed(n: int) -> int:
    """Pure-Python work whose size varies a lot from item to item."""
    return pure_python_cpu(n)


def make_skewed_items(count: int, base: int = 2_000, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = (rng.pareto(1.5, count) + 1.0) * base
    return [int(s) for s in np.minimum(sizes, base * 60)]


def image_pass(path: str) -> int:
    """A TIFF stack's max projection, stretched to 8 bits, written atomically as WebP beside it
    (same name, ``.webp``); returns the WebP's size in bytes."""
    import os

    import tifffile
    from PIL import Image

    stack = tifffile.imread(path)
    proj = stack.max(axis=0).astype(np.float32)
    lo, hi = np.percentile(proj, (0.5, 99.5))
    scaled = np.clip((proj - lo) / max(hi - lo, 1.0) * 255.0, 0, 255).astype(np.uint8)
    out = os.path.splitext(path)[0] + ".webp"
    with atomic_write(out) as fh:
        Image.fromarray(scaled).save(fh, format="WEBP", quality=87, method=6)
    return os.path.getsize(out)


def make_tiff_stacks(folder: str, count: int = 16, shape: tuple[int, int, int] = (32, 512, 512), seed: int = 0) -> list[str]:
    """Write ``count`` zlib-compressed uint16 stacks with sparse bright spots and noise."""
    import os

    import tifffile

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        stack = rng.poisson(100, size=shape).astype(np.uint16)
        for _ in range(40):
            z, y, x = (int(rng.integers(0, s)) for s in shape)
            stack[max(z - 2, 0) : z + 2, max(y - 6, 0) : y + 6, max(x - 6, 0) : x + 6] += np.uint16(rng.integers(500, 4000))
        path = os.path.join(folder, f"stack_{i:03d}.tif")
        tifffile.imwrite(path, stack, compression="zlib", photometric="minisblack")
        paths.append(path)
    return paths
