"""Image passes over 3D TIFF stacks, each a plain function over one file (any pool can run it):
pass 0 :func:`scan_stack` (z range, exact per-slice histograms of integer stacks), pass 1
:func:`contrast_limits` (from those histograms: the same limits as from the pixels), pass 2
:func:`render_stack` (crop, stretch to uint8, tile into an atlas, encode WebP, write atomically).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .._atomic import atomic_write

__all__ = [
    "FILE_GLOB", "FILE_PATTERN", "ImageError", "Limits", "StackInfo", "atlas_layout", "contrast_limits", "encode_atlas",
    "limits_from_histogram", "parse_name", "read_slices", "read_stack", "render_atlas", "render_stack", "scan_stack",
    "stretch_to_uint8", "tile_atlas", "webp_bytes", "write_atlas", "write_webp", "z_range",
]

FILE_GLOB = "*_ch*_stack*.tif*"
FILE_PATTERN = re.compile(r".*_ch(\d+)_stack(\d{4}).*?\.(?i:tiff?)$")  # .tif, .TIF, .Tiff ...
TIFF_SUFFIXES = (".tif", ".tiff")  # compared lower-cased
STRETCH_MODES = ("smart", "smart-late", "imagej-auto", "max")
Z_CROP_METHODS = ("slope", "threshold")
HIST_BINS = 512


class ImageError(Exception):
    """A stack that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Limits:
    p_low: float
    p_high: float


@dataclass
class StackInfo:
    """What pass 0 learns about one stack."""

    path: str
    channel: int
    time_id: str
    shape: tuple[int, int, int]
    dtype: str
    z_start: int
    z_end: int
    nbytes: int
    # For integer stacks: distinct values above zero and their counts, per z slice.
    histograms: list[tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)


def parse_name(path: str | Path) -> tuple[int, str]:
    """(channel, time id such as ``stack0003``) from a file name, or ImageError naming it."""
    name = Path(path).name
    m = FILE_PATTERN.match(name)
    if not m:
        raise ImageError(f"{path}: the name does not match *_ch<N>_stack<NNNN>*.tif[f]")
    return int(m.group(1)), f"stack{m.group(2)}"


class _TiffLog(logging.Filter):
    """tifffile's log records during our reads (this thread's only), kept for our error, not
    printed: a damaged file is named once, by our message."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        kept = getattr(self.local, "records", None)
        if kept is None:
            return True
        kept.append(record)
        return False


_TIFF_LOG = _TiffLog()
logging.getLogger("tifffile").addFilter(_TIFF_LOG)


@contextmanager
def _quiet_tifffile(path: str | Path) -> Iterator[None]:
    """tifffile's own log lines silenced for the read; an error it logged (a truncated or
    damaged file reads as fewer pages, without an exception) becomes our ImageError."""
    outer = getattr(_TiffLog.local, "records", None)
    _TiffLog.local.records = records = []
    try:
        yield
    finally:
        _TiffLog.local.records = outer
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    if errors:
        raise ImageError(f"{path}: cannot read the TIFF (damaged or truncated: {errors[0]})")


def _stack_axes(path: str | Path, data: np.ndarray, axes: str) -> np.ndarray:
    """``data`` as Z×Y×X by the file's axes (tifffile's letters). Axes of length 1 are dropped;
    one axis left beside Y and X is Z, whatever its letter; none: a stack of 1. Several, RGB
    samples, or Y and X not last: ImageError with the shape and what pack expects."""
    shape = tuple(int(n) for n in data.shape)
    if len(axes) != data.ndim:
        axes = "Q" * (data.ndim - 2) + "YX" if data.ndim >= 2 else "Q" * data.ndim
    expected = "pack takes one channel and one timepoint a file, Z×Y×X (a *_ch<N>_stack<NNNN>.tif each)"
    said = f"shape {shape}, axes {axes}"
    if "S" in axes and shape[axes.index("S")] > 1:
        raise ImageError(f"{path}: {shape[axes.index('S')]} samples a pixel (RGB), {said}; {expected}: save it as grey levels")
    keep = [i for i, a in enumerate(axes) if shape[i] > 1 or a in "YX"]
    kept = "".join(axes[i] for i in keep)
    if not kept.endswith("YX") or kept.count("Y") != 1 or kept.count("X") != 1:
        raise ImageError(f"{path}: expected Y and X as its last axes, got {said}; {expected}")
    data = data.reshape(tuple(shape[i] for i in keep))
    extra = kept[:-2]
    if len(extra) == 0:
        return data[np.newaxis]
    if len(extra) == 1:
        return data
    for letter, what in (("C", "channels"), ("T", "timepoints")):
        if letter in extra:
            raise ImageError(f"{path}: {shape[axes.index(letter)]} {what} in one file ({said}); {expected}")
    raise ImageError(f"{path}: cannot tell which axis is Z ({said}); {expected}")


def read_stack(path: str | Path) -> np.ndarray:
    """The stack as a ZYX array, by the file's own axes (ImageJ, OME): axes of length 1
    dropped, a 2D image a stack of 1. Channels, timepoints or RGB samples in the file, or
    more axes than one can place: ImageError naming the file, its shape and axes."""
    import tifffile

    try:
        with _quiet_tifffile(path), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: cannot read the TIFF ({type(exc).__name__}: {exc})") from exc
    if data.size == 0:
        raise ImageError(f"{path}: cannot read the TIFF (no image data in it)")
    return _stack_axes(path, data, axes)


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d(x, sigma, mode="reflect")`` to the last bit (the same
    weights and sums in the same order, cast as scipy casts), without importing scipy."""
    radius = int(4.0 * float(sigma) + 0.5)
    k = np.arange(-radius, radius + 1)
    sigma2 = sigma * sigma
    weights = np.exp(-0.5 / sigma2 * k**2)
    weights = weights / weights.sum()
    n = len(x)
    line = np.pad(x.astype(np.float64), radius, mode="symmetric")  # scipy's "reflect": d c b a | a b c d
    out = line[radius : radius + n] * weights[radius]
    for j in range(radius, 0, -1):
        out += (line[radius - j : radius - j + n] + line[radius + j : radius + j + n]) * weights[radius - j]
    return out.astype(x.dtype)


def z_range(volume: np.ndarray, method: str = "slope", threshold: float | None = None) -> tuple[int, int]:
    """The z range (inclusive) that holds content, as PixelPacker 0.3.0 finds it.

    Both methods read the max-intensity profile along z (the brightest pixel of each slice).
    ``slope``: smoothed (Gaussian, sigma 2, reflected at the ends), then its slope per slice, in
    intensity units (an integer stack's smoothed profile is rounded to integers, as
    PixelPacker's is): content starts at the first slice, from the 4th on, where the slope stays
    above ``threshold`` (default 20) for 2 slices, and ends one past the last slice, from the
    4th-last back, where it stays below ``-threshold`` for 2 slices. ``threshold``: the slices
    whose maximum exceeds ``threshold`` (default 0). Either gives the full range when it finds
    no edge; stacks of 8 slices or fewer are not cropped by ``slope``.
    """
    depth = volume.shape[0]
    profile = volume.reshape(depth, -1).max(axis=1)  # in the stack's dtype: the crop depends on its rounding
    if method == "threshold":
        level = 0.0 if threshold is None else threshold
        above = np.flatnonzero(profile > level)
        return (int(above[0]), int(above[-1])) if above.size else (0, depth - 1)
    if method != "slope":
        raise ValueError(f"z-crop method must be one of {Z_CROP_METHODS}, got {method!r}")
    offset, window = 3, 2
    step = 20.0 if threshold is None else threshold
    if depth <= 2 * offset + window:
        return 0, depth - 1
    slope = np.gradient(gaussian_smooth(profile, 2.0))
    rising = (slope[:-1] > step) & (slope[1:] > step)  # rising[i]: slices i and i+1
    falling = (slope[:-1] < -step) & (slope[1:] < -step)
    starts = [i for i in np.flatnonzero(rising) if offset <= i < depth - window]
    ends = [i + 1 for i in np.flatnonzero(falling) if window - 1 < i + 1 <= depth - offset - 1]
    start = int(starts[0]) if starts else 0
    end = int(ends[-1]) + 1 if ends else depth - 1
    if start >= end:
        return 0, depth - 1
    return start, min(end, depth - 1)


def _slice_histograms(volume: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per z slice: the distinct values above zero and their counts (exact, integers only)."""
    out = []
    for plane in volume:
        flat = plane.ravel()
        counts = np.bincount(flat[flat > 0]) if flat.dtype.kind == "u" else None
        if counts is None:
            values, cnt = np.unique(flat[flat > 0], return_counts=True)
        else:
            values = np.flatnonzero(counts)
            cnt = counts[values]
        out.append((values.astype(np.int64), cnt.astype(np.int64)))
    return out


def scan_stack(path: str, method: str = "slope", threshold: float | None = None) -> StackInfo:
    """Pass 0 on one file: shape, z range with content, and (integers) per-slice histograms."""
    channel, time_id = parse_name(path)
    volume = read_stack(path)
    start, end = z_range(volume, method, threshold)
    hists = _slice_histograms(volume) if volume.dtype.kind in "ui" else None
    shape: Any = tuple(int(s) for s in volume.shape)
    return StackInfo(str(path), channel, time_id, shape, str(volume.dtype), start, end, int(volume.nbytes), hists)


def _percentiles(values: np.ndarray, counts: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile`` (linear) of the data the histogram describes."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in qs:
        h = (n - 1) * q / 100.0
        lo = int(math.floor(h))
        hi = min(lo + 1, n - 1)
        v_lo = float(values[np.searchsorted(cum, lo, side="right")])
        v_hi = float(values[np.searchsorted(cum, hi, side="right")])
        out.append(v_lo + (h - lo) * (v_hi - v_lo))
    return out


def _slope_cutoffs(values: np.ndarray, counts: np.ndarray) -> tuple[float | None, float | None]:
    """Where the smoothed slope of the log histogram stays steeply negative: first from the
    low end (``smart``) and last from the high end (``smart-late``)."""
    vmin, vmax = float(values[0]), float(values[-1])
    hist, edges = np.histogram(values, bins=HIST_BINS, range=(vmin, vmax), weights=counts)
    slope = gaussian_smooth(np.gradient(np.log10(hist.astype(np.float32) + 1e-6)), 3.0)
    centers = (edges[:-1] + edges[1:]) / 2.0
    window, offset, steep = 5, 10, -0.1
    steep_run = np.convolve((slope < steep).astype(np.int32), np.ones(window, dtype=np.int32), mode="valid") == window
    early = late = None
    first = [i for i in np.flatnonzero(steep_run) if offset <= i < len(slope) - window - offset]
    if first:
        early = float(centers[first[0]])
    last = [i + window - 1 for i in np.flatnonzero(steep_run) if offset + window - 1 < i + window - 1 <= len(slope) - offset - 1]
    if last:
        late = float(centers[last[-1]])
    return early, late


def limits_from_histogram(values: np.ndarray, counts: np.ndarray, mode: str = "smart") -> Limits:
    """Contrast limits of the pixels a histogram describes (see the module docstring)."""
    if mode not in STRETCH_MODES:
        raise ValueError(f"stretch mode must be one of {STRETCH_MODES}, got {mode!r}")
    if values.size == 0:
        return Limits(0.0, 0.0)
    vmin, vmax = float(values[0]), float(values[-1])
    if mode == "max" or vmin == vmax:
        return Limits(vmin, vmax)
    if mode == "imagej-auto":
        lo, hi = _percentiles(values, counts, (0.35, 99.65))
        return Limits(lo, hi)
    p1, p99, p999 = _percentiles(values, counts, (1.0, 99.0, 99.9))
    early, late = _slope_cutoffs(values, counts)
    early = early if early is not None else p99
    late = late if late is not None else p999
    if early >= late:  # the cutoffs crossed: both fall back to the full range
        early, late = vmin, vmax
    return Limits(p1, early if mode == "smart" else late)


def _merge(hists: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    hists = [h for h in hists if h[0].size]
    if not hists:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    values = np.concatenate([v for v, _ in hists])
    counts = np.concatenate([c for _, c in hists])
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts).astype(np.int64)


def contrast_limits(
    info: StackInfo, z_start: int, z_end: int, mode: str = "smart", volume: np.ndarray | None = None
) -> Limits:
    """Limits of one stack's pixels above zero in ``z_start..z_end``: from pass 0's histograms,
    or from ``volume`` (float stacks) when there are none."""
    if info.histograms is not None:
        values, counts = _merge(info.histograms[z_start : z_end + 1])
    else:
        if volume is None:
            volume = read_stack(info.path)
        data = volume[z_start : z_end + 1].ravel()
        data = data[data > 0] if np.any(data > 0) else data
        values, counts = np.unique(data, return_counts=True)
    return limits_from_histogram(values, counts, mode)


def stretch_to_uint8(volume: np.ndarray, limits: Limits) -> np.ndarray:
    """Linear stretch of ``[p_low, p_high]`` to 0..255 (float32 arithmetic), clipped."""
    lo, hi = limits.p_low, limits.p_high
    if hi <= lo:
        return np.where(volume <= lo, 0, 255).astype(np.uint8)
    scaled = (volume.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled *= 255.0
    return scaled.astype(np.uint8)


def atlas_layout(depth: int) -> tuple[int, int]:
    """(cols, rows) of a near-square atlas: cols = ceil(sqrt(depth)), rows = ceil(depth/cols)."""
    cols = max(1, math.ceil(math.sqrt(depth)))
    return cols, max(1, math.ceil(depth / cols))


def tile_atlas(volume: np.ndarray, each: Callable[[np.ndarray], np.ndarray] | None = None, dtype: Any = None) -> np.ndarray:
    """Slices laid out row by row in a 2D atlas; unused tiles stay black. ``each``: made of
    every slice on its way into its tile (an atlas of ``dtype``), so that no whole
    transformed volume is ever held."""
    depth, height, width = volume.shape
    cols, rows = atlas_layout(depth)
    atlas = np.zeros((rows * height, cols * width), dtype=dtype or volume.dtype)
    for z in range(depth):
        r, c = divmod(z, cols)
        atlas[r * height : (r + 1) * height, c * width : (c + 1) * width] = volume[z] if each is None else each(volume[z])
    return atlas


def webp_bytes(image: np.ndarray, quality: int = 87, method: int = 6, lossless: bool = False) -> bytes:
    """``image`` encoded as WebP (Pillow's encoder, which releases the GIL while it works)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", quality=quality, method=method, lossless=lossless)
    return buf.getvalue()


def write_webp(image: np.ndarray, out_path: str | Path, quality: int = 87, method: int = 6, lossless: bool = False) -> int:
    """Encode ``image`` as WebP and write it atomically; returns its size in bytes."""
    data = webp_bytes(image, quality, method, lossless)
    with atomic_write(Path(out_path)) as fh:
        fh.write(data)
    return len(data)


def output_name(time_id: str, channel: int) -> str:
    return f"volume_{time_id}_c{channel}.webp"


@dataclass(frozen=True)
class RenderJob:
    """Pass 2 for one file: what to crop, the limits to stretch with, where to write."""

    path: str
    channel: int
    time_id: str
    z_start: int
    z_end: int
    limits: Limits
    output_dir: str
    quality: int = 87
    method: int = 6
    lossless: bool = False
    dry_run: bool = False


def read_slices(path: str | Path, start: int, end: int) -> np.ndarray:
    """Slices ``start..end`` (inclusive) of the stack as a ZYX array. Where the file keeps
    one page a slice (the usual stack), only those pages are decoded; otherwise the whole
    stack is read (:func:`read_stack`) and cropped. A range outside the stack: ImageError."""
    import tifffile

    if end < start:
        raise ImageError(f"{path}: the z range {start}-{end} is empty")
    try:
        with _quiet_tifffile(path), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(d for d in series.shape if d != 1)
            if len(series.pages) == series.shape[0] == shape[0] and len(shape) == 3 and end < shape[0]:
                return tif.asarray(key=range(start, end + 1), series=0).reshape((end - start + 1,) + shape[1:])
    except Exception:  # noqa: BLE001 - anything odd: the whole read below, whose errors name the file
        pass
    volume = read_stack(path)
    cropped = volume[start : min(end, volume.shape[0] - 1) + 1]
    if cropped.size == 0:
        raise ImageError(f"{path}: the z range {start}-{end} is outside its {volume.shape[0]} slices")
    return cropped


def _stretch_table(dtype: np.dtype, limits: Limits) -> np.ndarray | None:
    """For 8- and 16-bit unsigned stacks: every value's stretched byte (the same arithmetic
    as :func:`stretch_to_uint8`, so the same bytes), to look up instead of computing."""
    if dtype.kind != "u" or dtype.itemsize > 2:
        return None
    return stretch_to_uint8(np.arange(1 << (8 * dtype.itemsize), dtype=dtype), limits)


def render_atlas(job: RenderJob) -> tuple[RenderJob, np.ndarray]:
    """Pass 2's first step on one file: read the crop's slices, stretch each straight into
    its tile of the atlas (uint8). Memory: the cropped slices and the atlas, nothing in float
    for 8- and 16-bit stacks."""
    volume = read_slices(job.path, job.z_start, job.z_end)
    table = _stretch_table(volume.dtype, job.limits)
    stretch = table.__getitem__ if table is not None else (lambda plane: stretch_to_uint8(plane, job.limits))
    return job, tile_atlas(volume, stretch, np.uint8)


def encode_atlas(rendered: tuple[RenderJob, np.ndarray]) -> tuple[RenderJob, tuple[int, ...], bytes]:
    """Pass 2's second step: the atlas encoded as WebP, in memory (b"" for a dry run)."""
    job, atlas = rendered
    data = b"" if job.dry_run else webp_bytes(atlas, job.quality, job.method, job.lossless)
    return job, atlas.shape, data


class _Writes:
    """The atlas writes under way in this process. The jobs of an interrupted pack are
    stopped: a worker thread still busy with one of them raises KeyboardInterrupt where it
    would write, and so nothing is written after the pack counted what is on disk. (The job
    objects themselves, not their values: a later pack of the same files writes as usual.)
    Processes' workers are not seen here: an interrupted run kills them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[int, int] = {}  # id(job) -> writes under way
        self._stopped: dict[int, weakref.ref] = {}

    @contextmanager
    def one(self, job: RenderJob) -> Iterator[None]:
        key = id(job)
        with self._lock:
            ref = self._stopped.get(key)
            if ref is not None and ref() is job:
                raise KeyboardInterrupt(f"{job.path}: its pack was interrupted; the atlas is not written")
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]

    def stop(self, jobs: list[RenderJob], timeout: float) -> list[RenderJob]:
        """No new write of ``jobs``; then wait (``timeout`` seconds at most, Ctrl-C meanwhile
        ignored: what it waits for is the count) for those under way. Returns the jobs still
        writing at the end (a slow disk): their temp files are in use."""
        with self._lock:
            for job in jobs:
                self._stopped[id(job)] = weakref.ref(job, self._forget(id(job)))
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = [j for j in jobs if id(j) in self._busy]
            if not busy or time.monotonic() >= deadline:
                return busy
            try:
                time.sleep(0.002)
            except KeyboardInterrupt:
                continue

    def _forget(self, key: int) -> Callable[[weakref.ref], None]:
        """A job gone: its entry goes (no lock: the garbage collector may call this anywhere)."""

        def forget(ref: weakref.ref) -> None:
            if self._stopped.get(key) is ref:
                self._stopped.pop(key, None)

        return forget


WRITES = _Writes()


def write_atlas(encoded: tuple[RenderJob, tuple[int, ...], bytes]) -> dict[str, Any]:
    """Pass 2's last step: the WebP written atomically. Returns what was written."""
    job, shape, data = encoded
    name = output_name(job.time_id, job.channel)
    if not job.dry_run:
        with WRITES.one(job), atomic_write(Path(job.output_dir) / name) as fh:
            fh.write(data)
    return {"file": name, "time_id": job.time_id, "channel": job.channel, "atlas_shape": shape, "bytes_out": len(data)}


def render_stack(job: RenderJob) -> dict[str, Any]:
    """Pass 2 on one file: read the crop, stretch, tile, encode, write. Returns what was written."""
    return write_atlas(encode_atlas(render_atlas(job)))
