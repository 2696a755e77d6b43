"""autopar on a Dask cluster: a LocalCluster of two single-threaded worker processes on
127.0.0.1, against local pools, all in one run; then what the model predicts for clusters it
cannot measure here (10 and 100 machines), marked as predicted.

    pip install ".[dask]" && python benchmarks/bench_dask.py [--out docs/scaling.md] [--rounds 5]

Measured, medians of ``--rounds`` alternating runs:

1. 100,000 tiny items (``abs``) through ``execute(pool=client)``: tasks sized by autopar
   (many items a task), against the same items as one Dask task each (``client.map``),
   timed on 2,000 of them and scaled, and a plain loop.
2. Items of about 50 ms of pure Python (80 of them): ``execute(pool=client)`` against a
   local process pool of 2 (``execute(executor_type="process", n_jobs=2)``), and what
   ``optimize(cluster=client)`` chooses for them and for tiny items.
3. ``autopar pack`` of the sample data (8 stacks) with every pass on the cluster
   (``executor="dask"``) against ``pack`` with local pools chosen per pass, and what
   ``pack(scheduler=...)`` chooses per pass when the cluster is one candidate among them.

Then the cluster's measured costs (``autopar info --scheduler``) and, on paper, the model's
choice and predicted time for clusters of 10 and 100 machines of 16 cores each, with the
measured round trip and 1 GB/s both ways, over item times from 10 us to 1 s: as 16 workers
of one thread a machine, and for pure Python also as one worker of 16 threads (one GIL).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import autopar
from autopar.backends.dask import ClusterCosts, cluster_costs
from autopar.tune.costs import pool_costs
from autopar.tune.model import decide
from autopar.tune.system import system_info


def spin(x: int) -> int:
    """About 50 ms of pure Python."""
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.05:
        pass
    return x


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def median_of(rounds: int, entries: dict) -> dict:
    times: dict = {k: [] for k in entries}
    for _ in range(rounds):
        for name, f in entries.items():
            times[name].append(timed(f))
    return {k: statistics.median(v) for k, v in times.items()}


def measured(client, rounds: int) -> list[str]:
    lines = []
    tiny = list(range(-50_000, 50_000))
    expect = [abs(x) for x in tiny]
    part = tiny[:2_000]

    def autopar_tiny():
        assert autopar.execute(abs, tiny, pool=client) == expect

    def one_task_each():
        assert client.gather(client.map(abs, part, pure=False)) == [abs(x) for x in part]

    def autopar_no_sample():
        assert autopar.execute(abs, tiny, pool=client, sample_time=0) == expect

    t = median_of(rounds, {"autopar": autopar_tiny, "nosample": autopar_no_sample, "map": one_task_each, "loop": lambda: [abs(x) for x in tiny]})
    _, report = autopar.execute(abs, tiny, pool=client, return_report=True)
    _, report0 = autopar.execute(abs, tiny, pool=client, sample_time=0, return_report=True)
    lines += [
        "## 100,000 tiny items",
        "",
        "| run | seconds | tasks |",
        "|---|---:|---:|",
        f"| `execute(abs, items, pool=client)` | {t['autopar']:.3f} | {report.n_chunks} "
        f"(sample ran {report.n_from_sample} items) |",
        f"| the same with `sample_time=0` (the cluster runs the rest) | {t['nosample']:.3f} | {report0.n_chunks} "
        f"(sample ran {report0.n_from_sample} items) |",
        f"| `client.map(abs, items)`, one task an item (2,000 timed, x50) | {50 * t['map']:.1f} | 100,000 |",
        f"| `[abs(x) for x in items]` | {t['loop']:.3f} | - |",
        "",
        f"Target: within 3 s through `pool=client`. Measured **{t['autopar']:.3f} s** (the serial sample "
        f"finished the job, as it should: the cluster would only add round trips), and "
        f"**{t['nosample']:.3f} s** with the items batched into tasks on the cluster.",
        "",
    ]
    items = list(range(80))

    def on_dask():
        assert autopar.execute(spin, items, pool=client) == items

    def local():
        assert autopar.execute(spin, items, executor_type="process", n_jobs=2) == items

    t = median_of(rounds, {"dask": on_dask, "process": local})
    r_heavy = autopar.optimize(spin, items, cluster=client)
    r_tiny = autopar.optimize(abs, tiny, cluster=client)
    lines += [
        "## Items of 50 ms (80 of them, pure Python)",
        "",
        "| run | seconds |",
        "|---|---:|",
        f"| `execute(spin, items, pool=client)` (2 workers x 1 thread) | {t['dask']:.3f} |",
        f"| `execute(spin, items, executor_type='process', n_jobs=2)` | {t['process']:.3f} |",
        "",
        f"Target: dask within 1.3x the local process pool. Measured **{t['dask'] / t['process']:.2f}x**.",
        "",
        f"`optimize(cluster=client)` chose: {r_heavy.label()} for these items; {r_tiny.label()} for "
        "the tiny ones. The cluster runs on this machine's two cores, so a local pool predicted "
        "within 20% of it wins.",
        "",
    ]
    return lines + measured_pack(client, rounds)


def measured_pack(client, rounds: int) -> list[str]:
    from autopar.image.pack import make_demo_data, pack

    address = str(client.scheduler.address)
    with tempfile.TemporaryDirectory(prefix="autopar-bench-pack-") as root:
        src = Path(root) / "in"
        make_demo_data(src, channels=2, timepoints=4, shape=(32, 256, 256))
        outs = iter(range(10**6))

        def run(**kw):
            report = pack(src, Path(root) / f"out{next(outs)}", **kw)
            assert report.ok, report.summary()
            return report

        t = median_of(rounds, {"dask": lambda: run(executor="dask", scheduler=address), "local": lambda: run()})
        chosen = run(scheduler=address)
    how = "; ".join(f"{p.name.split(': ')[1]}: {p.executor} x{p.n_jobs}" for p in chosen.passes)
    return [
        "## `autopar pack` of the sample data (8 stacks of 32 x 256 x 256)",
        "",
        "| run | seconds |",
        "|---|---:|",
        f"| `autopar pack IN OUT --executor dask --scheduler ADDRESS` (every pass on the cluster) | {t['dask']:.3f} |",
        f"| `autopar pack IN OUT` (local pools chosen per pass) | {t['local']:.3f} |",
        "",
        f"Ratio **{t['dask'] / t['local']:.2f}x**. `autopar pack IN OUT --scheduler ADDRESS` chose: {how}.",
        "",
    ]


def predicted(costs: ClusterCosts) -> list[str]:
    """The model's choice for clusters it cannot measure here: on paper."""
    system = dataclasses.replace(system_info(), usable_cores=16)
    local_costs = pool_costs()
    base = autopar.optimize(spin, range(4), executor_type="serial", sample_time=0.01).profile
    lines = [
        "## Predicted, not measured: clusters of 10 and 100 machines",
        "",
        f"The model's choice for 10,000 pure-Python items, a 16-core machine running the caller, "
        f"and clusters of 16-core machines with the round trip measured above "
        f"({costs.task_seconds * 1e3:.2f} ms; {costs.task_share_seconds * 1e3:.2f} ms a task with many queued) "
        f"and 1 GB/s both ways. Items of 1 KB in, 1 KB out. Each machine runs 16 workers of one thread "
        f"(`dask worker --nworkers 16 --nthreads 1`); the last column is 100 machines of one worker of "
        f"16 threads each, where pure Python computes on one thread a worker at a time.",
        "",
        "| item time | 10 machines: choice | predicted s | 100 machines: choice | predicted s "
        "| 100 machines, 16 threads a worker: choice | predicted s | serial s |",
        "|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for item in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        p = dataclasses.replace(
            base, n_items=10_000, exhausted=False, item_time_mean=item, item_time_std=0.0, cpu_ratio=1.0,
            thread_scaling=1.0, probe_threads=2, item_bytes=1024, result_bytes=1024,
        )
        row = [f"{item * 1e3:g} ms"]
        for machines, per_machine in ((10, 16), (100, 16), (100, 1)):
            c = dataclasses.replace(
                costs, workers=per_machine * machines, threads=16 * machines, bytes_per_second_to=1e9,
                bytes_per_second_from=1e9,
            )
            d = decide(p, system, local_costs, executor_types=("serial", "thread", "process", "dask"), cluster=c)
            row += [d.best.label(), f"{d.best.predicted_time:.3g}"]
            serial = d.serial.predicted_time
        lines.append("| " + " | ".join(row + [f"{serial:.3g}"]) + " |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the report here (markdown)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from dask.distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="autopar-bench-dask-") as scratch:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, local_directory=scratch
        ) as cluster, Client(cluster) as client:
            costs = cluster_costs(client)
            lines = [
                "# autopar on Dask",
                "",
                f"Run: `python benchmarks/bench_dask.py --rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}, "
                f"{platform.node()}, Python {platform.python_version()}, {system_info().usable_cores} usable cores; "
                f"a LocalCluster of {costs.workers} worker processes x 1 thread on 127.0.0.1. Medians of "
                f"{args.rounds} alternating runs, all from this one run.",
                "",
                f"Cluster: {costs.workers} workers, {costs.threads} threads; a no-op task's round trip "
                f"{costs.task_seconds * 1e3:.2f} ms, {costs.task_share_seconds * 1e3:.2f} ms a task with "
                f"{200} queued; {costs.bytes_per_second_to / 2**20:.0f} MB/s to the workers, "
                f"{costs.bytes_per_second_from / 2**20:.0f} MB/s back.",
                "",
            ]
            lines += measured(client, args.rounds)
            lines += predicted(costs)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
