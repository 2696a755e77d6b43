"""Jobs as a user's script runs them once: each timed run in a fresh process, the tuning
cache off. Two things mislead a serial sample there: a function whose first call pays a
one-time cost (a heavy import inside it, a table built by the first call), and a machine
whose cores other processes use (CPU hogs beside the job).

    python benchmarks/first_call.py [--rounds 5] [--hogs 0,3] [--out docs/first_call.md]

Each row runs serial, thread x2, process x2 and autopar (``execute()``, its ``optimize()``
inside the timing) in a fresh interpreter, in an order that alternates per round; with
``--hogs 3``, three processes spin beside every run. Regret is autopar's median over the
best median of the plain ways. ``--before DIR`` adds a column: autopar from another
checkout (DIR on ``PYTHONPATH``), to compare before and after in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import sys, time
sys.path.insert(0, {bench!r})
import first_call_work as w
func = getattr(w, {func!r})
items = w.items({func!r})
how = {how!r}
if how in ("autopar", "before"):
    import autopar  # before the clock: a script imports it anyway; the decision is timed
t0 = time.perf_counter()
if how == "serial":
    out = [func(x) for x in items]
elif how in ("autopar", "before"):
    out = autopar.execute(func, items)
else:
    import concurrent.futures as cf
    kind, n = how.split("x")
    Pool = cf.ThreadPoolExecutor if kind == "thread" else cf.ProcessPoolExecutor
    with Pool(int(n)) as ex:
        out = list(ex.map(func, items, chunksize=max(1, len(items) // (4 * int(n)))))
took = time.perf_counter() - t0
assert len(out) == len(items)
print(took)
"""

WAYS = ["serial", "threadx2", "processx2", "autopar"]
ROWS = ["lazy_import", "lazy_table", "pure_python", "numpy_fft"]


BEFORE: list[str] = []


def run_once(func: str, how: str) -> float:
    env = dict(os.environ, AUTOPAR_CACHE="off")
    if how == "before":
        env["PYTHONPATH"] = BEFORE[0]
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), func=func, how=how)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{func} {how}: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hogs", default="0,3", help="CPU hogs beside the runs, one table each")
    ap.add_argument("--only", help="rows whose name contains this")
    ap.add_argument("--out")
    ap.add_argument("--before", help="another checkout's folder: its autopar as a column of its own")
    args = ap.parse_args()
    ways = WAYS + (["before"] if args.before else [])
    if args.before:
        BEFORE.append(os.path.abspath(args.before))
    lines = [f"# First runs: fresh processes, the tuning cache off ({time.strftime('%Y-%m-%d')})", ""]
    lines.append(f"`python benchmarks/first_call.py --rounds {args.rounds} --hogs {args.hogs}`; medians in seconds.")
    for hogs in [int(h) for h in args.hogs.split(",")]:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(0.2 if hogs else 0)
            extra = " | regret before" if args.before else ""
            lines += ["", f"## {hogs} CPU hogs beside each run", "", "| job | " + " | ".join(ways) + " | regret" + extra + " |", "|---" * (len(ways) + 2 + bool(args.before)) + "|"]
            for row in ROWS:
                if args.only and args.only not in row:
                    continue
                times: dict[str, list[float]] = {w: [] for w in ways}
                for r in range(args.rounds):
                    order = ways if r % 2 == 0 else ways[::-1]
                    for how in order:
                        times[how].append(run_once(row, how))
                med = {w: statistics.median(v) for w, v in times.items()}
                best = min(v for w, v in med.items() if w not in ("autopar", "before"))
                regret = f" | {med['autopar'] / best:.2f}" + (f" | {med['before'] / best:.2f}" if args.before else "")
                lines.append(f"| {row} | " + " | ".join(f"{med[w]:.3f}" for w in ways) + regret + " |")
                print(lines[-1], flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
