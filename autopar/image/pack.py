"""``pack``: a folder of TIFF stacks to WebP atlases and a manifest.json. Pass 0 scans every
stack (z range, histograms), pass 1 sets the contrast limits, pass 2 renders the atlases (a
:class:`~autopar.Pipeline` of its steps). Passes 0 and 2 choose their own pool, local or a Dask
cluster's (``scheduler``), and report a bad file by name while making the others. Everything is
checked before any work or write; outputs are written atomically; a rerun makes only what is
missing or out of date (:mod:`.resume`).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import passes as image
from . import resume
from .._atomic import atomic_write
from ..backends.dask import connect
from ..errors import ItemFailed
from ..pipeline import Pipeline, Stage
from ..run import execute
from ..tune.costs import kept_in_memory
from .demo import make_demo_data
from .inputs import check_options, check_output, find_stacks
from .report import PackInterrupted, PackReport, PassReport

__all__ = ["RENDER_STEPS", "PackInterrupted", "PackReport", "PassReport", "make_demo_data", "pack", "render_jobs"]


@dataclass(frozen=True)
class _Runner:
    """How every pass runs; ``cluster``: the Dask client of ``--scheduler`` (None: local pools)."""

    executor: str
    jobs: int | None
    progress: bool
    cluster: Any = None
    cache: bool = True

    def where(self) -> dict[str, Any]:
        where: dict[str, Any] = {"executor_type": None if self.executor == "auto" else self.executor}
        return where if self.cluster is None else {**where, "cluster": self.cluster}


def _run_pass(
    name: str, func: Callable[[Any], Any], items: list[Any], megabytes: float, report: PackReport, run: _Runner
) -> list[Any]:
    t0 = time.perf_counter()
    results, run_report = execute(
        func, items, n_jobs=run.jobs, errors="collect", progress=run.progress, desc=name, return_report=True,
        cache=run.cache, **run.where(),
    )
    how = (run_report.executor_type, run_report.n_jobs, run_report.chunksize)
    report.passes.append(PassReport(name, *how, time.perf_counter() - t0, len(items), megabytes))
    return results


WRITE_GRACE = 10.0  # seconds an interrupted pack waits for atlas writes under way in its threads

RENDER_STEPS = (("read+stretch", image.render_atlas), ("encode", image.encode_atlas), ("write", image.write_atlas))


class _Timed:
    """One of pass 2's steps, timed where it runs: its value, with each step's seconds so far."""

    def __init__(self, func: Callable[[Any], Any], first: bool) -> None:
        self.func = func
        self.first = first

    def __call__(self, carried: Any) -> tuple[Any, tuple[float, ...]]:
        value, times = (carried, ()) if self.first else carried
        t0 = time.perf_counter()
        out = self.func(value)
        return out, times + (time.perf_counter() - t0,)


def _render_pipeline(jobs: list[image.RenderJob], megabytes: float, report: PackReport, run: _Runner) -> list[Any]:
    """Pass 2 as a :class:`~autopar.Pipeline` of its steps, fused or staged as predicted faster;
    the report says which and what each step took a file (and the cached plan's figures)."""
    t0 = time.perf_counter()
    pipe = Pipeline([Stage(_Timed(f, i == 0), name=n) for i, (n, f) in enumerate(RENDER_STEPS)])
    plan = pipe.optimize(jobs, errors="collect", cache=run.cache)
    carried = pipe.execute(jobs, plan=plan, errors="collect", progress=run.progress, desc="pass 2: render")
    if plan.mode == "fused" and plan.fused is not None:
        kind, n, chunk = plan.fused.executor_type, plan.fused.n_jobs, plan.fused.chunksize
    else:
        kind = " / ".join(s.executor_type if s.executor_type == "serial" else f"{s.executor_type} x{s.n_jobs}" for s in plan.stages)
        n, chunk = max(s.n_jobs for s in plan.stages), 1
    timed = [c[1] for c in carried if not isinstance(c, ItemFailed)]
    steps = [(name, sum(t[k] for t in timed) / len(timed)) for k, (name, _) in enumerate(RENDER_STEPS)] if timed else []
    cached = getattr(plan.fused, "cache", None) == "hit"
    report.passes.append(
        PassReport(
            "pass 2: render", kind, n, chunk, time.perf_counter() - t0, len(jobs), megabytes, mode=plan.mode, steps=steps,
            planned=[(s.name, s.item_time) for s in plan.stages] if cached else [],
            planned_from="the tuning cache" if cached else "",
        )
    )
    return [c if isinstance(c, ItemFailed) else c[0] for c in carried]


def _failure_text(item: Any, failed: ItemFailed) -> str:
    exc = failed.exception
    text = str(exc) if isinstance(exc, image.ImageError) else f"{item}: {type(exc).__name__}: {exc}"
    step = getattr(exc, "autopar_stage", None)  # pass 2 runs as a pipeline: the step that failed
    return f"{text} (in step {step})" if step else text


def pack(
    input_dir: str | Path, output_dir: str | Path, *, executor: str = "auto", jobs: int | None = None,
    stretch: str = "smart", z_crop: str = "slope", z_threshold: float | None = None, per_image_contrast: bool = False,
    quality: int = 87, method: int = 6, lossless: bool = False, dry_run: bool = False, progress: bool = False,
    scheduler: str | None = None, force: bool = False,
) -> PackReport:
    """Pack the TIFF stacks of ``input_dir`` into WebP atlases and a manifest in ``output_dir``.

    ``executor``: ``"auto"`` (chosen per pass), ``"serial"``, ``"thread"``, ``"process"`` or
    ``"dask"``; ``scheduler``: a Dask scheduler's address, whose cluster ``"auto"`` weighs
    against the local pools (``"dask"`` needs it). Settings, the input folder and the output
    folder are checked before anything is read or written (ValueError, ImageError).

    An atlas already in ``output_dir``, complete and made from the same input file with the
    same crop, limits and settings, is kept (``force=True``: everything is made again).
    ``dry_run``: the passes run, nothing is written, not even to the tuning cache.

    Returns a :class:`PackReport`; ``report.ok`` is False when any file failed (the others are
    still written, and the manifest lists what was written). Ctrl-C raises
    :class:`PackInterrupted` (a KeyboardInterrupt) once every pool has stopped.
    """
    check_options(
        executor=executor, jobs=jobs, stretch=stretch, z_crop=z_crop, z_threshold=z_threshold, quality=quality,
        method=method, scheduler=scheduler,
    )
    t_begin = time.perf_counter()
    src, out = Path(input_dir), Path(output_dir)
    paths, problems = find_stacks(src)
    check_output(out, dry_run=True)  # not a file; made below
    report = PackReport(errors=problems, dry_run=dry_run)
    settings = dict(
        z_crop=z_crop, z_threshold=z_threshold, stretch=stretch, per_image_contrast=per_image_contrast,
        quality=quality, method=method, lossless=lossless, dry_run=dry_run, force=force,
    )
    if scheduler is None:
        check_output(out, dry_run)
        with kept_in_memory() if dry_run else nullcontext():  # not even the pool costs' file
            return _pack(paths, out, _Runner(executor, jobs, progress, cache=not dry_run), report, t_begin, settings)
    pool = connect(scheduler)
    src, out = src.resolve(), out.resolve()  # the workers' working folders are not ours
    paths = [str(Path(p).resolve()) for p in paths]
    try:
        check_output(out, dry_run)
        _check_workers_see(pool.client, src, None if dry_run else out)
        with kept_in_memory() if dry_run else nullcontext():
            return _pack(paths, out, _Runner(executor, jobs, progress, pool.client, not dry_run), report, t_begin, settings)
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


def _pack(paths: list[str], out: Path, run: _Runner, report: PackReport, t_begin: float, settings: dict[str, Any]) -> PackReport:
    jobs: list[image.RenderJob] = []
    try:
        same = None if settings["force"] else resume.up_to_date(out, paths, settings)
        if same is not None:  # a rerun of a finished pack: the passes would remake what is there
            report.kept, report.manifest = same
            report.unlisted = resume.unlisted(out, set(report.kept))
            report.notes.append("nothing changed since the last pack into this folder (input files, settings): no pass ran")
            _missing_channels(paths, report)
            planned = None
        else:
            planned = _plan(paths, out, run, report, settings)
        if planned is not None:
            infos, z0, z1, limits, global_limits, jobs = planned
            done = _resume_and_render(infos, jobs, (z0, z1), out, report, run, settings)
            report.manifest = _manifest(infos, z0, z1, done, limits, global_limits, settings["per_image_contrast"])
            if done and not settings["dry_run"]:
                with atomic_write(out / "manifest.json", "w") as fh:
                    json.dump(report.manifest, fh, indent=2)
    except KeyboardInterrupt:
        # The pools have stopped (a thread still busy with an item writes nothing more; one
        # writing finishes first); what is on disk is whole and recorded. A worker process
        # killed in an atomic write leaves its temp file: those of this pack's atlases go.
        written = 0
        if jobs and not settings["dry_run"]:
            writing = {id(j) for j in image.WRITES.stop(jobs, WRITE_GRACE)}  # (their temp files are in use)
            _remove_temp_files(out, {image.output_name(j.time_id, j.channel) for j in jobs if id(j) not in writing})
            written = sum(resume.complete_webp(out / image.output_name(j.time_id, j.channel)) for j in jobs)
        raise PackInterrupted(written, len(jobs) or len(paths), settings["dry_run"]) from None
    report.wall_time = time.perf_counter() - t_begin
    return report


def _remove_temp_files(out: Path, names: set[str]) -> None:
    """The temp files atomic writes of ``names`` left in ``out`` (``.NAME.XXXXXXXX.tmp``)."""
    for path in out.glob(".*.tmp"):
        base = path.name[1:].rsplit(".", 2)[0]
        if base in names:
            with suppress(OSError):
                path.unlink()


def _resume_and_render(
    infos: list[image.StackInfo], jobs: list[image.RenderJob], crop: tuple[int, int], out: Path, report: PackReport,
    run: _Runner, settings: dict[str, Any],
) -> list[tuple[image.RenderJob, dict[str, Any]]]:
    """Pass 2 for the atlases missing or out of date (all with ``force``); (job, result) of
    every atlas the manifest lists: those kept and those written now."""
    entries = {image.output_name(j.time_id, j.channel): resume.entry(j, crop, settings) for j in jobs}
    todo = resume.outdated(out, jobs, entries, settings["force"])
    making = {id(j) for j in todo}
    kept = [(j, {"file": image.output_name(j.time_id, j.channel)}) for j in jobs if id(j) not in making]
    report.kept = [res["file"] for _, res in kept]
    report.unlisted = resume.unlisted(out, set(entries))
    if not settings["dry_run"]:
        resume.write_record(out, todo, entries)
    by_path = {i.path: i for i in infos}
    return kept + (_render_pass([by_path[j.path] for j in todo], todo, report, run) if todo else [])


def _plan(paths: list[str], out: Path, run: _Runner, report: PackReport, settings: dict[str, Any]) -> tuple[Any, ...] | None:
    """Passes 0 and 1, then pass 2's jobs: (infos, z0, z1, limits, global limits, jobs), or
    None where no stack could be used."""
    infos = _scan_pass(paths, settings["z_crop"], settings["z_threshold"], report, run)
    if not infos:
        return None
    z0 = min(i.z_start for i in infos)
    z1 = max(i.z_end for i in infos)
    limits, global_limits = _limits_pass(infos, z0, z1, settings["stretch"], report)
    render = {k: settings[k] for k in ("quality", "method", "lossless", "dry_run")}
    per_image = settings["per_image_contrast"]
    jobs = [
        image.RenderJob(i.path, i.channel, i.time_id, z0, min(z1, i.shape[0] - 1),
                        limits[i.path] if per_image else global_limits[i.channel], str(out), **render)
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
    paths, problems = find_stacks(Path(input_dir))
    report = PackReport(errors=problems)
    planned = _plan(paths, Path(output_dir), _Runner("thread", None, False), report, settings)
    if planned is None or report.errors:
        raise image.ImageError("; ".join(report.errors) or f"{input_dir}: no stacks")
    return planned[-1]


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _scan_pass(
    paths: list[str], z_crop: str, z_threshold: float | None, report: PackReport, run: _Runner
) -> list[image.StackInfo]:
    """Pass 0: scan every stack once; keep those of the common shape (the manifest gives one size
    and one tiling): a stack of another height, width or depth is named and skipped."""
    total_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    scanned = _run_pass("pass 0: scan", _Scan(z_crop, z_threshold), paths, total_mb, report, run)
    infos: list[image.StackInfo] = []
    for path, res in zip(paths, scanned):
        if isinstance(res, ItemFailed):
            report.errors.append(_failure_text(path, res))
        else:
            infos.append(res)
    if infos:
        common = Counter(i.shape[1:] for i in infos).most_common(1)[0][0]
        for i in [i for i in infos if i.shape[1:] != common]:
            report.errors.append(
                f"{i.path}: its slices are {i.shape[2]}x{i.shape[1]}, the others' {common[1]}x{common[0]}; skipped"
            )
        infos = [i for i in infos if i.shape[1:] == common]
    if infos:
        depth = Counter(i.shape[0] for i in infos).most_common(1)[0][0]
        for i in [i for i in infos if i.shape[0] != depth]:
            what = "a single image" if i.shape[0] == 1 else f"{i.shape[0]} slices"
            report.errors.append(
                f"{i.path}: {what} (Z×Y×X {_shape(i.shape)}), the others have {depth} (Z×Y×X {_shape((depth,) + i.shape[1:])}); "
                "every atlas of a pack has the same depth: skipped"
            )
        infos = [i for i in infos if i.shape[0] == depth]
    by_channel: dict[int, Counter[str]] = defaultdict(Counter)
    for i in infos:
        by_channel[i.channel][i.dtype] += 1
    usual = {ch: dtypes.most_common(1)[0][0] for ch, dtypes in by_channel.items()}
    for i in [i for i in infos if i.dtype != usual[i.channel]]:
        report.errors.append(
            f"{i.path}: its pixels are {i.dtype}, channel {i.channel}'s other stacks {usual[i.channel]}; one channel's "
            f"limits take one pixel type (save it as {usual[i.channel]}): skipped"
        )
    infos = [i for i in infos if i.dtype == usual[i.channel]]
    _missing_channels(paths, report)
    return infos


def _missing_channels(paths: list[str], report: PackReport) -> None:
    """A timepoint without a file for a channel the others have: said (the manifest lists
    what there is)."""
    have: dict[str, set[int]] = defaultdict(set)
    for p in paths:
        channel, time_id = image.parse_name(p)
        have[time_id].add(channel)
    every = set().union(*have.values()) if have else set()
    for time_id in sorted(have):
        lacking = sorted(every - have[time_id])
        if lacking:
            report.notes.append(
                f"{time_id} has no file for channel {', '.join(map(str, lacking))} (the other timepoints have it): "
                "its manifest entry lists the channels there are"
            )


def _limits_pass(
    infos: list[image.StackInfo], z0: int, z1: int, stretch: str, report: PackReport
) -> tuple[dict[str, image.Limits], dict[int, image.Limits]]:
    """Pass 1: limits of the cropped stacks, per stack and per channel over all timepoints."""
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
    infos: list[image.StackInfo], z0: int, z1: int, done: list[tuple[image.RenderJob, dict[str, Any]]],
    limits: dict[str, image.Limits], global_limits: dict[int, image.Limits], per_image_contrast: bool,
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