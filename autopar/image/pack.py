"""``pack``: a folder of TIFF stacks to WebP atlases and a manifest.json, each pass tuned alone.

::

    INPUT/*_ch*_stack*.tif* ─► pass 0 scan (read, z range, histograms) ──► global z range
                                        │                                  (union over files)
                                        ▼
                               pass 1 limits (from the histograms; float stacks are read again)
                                        │  per channel over all timepoints, or per image
                                        ▼
                               pass 2 render (read, crop, stretch, atlas, WebP, atomic write)
                                        │
                                        ▼
                               OUTPUT/volume_stackNNNN_cC.webp + manifest.json (atomic)

Pass 0 and pass 2 each go through :func:`autopar.execute` with ``errors="collect"``, so each
pass gets its own executor choice (the reads may scale differently from the WebP encodes) and
a bad file is reported by name while every other file is still processed. Files run largest
first, so the last worker is not left with the biggest file. With ``scheduler`` (a Dask
scheduler's address) each pass may run on that cluster where the model predicts it pays
(``executor="auto"``: the cluster is one more candidate) or always there (``"dask"``); its
workers read and write the same paths, so they must see both folders (one machine, or a
shared filesystem): checked on every worker before the first pass. Outputs are written to a temp file
in the output folder and renamed: no half-written ``.webp`` or manifest is ever left.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import passes as image
from .._atomic import atomic_write
from ..errors import ItemFailed
from ..run import execute

__all__ = ["RENDER_STEPS", "PackReport", "PassReport", "pack", "render_jobs"]


@dataclass
class PassReport:
    name: str
    executor: str
    n_jobs: int
    chunksize: int
    wall_time: float
    files: int
    megabytes: float
    # A pass run as a pipeline: "fused" or "staged", and each step's measured seconds a file.
    mode: str | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.wall_time if self.wall_time > 0 else 0.0

    def line(self) -> str:
        how = self.executor if self.executor == "serial" else f"{self.executor} x{self.n_jobs} (chunksize {self.chunksize})"
        if self.mode == "staged":
            how = "staged: " + self.executor
        text = (
            f"{self.name:<18} {how:<30} {self.wall_time:7.2f} s  {self.files_per_s:6.2f} files/s  "
            f"{self.mb_per_s:7.1f} MB/s"
        )
        total = sum(t for _, t in self.steps)
        if total > 0:
            text += "\n" + " " * 19 + ", ".join(f"{n} {t * 1e3:.0f} ms ({t / total:.0%})" for n, t in self.steps) + " a file"
        return text


@dataclass
class PackReport:
    passes: list[PassReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def plot(self, path: str | Path) -> Path:
        """Each pass as a bar (its time, how it ran, files a second), to ``path``. Needs
        ``pip install "autopar[plot]"``."""
        from ..plot import pack_plot

        return pack_plot(self, path)

    def summary(self) -> str:
        lines = [f"{'pass':<18} {'executor':<30} {'time':>9}  {'throughput':>14}  {'input':>12}"]
        lines.extend(p.line() for p in self.passes)
        lines.append(f"wrote {len(self.written)} atlases in {self.wall_time:.2f} s")
        if self.errors:
            lines.append(f"{len(self.errors)} problems:")
            lines.extend(f"  ! {e}" for e in self.errors)
        return "\n".join(lines)


def _check_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output, prefix=".autopar-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise image.ImageError(f"{output}: cannot write to the output folder ({exc})") from exc


@dataclass(frozen=True)
class _Runner:
    """How every pass runs: the executor asked for, workers, progress bars, and the Dask
    client of ``--scheduler`` (None: local pools only)."""

    executor: str
    jobs: int | None
    progress: bool
    cluster: Any = None

    def where(self) -> dict[str, Any]:
        kind = None if self.executor == "auto" else self.executor
        if self.cluster is None:
            return {"executor_type": kind}
        return {"executor_type": kind, "cluster": self.cluster}


def _run_pass(
    name: str, func: Callable[[Any], Any], items: list[Any], megabytes: float, report: PackReport, run: _Runner
) -> list[Any]:
    t0 = time.perf_counter()
    results, run_report = execute(
        func, items, n_jobs=run.jobs, errors="collect", progress=run.progress, desc=name, return_report=True, **run.where()
    )
    report.passes.append(
        PassReport(
            name, run_report.executor_type, run_report.n_jobs, run_report.chunksize, time.perf_counter() - t0, len(items), megabytes
        )
    )
    return results


# Pass 2's steps: a file's slices into an atlas (decoding, table lookup: GIL-free), the
# WebP encode (GIL-free, nearly all the time on busy images), the write.
RENDER_STEPS = (("read+stretch", image.render_atlas), ("encode", image.encode_atlas), ("write", image.write_atlas))


def _render_pipeline(jobs: list[image.RenderJob], megabytes: float, report: PackReport, run: _Runner) -> list[Any]:
    """Pass 2 as a :class:`~autopar.Pipeline` of its steps: each step measured, every file
    through all steps on one pool (fused) or each step on its own (staged), as predicted
    faster; the report says which and what each step cost."""
    from ..pipeline import Pipeline, Stage

    t0 = time.perf_counter()
    pipe = Pipeline([Stage(f, name=n) for n, f in RENDER_STEPS])
    plan = pipe.optimize(jobs, errors="collect")
    results = pipe.execute(jobs, plan=plan, errors="collect", progress=run.progress, desc="pass 2: render")
    if plan.mode == "fused" and plan.fused is not None:
        kind, n, chunk = plan.fused.executor_type, plan.fused.n_jobs, plan.fused.chunksize
    else:
        kind = " / ".join(s.executor_type if s.executor_type == "serial" else f"{s.executor_type} x{s.n_jobs}" for s in plan.stages)
        n, chunk = max(s.n_jobs for s in plan.stages), 1
    report.passes.append(
        PassReport(
            "pass 2: render", kind, n, chunk, time.perf_counter() - t0, len(jobs), megabytes,
            mode=plan.mode, steps=[(s.name, s.item_time) for s in plan.stages],
        )
    )
    return results


def _failure_text(item: Any, failed: ItemFailed) -> str:
    exc = failed.exception
    text = str(exc) if isinstance(exc, image.ImageError) else f"{item}: {type(exc).__name__}: {exc}"
    step = getattr(exc, "autopar_stage", None)  # pass 2 runs as a pipeline: the step that failed
    return f"{text} (in step {step})" if step else text


def pack(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    executor: str = "auto",
    jobs: int | None = None,
    stretch: str = "smart",
    z_crop: str = "slope",
    z_threshold: float | None = None,
    per_image_contrast: bool = False,
    quality: int = 87,
    method: int = 6,
    lossless: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    scheduler: str | None = None,
) -> PackReport:
    """Pack the TIFF stacks of ``input_dir`` into WebP atlases and a manifest in ``output_dir``.

    ``executor``: ``"auto"`` (chosen per pass), ``"serial"``, ``"thread"``, ``"process"`` or
    ``"dask"``; ``scheduler``: a Dask scheduler's address, whose cluster ``"auto"`` weighs
    against the local pools (``"dask"`` needs it).

    Returns a :class:`PackReport`; ``report.ok`` is False when any file failed (the others are
    still written, and the manifest lists what was written).
    """
    if executor == "dask" and scheduler is None:
        raise ValueError("executor='dask' needs scheduler='tcp://host:port'")
    if scheduler is not None and executor not in ("auto", "dask"):
        raise ValueError(f"scheduler= goes with executor 'auto' or 'dask', not {executor!r}")
    if stretch not in image.STRETCH_MODES:
        raise ValueError(f"stretch must be one of {image.STRETCH_MODES}, got {stretch!r}")
    if z_crop not in image.Z_CROP_METHODS:
        raise ValueError(f"z_crop must be one of {image.Z_CROP_METHODS}, got {z_crop!r}")
    t_begin = time.perf_counter()
    report = PackReport()
    src, out = Path(input_dir), Path(output_dir)
    settings = dict(
        z_crop=z_crop, z_threshold=z_threshold, stretch=stretch, per_image_contrast=per_image_contrast,
        quality=quality, method=method, lossless=lossless, dry_run=dry_run,
    )
    if not src.is_dir():
        raise image.ImageError(f"{src}: no such input folder")
    if not dry_run:
        _check_output(out)
    if scheduler is None:
        return _pack(src, out, _Runner(executor, jobs, progress), report, t_begin, settings)
    from ..backends.dask import connect

    pool = connect(scheduler)
    src, out = src.resolve(), out.resolve()  # the workers' working folders are not ours
    try:
        _check_workers_see(pool.client, src, None if dry_run else out)
        return _pack(src, out, _Runner(executor, jobs, progress, pool.client), report, t_begin, settings)
    finally:
        pool.shutdown()


def _check_workers_see(client: Any, src: Path, out: Path | None) -> None:
    """Every Dask worker must see the input folder (and the output folder) at these paths."""
    for folder in (src, out):
        if folder is None:
            continue
        seen = client.run(os.path.isdir, str(folder))
        blind = sorted(w for w, ok in seen.items() if not ok)
        if blind:
            raise image.ImageError(
                f"{folder}: the Dask worker(s) {', '.join(blind)} cannot see this folder; pack on a cluster needs "
                "the input and output folders at the same paths on every worker (a shared filesystem)"
            )


def _pack(src: Path, out: Path, run: _Runner, report: PackReport, t_begin: float, settings: dict[str, Any]) -> PackReport:
    planned = _plan(src, out, run, report, settings)
    if planned is not None:
        infos, z0, z1, limits, global_limits, jobs = planned
        done = _render_pass(infos, jobs, report, run)
        report.manifest = _manifest(infos, z0, z1, done, limits, global_limits, settings["per_image_contrast"])
        if done and not settings["dry_run"]:
            with atomic_write(out / "manifest.json", "w") as fh:
                json.dump(report.manifest, fh, indent=2)
    report.wall_time = time.perf_counter() - t_begin
    return report


def _plan(src: Path, out: Path, run: _Runner, report: PackReport, settings: dict[str, Any]) -> tuple[Any, ...] | None:
    """Passes 0 and 1, then pass 2's jobs: (infos, z0, z1, limits, global limits, jobs), or
    None where no stack could be used."""
    paths = _find_files(src, report)
    infos = _scan_pass(paths, settings["z_crop"], settings["z_threshold"], report, run) if paths else []
    if not infos:
        return None
    z0 = min(i.z_start for i in infos)
    z1 = max(i.z_end for i in infos)
    limits, global_limits = _limits_pass(infos, z0, z1, settings["stretch"], report)
    render = {k: settings[k] for k in ("quality", "method", "lossless", "dry_run")}
    jobs = [
        image.RenderJob(
            path=i.path,
            channel=i.channel,
            time_id=i.time_id,
            z_start=z0,
            z_end=min(z1, i.shape[0] - 1),
            limits=limits[i.path] if settings["per_image_contrast"] else global_limits[i.channel],
            output_dir=str(out),
            **render,
        )
        for i in infos
    ]
    return infos, z0, z1, limits, global_limits, jobs


def render_jobs(input_dir: str | Path, output_dir: str | Path, **options: Any) -> list[image.RenderJob]:
    """Pass 2's jobs for ``input_dir`` as :func:`pack` makes them (passes 0 and 1 run on
    threads, nothing written), to run or time pass 2's steps another way, e.g. through
    :func:`autopar.bench` with ``RENDER_STEPS``. ``options``: pack's settings (``stretch``,
    ``z_crop``, ``z_threshold``, ``per_image_contrast``, ``quality``, ``method``,
    ``lossless``)."""
    settings: dict[str, Any] = dict(
        z_crop="slope", z_threshold=None, stretch="smart", per_image_contrast=False, quality=87, method=6,
        lossless=False, dry_run=False,
    )
    unknown = set(options) - (set(settings) - {"dry_run"})
    if unknown:
        raise TypeError(f"render_jobs() got unexpected options {sorted(unknown)}")
    settings.update(options)
    report = PackReport()
    planned = _plan(Path(input_dir), Path(output_dir), _Runner("thread", None, False), report, settings)
    if planned is None or report.errors:
        raise image.ImageError("; ".join(report.errors) or f"{input_dir}: no stacks")
    return planned[-1]


def _find_files(src: Path, report: PackReport) -> list[str]:
    """The glob, then the exact name pattern; largest first."""
    paths = []
    for p in sorted(src.glob(image.FILE_GLOB)):
        if image.FILE_PATTERN.match(p.name):
            paths.append(str(p))
        else:
            report.errors.append(f"{p}: the name does not match *_ch<N>_stack<NNNN>*.tif[f]; skipped")
    if not paths:
        report.errors.append(f"{src}: no files matching {image.FILE_GLOB}")
    paths.sort(key=lambda p: os.path.getsize(p), reverse=True)
    return paths


def _scan_pass(
    paths: list[str], z_crop: str, z_threshold: float | None, report: PackReport, run: _Runner
) -> list[image.StackInfo]:
    """Pass 0: scan every stack once; keep those of the common height and width."""
    total_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    scanned = _run_pass("pass 0: scan", _Scan(z_crop, z_threshold), paths, total_mb, report, run)
    infos: list[image.StackInfo] = []
    for path, res in zip(paths, scanned):
        if isinstance(res, ItemFailed):
            report.errors.append(_failure_text(path, res))
        else:
            infos.append(res)
    # Every stack must have the same height and width (depths may differ: crops are clamped).
    if infos:
        common = Counter(i.shape[1:] for i in infos).most_common(1)[0][0]
        for i in [i for i in infos if i.shape[1:] != common]:
            report.errors.append(
                f"{i.path}: its slices are {i.shape[2]}x{i.shape[1]}, the others' {common[1]}x{common[0]}; skipped"
            )
        infos = [i for i in infos if i.shape[1:] == common]
    return infos


def _limits_pass(
    infos: list[image.StackInfo], z0: int, z1: int, stretch: str, report: PackReport
) -> tuple[dict[str, image.Limits], dict[int, image.Limits]]:
    """Pass 1: limits of the cropped stacks from pass 0's histograms (no second read);
    per stack, and per channel over all timepoints."""
    t1 = time.perf_counter()
    limits: dict[str, image.Limits] = {}
    for i in infos:  # float stacks have no histograms: contrast_limits reads them again
        limits[i.path] = image.contrast_limits(i, z0, min(z1, i.shape[0] - 1), stretch)
        i.histograms = None  # done with them
    report.passes.append(PassReport("pass 1: limits", "serial", 1, 1, time.perf_counter() - t1, len(infos), 0.0))
    by_channel: dict[int, list[image.Limits]] = defaultdict(list)
    for i in infos:
        by_channel[i.channel].append(limits[i.path])
    global_limits: dict[int, image.Limits] = {}
    for ch, ls in by_channel.items():
        lo, hi = min(x.p_low for x in ls), max(x.p_high for x in ls)
        global_limits[ch] = image.Limits(lo, hi if hi > lo else lo + 1e-6)
    return limits, global_limits


def _render_pass(
    infos: list[image.StackInfo], jobs: list[image.RenderJob], report: PackReport, run: _Runner
) -> list[tuple[image.RenderJob, dict[str, Any]]]:
    """Pass 2: crop, stretch, tile and write every stack; (job, result) of those written."""
    total_mb = sum(i.nbytes for i in infos) / 1e6
    if run.executor == "auto" and run.jobs is None and run.cluster is None:
        rendered = _render_pipeline(jobs, total_mb, report, run)
    else:
        rendered = _run_pass("pass 2: render", image.render_stack, jobs, total_mb, report, run)
    done = []
    for job, res in zip(jobs, rendered):
        if isinstance(res, ItemFailed):
            report.errors.append(_failure_text(job.path, res))
        else:
            done.append((job, res))
            report.written.append(res["file"])
    return done


def _manifest(
    infos: list[image.StackInfo],
    z0: int,
    z1: int,
    done: list[tuple[image.RenderJob, dict[str, Any]]],
    limits: dict[str, image.Limits],
    global_limits: dict[int, image.Limits],
    per_image_contrast: bool,
) -> dict[str, Any]:
    """What was written, in the viewers' schema (PixelPacker 0.3.0's manifest.json)."""
    height, width = infos[0].shape[1:]
    depth = z1 - z0 + 1
    cols, rows = image.atlas_layout(depth)
    timepoints: dict[str, dict[str, Any]] = {}
    for job, res in sorted(done, key=lambda d: (d[0].time_id, d[0].channel)):
        tp = timepoints.setdefault(job.time_id, {"time": job.time_id, "files": {}})
        tp["files"][f"c{job.channel}"] = {"file": res["file"], "p_low": job.limits.p_low, "p_high": job.limits.p_high}
    channels = sorted({i.channel for i in infos})
    if per_image_contrast:
        intensity = {
            f"c{ch}": {"p_low": min(limits[i.path].p_low for i in infos if i.channel == ch),
                       "p_high": max(limits[i.path].p_high for i in infos if i.channel == ch)}
            for ch in channels
        }
    else:
        intensity = {f"c{ch}": {"p_low": lim.p_low, "p_high": lim.p_high} for ch, lim in sorted(global_limits.items())}
    return {
        "tile_layout": {"cols": cols, "rows": rows},
        "volume_size": {"width": width, "height": height, "depth": depth},
        "channels": max(channels) + 1,
        "global_z_crop_range": [z0, z1],
        "timepoints": [timepoints[t] for t in sorted(timepoints)],
        "global_intensity": intensity,
    }


class _Scan:
    """Pass 0's function with its settings (a picklable callable for any pool)."""

    def __init__(self, method: str, threshold: float | None) -> None:
        self.method = method
        self.threshold = threshold

    def __call__(self, path: str) -> image.StackInfo:
        return image.scan_stack(path, self.method, self.threshold)


def _write_demo_stack(spec: tuple[str, int, int, tuple[int, int, int], int]) -> Path:
    """One sample stack (see :func:`make_demo_data`): a cell in a band of z, its body in
    channel 0, bright puncta in channel 1 (and a faint body), over camera noise."""
    import numpy as np
    import tifffile

    folder, c, t, shape, seed = spec
    depth, height, width = shape
    cell = np.random.default_rng([seed, 1])  # the cell's shape: the same in every stack
    rng = np.random.default_rng([seed, t, c])
    # The cell drifts a little from one timepoint to the next.
    drift = np.random.default_rng([seed, t]).normal(0, 0.02, 2) * (height, width)
    cy, cx = height * (0.5 + cell.uniform(-0.05, 0.05)) + drift[0], width * (0.5 + cell.uniform(-0.05, 0.05)) + drift[1]
    ry, rx = height * cell.uniform(0.26, 0.32), width * cell.uniform(0.30, 0.36)
    cz, rz = depth * 0.5, max(depth * 0.2, 1.0)  # the band of z the cell fills
    yy, xx = np.ogrid[:height, :width]
    r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2  # the body's outline, an ellipse in y, x
    # A lobed outline: the cell's edge wobbles with the angle.
    angle = np.arctan2(yy - cy, xx - cx)
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
    if c == 1:
        # Puncta: small bright spots inside the cell, a few hundred of them.
        spots = 40 + 4 * t
        for _ in range(spots):
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
    folder: str | Path,
    channels: int = 2,
    timepoints: int = 4,
    shape: tuple[int, int, int] = (64, 512, 512),
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
