"""The demo's data: a small light-microscopy time series, written as TIFF stacks."""

from __future__ import annotations

from pathlib import Path

from ..run import execute

__all__ = ["DEMO_SHAPE", "DEMO_TIMEPOINTS", "make_demo_data"]

# `autopar demo`'s data: 2 channels x 4 timepoints of 40 x 192 x 192 (about 20 MB of TIFF).
DEMO_SHAPE = (40, 192, 192)
DEMO_TIMEPOINTS = 4


def _write_demo_stack(spec: tuple[str, int, int, tuple[int, int, int], int]) -> Path:
    """One sample stack of :func:`make_demo_data`."""
    import numpy as np
    import tifffile

    folder, c, t, shape, seed = spec
    depth, height, width = shape
    cell = np.random.default_rng([seed, 1])  # the cell's shape: the same in every stack
    rng = np.random.default_rng([seed, t, c])
    drift = np.random.default_rng([seed, t]).normal(0, 0.02, 2) * (height, width)  # from one timepoint to the next
    cy, cx = height * (0.5 + cell.uniform(-0.05, 0.05)) + drift[0], width * (0.5 + cell.uniform(-0.05, 0.05)) + drift[1]
    ry, rx = height * cell.uniform(0.26, 0.32), width * cell.uniform(0.30, 0.36)
    cz, rz = depth * 0.5, max(depth * 0.2, 1.0)  # the band of z the cell fills
    yy, xx = np.ogrid[:height, :width]
    r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2  # the body's outline, an ellipse in y, x
    angle = np.arctan2(yy - cy, xx - cx)  # a lobed outline: the edge wobbles with the angle
    r2 = r2 / (1 + 0.12 * np.sin(3 * angle + cell.uniform(0, 6.28)) + 0.06 * np.sin(5 * angle)) ** 2
    nucleus = ((yy - cy) / (0.35 * ry)) ** 2 + ((xx - cx - 0.15 * rx) / (0.4 * rx)) ** 2
    body_level = (600.0 if c == 0 else 0.0) * (1 + 0.15 * t / max(1, depth))  # channel 1: puncta only
    light = np.zeros(shape, dtype=np.float32)
    for z in range(max(0, int(cz - 2 * rz)), min(depth, int(cz + 2 * rz) + 1)):
        s2 = 1.0 - ((z - cz) / rz) ** 2  # the ellipsoid's cross-section at this slice
        if s2 <= 0.02:
            continue
        inside = np.clip(1.0 - r2 / s2, 0.0, None)  # brightest at the centre, fading to the edge
        light[z] = body_level * s2 * inside**1.5 * np.where(nucleus < s2, 0.4, 1.0)
    if c == 1:  # puncta: small bright spots inside the cell
        for _ in range(40 + 4 * t):
            u, v = rng.uniform(0, 6.283), np.sqrt(rng.uniform(0, 0.8))
            y, x = cy + v * ry * np.sin(u), cx + v * rx * np.cos(u)
            z = cz + rng.normal(0, rz * 0.35)
            r, brightness = float(rng.uniform(2.5, 6.0)), float(rng.uniform(300, 3000))
            z0, z1 = max(int(z - 5), 0), min(int(z + 6), depth)
            y0, y1 = max(int(y - 3 * r), 0), min(int(y + 3 * r) + 1, height)
            x0, x1 = max(int(x - 3 * r), 0), min(int(x + 3 * r) + 1, width)
            if z0 >= z1 or y0 >= y1 or x0 >= x1:
                continue
            zz, py, px = np.ogrid[z0:z1, y0:y1, x0:x1]
            light[z0:z1, y0:y1, x0:x1] += brightness * np.exp(
                -(((zz - z) / 2.0) ** 2 + ((py - y) / r) ** 2 + ((px - x) / r) ** 2)
            )
    # Camera noise: photon (Poisson) noise on signal plus background, and read noise.
    light += 100.0 if c == 0 else 12.0  # the puncta channel's background is darker
    stack = rng.poisson(light).astype(np.float32) + rng.normal(0, 6.0 if c == 0 else 1.5, size=shape).astype(np.float32)
    stack = np.clip(stack, 0, 65535).astype(np.uint16)
    path = Path(folder) / f"demo_ch{c}_stack{t:04d}.tif"
    tifffile.imwrite(path, stack, compression="zlib", compressionargs={"level": 1}, photometric="minisblack")
    return path


def make_demo_data(
    folder: str | Path, channels: int = 2, timepoints: int = 4, shape: tuple[int, int, int] = (64, 512, 512),
    seed: int = 0,
) -> list[Path]:
    """A sample dataset that looks like a light-microscopy time series: per timepoint a cell
    in the middle band of z (empty slices at both ends, for the crop to find), its body in
    channel 0 and bright puncta in channel 1, drifting a little over time, with photon and
    read noise; uint16, zlib-compressed. Written with :func:`autopar.execute`, which picks
    the pool for it too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [(str(folder), c, t, tuple(shape), seed) for t in range(timepoints) for c in range(channels)]
    return execute(_write_demo_stack, specs)
