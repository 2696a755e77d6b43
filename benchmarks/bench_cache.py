"""What the tuning cache saves: optimize() on a job measured before, against measuring it.

    python benchmarks/bench_cache.py [--out docs/cache.md] [--rounds 20]

For workloads of ``benchmarks/suite.py`` sized to about 0.2 s of serial work (the small
bucket, where the sample costs most), in a tuning cache of the run's own:

1. optimize() with the cache off (``cache=False``): the sample, the probe, the model;
   median of 3.
2. optimize() on a hit, in the same process: median of ``--rounds``.
3. optimize() on a hit in a fresh process (its first call there: the cache file opened,
   the machine's facts read): median of 3 processes.

Then the repeated-run regret, from ``bench_grid.py --cache warm`` (docs/benchmarks_warm.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import autopar  # noqa: E402
import suite  # noqa: E402
from bench_grid import _tuning_cache, size_for  # noqa: E402

WORKLOADS = ["pure-Python loop", "JSON round trips", "sleep 1 ms", "NumPy element-wise", "SciPy filter", "file write+read"]

FRESH = """
import sys, time, tempfile
sys.path.insert(0, {bench!r})
import suite, autopar
name, func, factory, _ = [w for w in suite.WORKLOADS if w[0] == {name!r}][0]
items = factory({count}, {tmp!r})
t0 = time.perf_counter()
r = autopar.optimize(func, items)
print(time.perf_counter() - t0, r.cache)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    scratch = _tuning_cache("warm")  # a cache of the run's own, pool costs copied in
    assert scratch is not None
    rows = []
    try:
        for name, func, factory, _ in suite.WORKLOADS:
            if name not in WORKLOADS:
                continue
            tmp = tempfile.mkdtemp(prefix="autopar-bench-")
            try:
                count, _ = size_for(func, factory, 0.2, tmp)
                items = factory(count, tmp)
                cold = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    autopar.optimize(func, items, cache=False)
                    cold.append(time.perf_counter() - t0)
                first = autopar.optimize(func, items)
                hits = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    r = autopar.optimize(func, items)
                    hits.append(time.perf_counter() - t0)
                    assert r.cache == "hit", (name, r.cache)
                fresh = []
                for _ in range(3):
                    code = FRESH.format(bench=os.path.dirname(os.path.abspath(__file__)), name=name, count=count, tmp=tmp)
                    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                    seconds, state = out.stdout.split()
                    assert state == "hit", (name, state, out.stderr)
                    fresh.append(float(seconds))
                rows.append((name, count, first.label(), statistics.median(cold), statistics.median(hits), statistics.median(fresh)))
                print(f"{name:22} n={count:<6} cold {rows[-1][3] * 1e3:8.1f} ms  hit {rows[-1][4] * 1e3:6.3f} ms  "
                      f"fresh process {rows[-1][5] * 1e3:6.2f} ms", flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines = [
        "# The tuning cache: optimize() on a job measured before",
        "",
        f"Run: `python benchmarks/bench_cache.py --rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.node()}, Python {platform.python_version()}, {autopar.system_info().usable_cores} usable cores. "
        "Jobs of about 0.2 s of serial work; all figures from this one run.",
        "",
        "| workload | items | choice | optimize(), measuring (median of 3) | on a hit, same process "
        f"(median of {args.rounds}) | on a hit, a fresh process's first call (median of 3) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, count, label, cold, hit, fresh in rows:
        lines.append(f"| {name} | {count} | {label} | {cold * 1e3:.1f} ms | {hit * 1e3:.3f} ms | {fresh * 1e3:.2f} ms |")
    worst_hit = max(r[4] for r in rows)
    worst_fresh = max(r[5] for r in rows)
    lines += [
        "",
        f"Target: a repeated optimize() on a known job within 1 ms. On a hit in the same process: at most "
        f"**{worst_hit * 1e3:.2f} ms**; the first call in a fresh process (opening the cache, reading the "
        f"machine's facts once): at most **{worst_fresh * 1e3:.2f} ms**.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
