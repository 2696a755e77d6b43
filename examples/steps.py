"""A user's own pipeline step, as the README's ``autopar optimize`` command runs it.

    autopar optimize examples.steps:smooth --data examples.steps:inputs --execute
    autopar bench examples.steps:blur,examples.steps:count_bright --range 12 --rounds 1   # as a two-stage pipeline

``smooth`` blurs a synthetic 1024x1024 image and counts bright pixels: NumPy/SciPy work whose
threads may or may not run in parallel; autopar measures which.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blur(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.random((1024, 1024), dtype=np.float32)
    return ndimage.gaussian_filter(image, sigma=3)


def count_bright(blurred: np.ndarray) -> int:
    return int((blurred > 0.52).sum())


def smooth(seed: int) -> int:
    """The two steps as one function."""
    return count_bright(blur(seed))


def inputs() -> list[int]:
    return list(range(48))


if __name__ == "__main__":
    import autopar

    result = autopar.optimize(smooth, inputs())
    print(result.explain())
    counts = autopar.execute(smooth, inputs(), result=result)
    print(f"\n{len(counts)} images, {sum(counts)} bright pixels in all")
