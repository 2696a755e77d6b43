"""Pictures of what autopar decided and what a run did (the ``plot`` extra: matplotlib):
:func:`speedup_plot` (``result.plot()``), :func:`timeline_plot` (``report.plot()``),
:func:`pack_plot` and :func:`bench_plot`. Drawn on matplotlib's Agg canvas (no pyplot, no global
state), written atomically: a whole PNG (or SVG, PDF: by the suffix) or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import atomic_write
from ._words import fmt_time, plural, pool_words, ran_words, reword_pool
from .tune.costs import pool_costs
from .tune.measure import rss
from .tune.predict import _predict, best_chunksize, gil_share

if TYPE_CHECKING:
    from .benchmark import BenchReport
    from .image.pack import PackReport
    from .run.report import ExecutionReport
    from .tune.result import OptimizationResult

__all__ = ["INSTALL_HINT", "bench_plot", "pack_plot", "speedup_figure", "speedup_plot", "timeline_plot"]

INSTALL_HINT = 'plots need matplotlib: pip install "autopar[plot]"'
COLOURS = {"serial": "#555555", "thread": "#1f77b4", "process": "#d62728", "dask": "#2ca02c"}
STATUS_COLOURS = {"ok": "#1f77b4", "inline": "#7f7f7f", "retried": "#ff7f0e", "failed": "#d62728", "sample": "#9467bd"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=fmt)
    return path


# -- optimize(): predicted speedup -----------------------------------------------------------


def _curves(result: "OptimizationResult") -> dict[str, list[tuple[int, float, int]]]:
    """Per pool kind: (workers, predicted time, chunksize) at the model's best chunksize."""
    costs = pool_costs(result.start_method).for_parent(rss())
    remaining = max(result.n_remaining, 1)
    cores = result.usable_cores
    top = max(cores * 4, result.n_jobs, 8)
    ns = sorted({1, 2, cores, result.n_jobs, *(2**k for k in range(top.bit_length()) if 2**k <= top)})
    out: dict[str, list[tuple[int, float, int]]] = {}
    for kind in ("thread", "process"):
        if kind == "process" and result.profile.transport is None:
            continue  # the work cannot be sent to a process
        row = []
        for n in ns:
            c = best_chunksize(kind, n, remaining, result.profile, costs, cores)
            row.append((n, c.predicted_time, c.chunksize))
        out[kind] = row
    return out


def _chunk_curve(result: "OptimizationResult") -> list[tuple[int, float]]:
    if result.executor_type not in ("thread", "process"):
        return []
    costs = pool_costs(result.start_method).for_parent(rss())
    remaining = max(result.n_remaining, 1)
    g = gil_share(result.profile)
    sizes = sorted({1, result.chunksize, *(2**k for k in range(max(remaining, 1).bit_length() + 1) if 2**k <= remaining)})
    return [
        (cs, _predict(result.executor_type, result.n_jobs, cs, remaining, result.profile, costs, result.usable_cores, g).predicted_time)
        for cs in sizes
    ]


def speedup_plot(result: "OptimizationResult", path: str | Path) -> Path:
    """Predicted speedup against workers (threads, processes), the measured points and the
    choice; and the chosen pool's predicted time against its chunksize."""
    return _save(speedup_figure(result), path)


def speedup_figure(result: "OptimizationResult") -> Any:
    """:func:`speedup_plot`'s figure; where the sample ran every item, one that says so (no curves)."""
    if result.n_remaining == 0:
        return _nothing_left_figure(result)
    serial = max(result.serial_time, 1e-12)
    curves = _curves(result)
    chunk = _chunk_curve(result)
    fig = _figure(11 if chunk else 6.5, 4.2)
    axes = fig.subplots(1, 2) if chunk else [fig.subplots(1, 1)]
    ax = axes[0]
    for kind, row in curves.items():
        row = [(n, t) for n, t, _ in row if 0 < t < float("inf")]  # a pool the model cannot run draws nothing
        if not row:
            continue
        name = {"thread": "threads", "process": "processes"}[kind]
        ax.plot([n for n, _ in row], [serial / t for _, t in row], "-o", ms=3, color=COLOURS[kind], label=f"{name} (predicted)")
    ax.axhline(1.0, color=COLOURS["serial"], lw=1, ls="--", label="serial")
    p = result.profile
    ax.plot([1], [1.0], "s", color="black", label="serial sample (measured)")
    if p.thread_scaling is not None and p.probe_threads >= 2:
        ax.plot([p.probe_threads], [p.thread_scaling], "D", color=COLOURS["thread"], mfc="white",
                label=f"{p.probe_threads} threads (probe, measured)")
    chosen = 1.0 if result.executor_type == "serial" else result.estimated_speedup
    ax.plot([result.n_jobs if result.executor_type != "serial" else 1], [chosen], "*", ms=16,
            color=COLOURS.get(result.executor_type, "black"), mec="black", label=f"chosen: {result.label()}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup over serial")
    ax.set_title(f"{plural(result.n_remaining, 'item')} left, {fmt_time(p.item_time_mean)} each, CPU/wall {p.cpu_ratio:.2f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if chunk:
        ax2 = axes[1]
        ax2.plot([c for c, _ in chunk], [t for _, t in chunk], "-o", ms=3, color=COLOURS[result.executor_type])
        ax2.axhline(result.serial_time, color=COLOURS["serial"], lw=1, ls="--", label="serial")
        ax2.plot([result.chunksize], [result.predicted_time], "*", ms=16, color=COLOURS[result.executor_type],
                 mec="black", label=f"chosen: chunksize {result.chunksize}")
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("chunksize (items per task)")
        ax2.set_ylabel("predicted seconds")
        ax2.set_title(f"{pool_words(result.executor_type, result.n_jobs)}: predicted time by chunksize")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    return fig


def _nothing_left_figure(result: "OptimizationResult") -> Any:
    """The sample ran every item: no pool has anything to run, so no speedup to draw."""
    p = result.profile
    fig = _figure(6.5, 4.2)
    ax = fig.subplots(1, 1)
    ax.set_axis_off()
    ran = plural(p.n_done, "item") if p.n_done else "every item"
    ax.text(0.5, 0.55, f"nothing left to run:\nthe sample ran {ran} ({fmt_time(p.sample_time)})",
            ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.text(0.5, 0.25, f"item time {fmt_time(p.item_time_mean)}, CPU/wall {p.cpu_ratio:.2f}",
            ha="center", va="center", fontsize=9, color=COLOURS["serial"], transform=ax.transAxes)
    ax.set_title("no speedup to predict")
    return fig


# -- execute(): what each worker did ----------------------------------------------------------


def _lanes(spans: list[tuple[int, int, float, float, str]], workers: int) -> list[int]:
    """A lane (worker) per chunk: the first lane free when the chunk started, else the one free
    soonest (at most ``workers``): the workers up to relabelling, as the caller sees them."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][2])
    ends: list[float] = []
    lanes = [0] * len(spans)
    for i in order:
        start, end = spans[i][2], spans[i][3]
        free = [lane for lane, t in enumerate(ends) if t <= start + 1e-4]
        if free:
            lane = free[0]
        elif len(ends) < workers:
            lane = len(ends)
            ends.append(end)
        else:
            lane = min(range(len(ends)), key=ends.__getitem__)
        lanes[i], ends[lane] = lane, max(end, ends[lane])
    return lanes


def timeline_plot(report: "ExecutionReport", path: str | Path) -> Path:
    """Chunks per worker over the run: ran, failed, ran again, run in the caller; the
    predicted and the measured end."""
    spans = list(report.timeline)
    workers = 1 if report.executor_type == "serial" else report.n_jobs
    inline = [i for i, sp in enumerate(spans) if sp[4] == "inline"]
    lanes = _lanes([sp for sp in spans if sp[4] != "inline"], workers)
    for i in inline:  # chunks run in the caller after a fallback: a lane of their own
        lanes.insert(i, workers)
    n_lanes = max(lanes, default=0) + 1
    fig = _figure(10, 1.6 + 0.35 * (n_lanes + 1))
    ax = fig.subplots(1, 1)
    if report.optimize_time > 0:
        ax.broken_barh([(0.0, report.optimize_time)], (-1.4, 0.8), color=STATUS_COLOURS["sample"])
    seen: set[str] = set()
    for (first, n, t0, t1, status), lane in zip(spans, lanes):
        label = None if status in seen else status
        seen.add(status)
        ax.broken_barh([(t0, max(t1 - t0, 1e-5))], (lane - 0.4, 0.8), color=STATUS_COLOURS.get(status, "black"),
                       edgecolor="white", linewidth=0.3, label=label)
    if report.predicted_time is not None:
        ax.axvline(report.optimize_time + report.predicted_time, color="black", ls="--", lw=1,
                   label=f"predicted end ({report.optimize_time + report.predicted_time:.3g} s)")
    ax.axvline(report.wall_time, color="black", lw=1.5, label=f"measured end ({report.wall_time:.3g} s)")
    names = [f"worker {i + 1}" for i in range(n_lanes)]
    if inline:
        names[-1] = "caller"
    ax.set_yticks([-1.0, *range(n_lanes)], ["optimize()", *names])
    ax.set_ylim(n_lanes - 0.4, -1.6)
    ax.set_xlabel("seconds since execute() was called")
    ax.set_title(f"{ran_words(report.n_items, report.executor_type, report.n_jobs)}, {plural(report.n_chunks, 'chunk')}"
                 + (f"; from item {report.fallback[0]}: {reword_pool(report.fallback[1])}" if report.fallback else ""))
    if report.optimize_time > 0:
        ax.plot([], [], color=STATUS_COLOURS["sample"], lw=6, label=f"optimize() ({report.optimize_time:.3g} s)")
    ax.legend(fontsize=8, loc="upper right", ncols=3)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


# -- autopar pack: the passes -----------------------------------------------------------------


def _bars(ax: Any, names: list[str], values: list[float], colours: Any, labels: list[str], right: float, xlabel: str,
          size: int = 8, bold: str | None = None) -> None:
    """Horizontal bars, top down, each labelled at its end (the bar named ``bold``: in bold)."""
    for name, bar, label in zip(names, ax.barh(names, values, color=colours), labels):
        ax.annotate(label, (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=size,
                    fontweight="bold" if name == bold else "normal")
    ax.invert_yaxis()
    ax.set_xlim(0, right)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def pack_plot(report: "PackReport", path: str | Path) -> Path:
    """One bar per pass: its time, how it ran, its throughput."""
    passes = report.passes
    fig = _figure(8, 1.4 + 0.6 * len(passes))
    ax = fig.subplots(1, 1)
    times = [p.wall_time for p in passes]
    _bars(ax, [p.name for p in passes], times, [COLOURS.get(p.executor, "black") for p in passes],
          [f" {p.how(chunks=False)}, {p.wall_time:.2f} s, {p.files_per_s:.1f} files/s" for p in passes],
          max(times, default=1.0) * 1.8 or 1.0, "seconds", size=9)
    ax.set_title(f"autopar pack: {plural(len(report.written), 'atlas', 'atlases')} in {fmt_time(report.wall_time)}"
                 + (f", {plural(len(report.errors), 'problem')}" if report.errors else ""))
    return _save(fig, path)


BENCH_COLOURS = {"sequential": "#555555", "staged": "#2ca02c", "autopar": "#9467bd"}


def bench_plot(report: "BenchReport", path: str | Path) -> Path:
    """Left: one bar per way of running (median seconds), the best and autopar's marked.
    Right: each stage's measured ms an item, with its busy share in the staged run."""
    rows, stages = report.rows, report.stages
    fig = _figure(12, 1.6 + 0.45 * max(len(rows), len(stages)))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    colours = [BENCH_COLOURS.get(r.kind) or COLOURS["thread" if "thread" in r.name else "process"] for r in rows]
    _bars(left, [r.name for r in rows], [r.seconds for r in rows], colours,
          [f" {r.seconds:.3f} s, {r.items_per_s:.0f}/s" + ("  best" if r.name == report.best else "") for r in rows],
          max(r.seconds for r in rows) * 1.6, "seconds (median)", bold=report.best)
    left.set_title(f"{rows[0].items} items: autopar picked {report.autopar_pick}, regret {report.regret:.2f}", fontsize=10)
    busy = ["" if s.get("busy_share") is None else f", busy {s['busy_share']:.0%}" for s in stages]
    _bars(right, [s["name"] for s in stages], [s["ms_per_item"] for s in stages], "#8c564b",
          [f" {s['staged_pool']}{b}" for s, b in zip(stages, busy)],
          max((s["ms_per_item"] for s in stages), default=1.0) * 1.8 or 1.0, "ms an item (measured serially)")
    right.set_title("stages" + (f"; bottleneck staged: {report.bottleneck}" if report.bottleneck else ""), fontsize=10)
    return _save(fig, path)
