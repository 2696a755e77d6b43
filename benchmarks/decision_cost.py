"""What deciding costs as the machine grows: cores left idle while optimize() measures, as a
share of the whole job, on 2, 16 and 64 cores, from this machine's measured figures and the
model.

    python benchmarks/decision_cost.py [--bucket medium] [--cores 2,16,64] [--out docs/decision_cost.md]

For each workload of ``benchmarks/suite.py`` (sized as bench_grid.py sizes it) and each core
count C, one fresh interpreter runs ``optimize()`` with the tuning cache off, its sample
budgeted as it would be on C cores (the sampler's ``cores``: the share of the job it may take
shrinks as the job's time on the cores does), and reports the decision's wall time, the CPU
time the process used meanwhile, and the profile. The model then decides again from that
profile on a machine of C cores (the same pool costs) and predicts the time of the remaining
items. The decision's cost is the core-seconds left idle while measuring over the
core-seconds of the whole job:

    idle share(C) = (C x decision wall - decision CPU) / (C x (decision wall + predicted rest(C)))

The serial part of a sample runs on one core and leaves the others idle, so a sample whose
length does not shrink with C costs a share that rises with C. Only the C=2 column is a
measurement of this machine throughout; for larger C the sample's steps are the ones the
sampler takes on C cores, run here, and the probe runs on this machine's threads (2; on 4 or
more cores it takes 4, each thread the same time a round), the pick and the rest are the model's.
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
import autopar.tune.optimize as _optimize
name, target, cores = {name!r}, {target!r}, {cores!r}
_sample = _optimize.sample
_optimize.sample = lambda *a, **k: _sample(*a, **dict(k, cores=cores))  # the sample budgeted for C cores
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


def measure(name: str, target: float, cores: int) -> dict[str, Any]:
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), name=name, target=target, cores=cores)
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
    head = "| workload | items | serial s | " + " | ".join(
        f"{c} cores: decision s (CPU s), pick, rest s, idle share" for c in cores
    ) + " |"
    lines = [head, "|---|---:|---:|" + "---|" * len(cores)]
    shares: dict[int, list[float]] = {c: [] for c in cores}
    t_all = time.perf_counter()
    for name, *_ in suite.WORKLOADS:
        if args.only and args.only.lower() not in name.lower():
            continue
        cells = []
        for c in cores:
            got = measure(name, target, c)
            pick, rest, idle = on_cores(got, c)
            shares[c].append(idle)
            cells.append(f"{got['wall']:.3f} ({got['cpu']:.3f}), {pick}, {rest:.3f}, **{100 * idle:.1f}%**")
        lines.append(f"| {name} | {got['count']} | {got['serial']:.3f} | " + " | ".join(cells) + " |")
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
