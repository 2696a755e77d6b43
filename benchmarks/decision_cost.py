"""What deciding costs as the machine grows: cores left idle while optimize() measures, as a
share of the whole job, on 2, 16 and 64 cores, from this machine's measured figures and the
model.

    python benchmarks/decision_cost.py [--bucket medium] [--cores 2,16,64] [--out docs/decision_cost.md]

For each workload of ``benchmarks/suite.py`` (sized as bench_grid.py sizes it), one fresh
interpreter runs ``optimize()`` with the tuning cache off and reports the decision's wall time,
the CPU time the process used meanwhile, and the profile. For each core count C the model
then decides again from that profile on a machine of C cores (the same pool costs) and
predicts the time of the remaining items. The decision's cost is the core-seconds left idle
while measuring over the core-seconds of the whole job:

    idle share(C) = (C x decision wall - decision CPU) / (C x (decision wall + predicted rest(C)))

The CPU a sample uses does not grow with the machine (its serial part runs on one core and
its probe on at most 4 threads), so the cores it leaves idle grow with C while the job's
parallel part shrinks: a share that rises with C is the cost of deciding before working.
Only the C=2 column is a measurement of this machine; the others are the model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time, tempfile, shutil
sys.path.insert(0, {bench!r})
import autopar, suite, bench_grid
name, target = {name!r}, {target!r}
func, factory = bench_grid.workload(name)
tmp = tempfile.mkdtemp(prefix="autopar-decision-")
try:
    count, _ = bench_grid.size_for(func, factory, target, tmp)
    count = min(count, suite.MAX_ITEMS.get(name, count))
    items = bench_grid.fresh(factory(count, tmp))
    c0, t0 = time.process_time(), time.perf_counter()
    r = autopar.optimize(func, items)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    serial = count * r.profile.item_time_mean
    print(json.dumps({{"count": count, "wall": wall, "cpu": cpu, "serial": serial,
                      "pick": f"{{r.executor_type}} x{{r.n_jobs}}", "profile": r.profile.to_dict()}}))
finally:
    shutil.rmtree(tmp, ignore_errors=True)
"""


def measure(name: str, target: float) -> dict[str, Any]:
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), name=name, target=target)
    env = dict(os.environ, AUTOPAR_CACHE="off")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def on_cores(got: dict[str, Any], cores: int) -> tuple[str, float, float]:
    """(pick, predicted rest, idle share) on a machine of ``cores`` cores."""
    from autopar import Profile, pool_costs, system_info
    from autopar.tune.model import decide

    profile = Profile(**got["profile"])
    system = replace(system_info(blas=False), usable_cores=cores, logical_cores=cores, physical_cores=cores)
    d = decide(profile, system, pool_costs())
    rest = d.best.predicted_time
    wall, cpu = got["wall"], got["cpu"]
    idle = max(cores * wall - cpu, 0.0) / (cores * (wall + rest))
    return f"{d.best.executor_type} x{d.best.n_jobs}", rest, idle


def main() -> None:
    import suite
    from bench_grid import BUCKETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket", default="medium", choices=sorted(BUCKETS))
    ap.add_argument("--cores", default="2,16,64")
    ap.add_argument("--only", help="workloads whose name contains this")
    ap.add_argument("--out")
    args = ap.parse_args()
    cores = [int(c) for c in args.cores.split(",")]
    target = BUCKETS[args.bucket][0]
    head = "| workload | items | serial s | decision s | decision CPU s | " + " | ".join(
        f"{c} cores: pick, rest s, idle share" for c in cores
    ) + " |"
    lines = [head, "|---|---:|---:|---:|---:|" + "---|" * len(cores)]
    shares: dict[int, list[float]] = {c: [] for c in cores}
    t_all = time.perf_counter()
    for name, *_ in suite.WORKLOADS:
        if args.only and args.only.lower() not in name.lower():
            continue
        got = measure(name, target)
        cells = []
        for c in cores:
            pick, rest, idle = on_cores(got, c)
            shares[c].append(idle)
            cells.append(f"{pick}, {rest:.3f}, **{100 * idle:.1f}%**")
        lines.append(
            f"| {name} | {got['count']} | {got['serial']:.3f} | {got['wall']:.3f} | {got['cpu']:.3f} | " + " | ".join(cells) + " |"
        )
        print(lines[-1], flush=True)
    summary = ", ".join(
        f"{c} cores: median {100 * statistics.median(v):.1f}%, worst {100 * max(v):.1f}%" for c, v in shares.items() if v
    )
    text = "\n".join(
        [
            f"# The decision's cost by machine size ({time.strftime('%Y-%m-%d')})",
            "",
            f"`python benchmarks/decision_cost.py --bucket {args.bucket} --cores {args.cores}`, "
            f"{(time.perf_counter() - t_all) / 60:.0f} minutes on this machine.",
            "",
            (__doc__ or "").split("\n\n", 2)[-1].strip(),
            "",
            *lines,
            "",
            f"Idle share while deciding: {summary}.",
            "",
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
