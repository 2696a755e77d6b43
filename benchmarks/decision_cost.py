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
core-seconds of the whole job, on the cores the job can use (U = C, or its item count if
fewer: cores a job of 24 items leaves idle on 64 are not the decision's cost):

    idle share(C) = (U x decision wall - decision CPU) / (U x (decision wall + predicted rest(C)))

The serial part of a sample runs on one core and leaves the others idle, so a sample whose
length does not shrink with C costs a share that rises with C. Only the C=2 column is a
measurement of this machine throughout; for larger C the sample's steps are the ones the
sampler takes on C cores, run here, and the probe runs on this machine's threads (2; on 4 or
more cores it takes 4, each thread the same time a round), the pick and the rest are the model's.
Where the first item and the one run beside it read GIL-free here (two cores busy at once),
the items run beside the first on C cores widen as the sampler does on more cores (as many
more again every 6 ms while the first item runs, up to one a core): on 16 and 64 cores that
step is modelled from the measured item time, not measured (this machine has 2 cores).
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
import autopar.tune.sample.warmup as _warmup
name, target, cores = {name!r}, {target!r}, {cores!r}
_sample = _optimize.sample
_optimize.sample = lambda *a, **k: _sample(*a, **dict(k, cores=cores))  # the sample budgeted for C cores
wave = []  # where the first item and the one beside it read GIL-free: what widening would start from
_ran_together = getattr(_warmup, "_ran_together", None)  # (absent before session 22's code)
def _record(sp, spec):
    _ran_together(sp, spec)
    if sp.first.ahead_round is not None:
        wave.append({{"first": sp.first.time, "delay": spec.delay, "ahead": len(spec.items), "ran": spec.n_ran()}})
if _ran_together is not None:
    _warmup._ran_together = _record
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
                      "pick": f"{{r.executor_type}} x{{r.n_jobs}}", "profile": r.profile.to_dict(),
                      "wave": wave[0] if wave else None}}))
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


def on_cores(got: dict[str, Any], cores: int) -> tuple[str, float, float, float, float, bool]:
    """(pick, predicted rest, idle share, decision wall, decision CPU, widened) on a machine
    of ``cores`` cores; the share of the cores the job can use (one an item at most)."""
    from autopar import Profile, pool_costs, system_info
    from autopar.tune.model import decide

    profile = Profile(**got["profile"])
    wall, cpu = got["wall"], got["cpu"]
    wide = bool(got.get("wave")) and cores > 2
    if wide:
        extra, wall, cpu = widened(got["wave"], profile.item_time_mean, cores, wall, cpu)
        profile = replace(profile, n_sampled=profile.n_sampled + extra)
    system = replace(system_info(blas=False), usable_cores=cores, logical_cores=cores, physical_cores=cores)
    d = decide(profile, system, pool_costs())
    rest = d.best.predicted_time
    usable = min(cores, got["count"])
    idle = max(usable * wall - cpu, 0.0) / (usable * (wall + rest))
    return f"{d.best.executor_type} x{d.best.n_jobs}", rest, idle, wall, cpu, wide


def widened(wave: dict[str, float], item: float, cores: int, wall: float, cpu: float) -> tuple[int, float, float]:
    """Modelled, not measured: the items run beside the first on C cores where the two
    threads read GIL-free here (``_Ahead._widen``'s schedule: one at ``delay``, then as many
    more again every ``PROBE_ROUND_MIN[0]`` while the first item and the one beside it run,
    up to one a core but the caller's and the items pulled ahead, each at the measured item
    time; the wait for the threads' clocks between steps, the memory cap and the probe's
    reading on more threads are left out). Returns the items beyond the one run here, and
    the decision's wall and CPU time on C cores."""
    from autopar.tune import constants

    step = constants.PROBE_ROUND_MIN[0]
    cap = min(cores - 1, int(wave["ahead"]))
    starts, t = [wave["delay"]], wave["delay"] + step
    while len(starts) < cap and t < min(wave["first"], wave["delay"] + item):
        starts += [t] * min(len(starts) + 1, cap - len(starts))
        t += step
    here = max(wave["first"], wave["delay"] + item) if wave["ran"] else wave["first"]
    there = max(wave["first"], max(s + item for s in starts))
    extra = len(starts) - int(wave["ran"])
    return extra, wall - here + there, cpu + extra * item


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
            pick, rest, idle, wall, cpu, wide = on_cores(got, c)
            shares[c].append(idle)
            mark = " widened" if wide else ""
            cells.append(f"{wall:.3f} ({cpu:.3f}){mark}, {pick}, {rest:.3f}, **{100 * idle:.1f}%**")
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
