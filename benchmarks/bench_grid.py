"""Brute-force grid against autopar's own choice, per workload.

    python benchmarks/bench_grid.py [--quick] [--out docs/benchmarks.md]

For each workload: every grid configuration once (serial; threads x 1,2,4,8,16,32 with
chunksize len/(4n); processes x 1,2,4 with chunksize 1,4,16,64 and len/(4n)), then the three
fastest again, keeping the median of their runs as the best time. autopar runs ``--repeats``
times with ``execute()`` and its own ``optimize()`` inside the timing; its median time over the
best time is the regret. The overhead is what optimize() took beyond the work its sample did
(those results are kept), against the serial time. Workloads under 0.1 s serial get five
times the runs. All figures come from this one run.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

import autopar
from autopar import workloads as W


def build_workloads(quick: bool, tmp: str) -> list[tuple[str, Callable[[Any], Any], list[Any]]]:
    k = 0.5 if quick else 2.0  # full size: about 2 s of serial work per workload
    n = lambda x: max(4, int(x * k))  # noqa: E731
    paths = W.make_tiff_stacks(tmp, count=n(16))
    return [
        ("pure-Python CPU", W.pure_python_cpu, [300_000] * n(80)),
        ("NumPy GIL-free", W.numpy_gil_free, list(range(n(40)))),
        ("sleep I/O", W.sleep_io, [0.01] * n(100)),
        ("200,000 tiny tasks", W.tiny, list(range(200_000))),
        ("4 MB results", W.large_result, list(range(n(100)))),
        ("8 MB inputs", W.large_input, [np.random.default_rng(i).random(1 << 20) for i in range(n(100))]),
        ("skewed items", W.skewed, W.make_skewed_items(n(1000), base=8_000)),
        ("image pass", W.image_pass, paths),
    ]


def grid(n_items: int) -> list[tuple[str, int, int]]:
    configs = [("serial", 1, 1)]
    for n in (1, 2, 4, 8, 16, 32):
        configs.append(("thread", n, max(1, math.ceil(n_items / (4 * n)))))
    for n in (1, 2, 4):
        sizes = sorted({1, 4, 16, 64, max(1, math.ceil(n_items / (4 * n)))})
        configs.extend(("process", n, cs) for cs in sizes)
    return configs


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def label(kind: str, n: int, cs: int) -> str:
    return "serial" if kind == "serial" else f"{kind} x{n} cs {cs}"


def run_workload(name: str, func: Callable[[Any], Any], items: list[Any], repeats: int) -> dict[str, Any]:
    serial_times = [timed(lambda: [func(x) for x in items]) for _ in range(repeats)]
    serial = statistics.median(serial_times)
    if serial < 0.1:  # fast workloads are noisy and cheap: more runs
        repeats *= 5
        serial = statistics.median(serial_times + [timed(lambda: [func(x) for x in items]) for _ in range(repeats)])
    def forced(kind: str, n: int, cs: int) -> float:
        return timed(lambda: autopar.execute(func, items, executor_type=kind, n_jobs=n, chunksize=cs, adapt=False))

    # Every grid entry once (chunksize 1 over 200,000 items takes tens of seconds), then the
    # three fastest again.
    results = sorted((forced(kind, n, cs), kind, n, cs) for kind, n, cs in grid(len(items)))
    best_runs = []
    for _, kind, n, cs in results[:3]:
        runs = [forced(kind, n, cs) for _ in range(repeats - 1)]
        first = next(t for t, k, nn, c in results if (k, nn, c) == (kind, n, cs))
        best_runs.append((statistics.median([first, *runs]), kind, n, cs))
    best_t, bkind, bn, bcs = min(best_runs)
    auto_times, overheads, picks, predicted, measured = [], [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out, report = autopar.execute(func, items, return_report=True)
        auto_times.append(time.perf_counter() - t0)
        picks.append(label(report.executor_type, report.n_jobs, report.chunksize))
        predicted.append(report.predicted_speedup or 1.0)
        measured.append(report.measured_speedup or 1.0)
        # Overhead: optimize() time beyond the serial time of the items its sample ran.
        useful = report.n_from_sample * serial / len(items)
        overheads.append(max(report.optimize_time - useful, 0.0) / serial)
        assert len(out) == len(items)
    auto = statistics.median(auto_times)
    pick = max(set(picks), key=picks.count)
    return {
        "name": name,
        "items": len(items),
        "serial": serial,
        "best": best_t,
        "best_config": label(bkind, bn, bcs),
        "pick": pick,
        "picks": picks,
        "auto": auto,
        "regret": auto / best_t,
        "vs_serial": auto / serial,
        "overhead": statistics.median(overheads),
        "predicted_speedup": statistics.median(predicted),
        "measured_speedup": statistics.median(measured),
        "worst_grid": results[-1][0],
        "worst_config": label(*results[-1][1:]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| workload | items | serial s | best config | best s | autopar pick | autopar s (with optimize) "
        "| regret | vs serial | optimize overhead | speedup predicted / measured | worst config (s) |\n"
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['items']} | {r['serial']:.3f} | {r['best_config']} | {r['best']:.3f} | {r['pick']} "
            f"| {r['auto']:.3f} | {r['regret']:.2f} | {r['vs_serial']:.2f} | {100 * r['overhead']:.1f}% "
            f"| {r['predicted_speedup']:.2f} / {r['measured_speedup']:.2f} | {r['worst_config']} ({r['worst_grid']:.2f}) |"
        )
    regrets = [r["regret"] for r in rows]
    geo = math.exp(sum(math.log(x) for x in regrets) / len(regrets))
    lines.append("")
    lines.append(f"Geometric-mean regret **{geo:.2f}**, worst **{max(regrets):.2f}** ({rows[regrets.index(max(regrets))]['name']}).")
    return head + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half-size workloads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()
    info = autopar.system_info()
    tmp = tempfile.mkdtemp(prefix="autopar-bench-")
    rows = []
    try:
        for name, func, items in build_workloads(args.quick, tmp):
            if args.only and args.only.lower() not in name.lower():
                continue
            t0 = time.perf_counter()
            row = run_workload(name, func, items, args.repeats)
            rows.append(row)
            print(
                f"{name:20} serial {row['serial']:.3f}s best {row['best_config']} {row['best']:.3f}s | "
                f"autopar {row['pick']} {row['auto']:.3f}s regret {row['regret']:.2f} "
                f"overhead {100 * row['overhead']:.1f}% picks {row['picks']} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = table(rows)
    print()
    print(text)
    if args.out:
        machine = (
            f"{info.usable_cores} usable cores ({info.physical_cores} physical), "
            f"{info.total_memory / 2**30:.0f} GiB, {info.python}, {platform.platform()}, start method {info.start_method}"
        )
        with open(args.out, "w") as fh:
            fh.write("# Benchmark: brute-force grid against autopar's pick\n\n")
            fh.write(f"Machine: {machine}. Run: `python benchmarks/bench_grid.py{' --quick' if args.quick else ''} "
                     f"--repeats {args.repeats} --out {args.out}` on {time.strftime('%Y-%m-%d')}.\n\n")
            fh.write((__doc__ or "").split("\n\n", 2)[-1].strip() + "\n\n")
            fh.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
