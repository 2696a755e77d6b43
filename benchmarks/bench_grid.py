"""Regret of autopar's pick against a brute-forced grid, in three size buckets, with the
baselines a user would write instead.

    python benchmarks/bench_grid.py [--buckets small,medium,large] [--only NAME] [--out docs/benchmarks.md]
    python benchmarks/bench_grid.py --cache warm --out docs/benchmarks_warm.md   # the repeated run of each job
    python benchmarks/bench_grid.py --cold --out docs/benchmarks_cold.md         # each run a script's first
    python benchmarks/bench_grid.py --hogs 3 ...                                 # beside three spinning processes

Workloads come from ``benchmarks/suite.py``. Each is sized for the bucket by timing a few of
its items serially: about 0.2 s of serial work (small), 1 s (medium) and 10 s (large; eight of
the workloads). For each workload:

1. every grid configuration runs once: serial; threads x 2, 4, 8 (and 16, 64 for work that
   waits) with chunksize len/(4n); processes x 2 and 4 with chunksize 1, 4, len/(16n) and
   len/(4n) (chunksize 1 left out past 5,000 items). The large bucket runs a shorter grid.
2. then rounds, each running once, in an order shuffled per round: autopar (``execute()`` with its own
   ``optimize()`` inside the timing), the three fastest grid configurations (two in the large
   bucket) and the fastest of each kind (serial, threads, processes), and the
   baselines: ``ProcessPoolExecutor()`` and ``ThreadPoolExecutor()`` with their defaults
   (``list(ex.map(f, items))``, pool start included) and ``joblib.Parallel(n_jobs=-1)``.
   Medians over the rounds (5 small, 5 medium, 1 large; 5 for a row whose grid best took
   under a second).

A workload capped for memory (``suite.MAX_ITEMS``) at under half of a bucket's size is left
out of every bucket but the small one: 120 results of 16 MB are about 0.1 s of work, the same
job in each bucket.

Every timed entry starts on a quiet process (``settle``): a forked process run leaves the
caller's OpenBLAS threads spinning for about 0.1 s, which otherwise cost whichever entry came
next a core. And every entry starts with the garbage collector's debts paid (a full
collection before it): a full collection walks every object the process holds, 0.1 s with
the JSON row's 180 nested documents alive, and which entry paid for it depended on the
entries before it (the same serial loop took 0.20 s, or 0.30 s with a full collection in it).

The tuning cache is off by default (every autopar entry is a job's first run, its sample
included). ``--cache warm``: each job runs once untimed first, in a tuning cache of the run's
own, so every timed autopar entry is a repeated run, decided from the kept figures without a
sample (the one-shot generator workload is keyed by its kind of iterator since session 21;
before, it had no key and was measured every time).

``--cold``: every entry of the rounds (autopar, the grid's top configurations, the
baselines) runs in a fresh interpreter that builds the items, imports autopar and then times
the entry alone, the tuning cache off: how a user's script runs a job once, first calls and
all (the first grid pass, which only picks the entries, stays in the benchmark's process).
``--hogs N``: N processes spin beside the whole run, the grid's best measured under the same
load as autopar.

Regret is autopar's median over the best median of the re-timed grid entries (serial is one).
A baseline's figure is the same ratio for it. All figures come from one run on one machine.

The process keeps the heap it frees, in one arena for all threads (glibc ``mallopt``;
``--malloc-default`` leaves the allocator as it is): on a virtual machine that hands freed
guest memory back to its host, the first touch of memory is the host's cost and varies from
moment to moment (the same serial loop making 120 results of 16 MB took 0.65-3.8 s, 62,000
page faults each time), and with an arena per thread, threads fault on fresh memory where the
caller reuses its own. Rows would measure the host and the allocator's history rather than
the configuration. Every configuration runs under the same setting. Between workloads the
freed heap goes back to the system (``malloc_trim``): kept, it slowed every later fork.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import autopar  # noqa: E402
import suite  # noqa: E402

CACHE_WARM = [False]  # --cache warm: autopar's entries are repeated runs of a job it has measured
COLD = [False]  # --cold: the rounds' entries each run in a fresh interpreter
FLOOR = "floor"  # the grid's fastest configuration timed again: a perfect, free pick's regret
ROUNDS_GIVEN = [False]  # --rounds: exactly that many rounds, quick rows too
MALLOC_DEFAULT = [False]  # --malloc-default, passed on to --cold's interpreters
QUICK_BEST, QUICK_ROUNDS = 1.0, 5  # a row whose best is under QUICK_BEST s gets at least QUICK_ROUNDS rounds
BUCKETS = {"small": (0.2, 5), "medium": (1.0, 5), "large": (10.0, 1)}
LARGE = {"pure-Python loop", "string building", "sha256 4 MB", "NumPy element-wise", "sleep 20 ms",
         "skewed loops", "lzma", "TIFF to WebP"}


def fresh(items: Any) -> Any:
    """The input for one run: a new generator for the one-shot workload, else the list."""
    if isinstance(items, tuple) and items and items[0] == "gen":
        return (x for x in items[1])
    return items


def count_of(items: Any) -> int:
    return len(items[1]) if isinstance(items, tuple) else len(items)


TRACE: list[Any] = [None, ""]  # [the open --trace file, the bucket and workload running]


def _counters() -> tuple[float, int, list[int]]:
    return time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt, [g["collections"] for g in gc.get_stats()]


def trace(key: str, wall: float, before: tuple[float, int, list[int]]) -> None:
    """One line of ``--trace``: an entry's wall and process CPU time, page faults and
    collections by generation, to find what made a row slow."""
    if TRACE[0] is None:
        return
    cpu, faults, gcs = before
    now = _counters()
    line = {
        "workload": TRACE[1], "entry": key, "wall": round(wall, 5), "cpu": round(now[0] - cpu, 5),
        "faults": now[1] - faults, "collections": [b - a for a, b in zip(gcs, now[2])],
    }
    TRACE[0].write(json.dumps(line) + "\n")
    TRACE[0].flush()


def timed(fn: Callable[[], Any], key: str = "") -> float:
    """Seconds ``fn()`` took; its result is freed after the clock stops, as for every entry."""
    before = _counters()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    del out
    trace(key, elapsed, before)
    return elapsed


def keep_freed_memory() -> bool:
    """Make glibc keep freed heap (no trimming, a fixed mmap threshold) in one arena that
    every thread shares; False where this is not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all(
        libc.mallopt(option, value)
        for option, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 2**31 - 1), (m_arena_max, 1))
    )


def settle(window: float = 0.02, busy: float = 0.2, most: float = 0.5) -> None:
    """Wait until this process has used under ``busy`` of a core over ``window`` seconds
    (``most`` seconds at the longest): each entry starts on a quiet process. A forked
    process run leaves the caller's OpenBLAS threads spinning for about 0.1 s (CONTEXT.md,
    Known short), which cost whichever entry came next a core: 187 sleeps of 1 ms took 19 ms
    after most entries and 35-44 ms right after a process run. A full collection first, so
    that no entry pays for the garbage the ones before it left."""
    gc.collect()
    end = time.perf_counter() + most
    while True:
        p0, t0 = time.process_time(), time.perf_counter()
        time.sleep(window)
        if (time.process_time() - p0) / (time.perf_counter() - t0) < busy or time.perf_counter() > end:
            return


def release_freed_memory() -> None:
    """Between workloads, hand the heap one workload freed back to the system: kept, it
    made every later fork copy its page tables (3.9 GB after 120 results of 16 MB: a pool of
    2 on the generator row ran 177 ms instead of 124 ms, and processes lost to threads
    there)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def size_for(func: Callable[[Any], Any], factory: Any, target: float, tmp: str) -> tuple[int, float]:
    """Items for ``target`` seconds of serial work, and the CPU/wall ratio of a few items."""
    probe = factory(6, tmp)
    probe = probe[1] if isinstance(probe, tuple) else probe
    func(probe[0])  # warm-up
    for _ in range(2):  # the second pass is the steady state (memory reused, caches warm)
        # The calling thread's CPU: the process's would count threads that are not the items'
        # (a BLAS pool spinning after an import read 5 sleeps of 1 ms as computing, and the
        # grid lost its 16 and 64 threads).
        c0, t0 = time.thread_time(), time.perf_counter()
        kept = [func(x) for x in probe[1:]]  # results kept, as the real run keeps them
        wall = time.perf_counter() - t0
        del kept
    ratio = (time.thread_time() - c0) / wall if wall > 0 else 1.0
    per_item = wall / max(len(probe) - 1, 1)
    return max(4, round(target / max(per_item, 1e-7))), ratio


def grid(n_items: int, waiting: bool, bucket: str) -> list[tuple[str, int, int]]:
    q = lambda n, parts: max(1, math.ceil(n_items / (parts * n)))  # noqa: E731
    configs = [("serial", 1, 1)]
    if bucket == "large":
        configs += [("thread", 2, q(2, 4))] + ([("thread", 64, q(64, 4))] if waiting else [("thread", 8, q(8, 4))])
        configs += [("process", 2, cs) for cs in sorted({q(2, 4), q(2, 16)} | ({1} if n_items <= 200 else set()))]
        configs += [("process", 4, q(4, 4))]
        return configs
    for n in (2, 4, 8) + ((16, 64) if waiting else ()):
        configs.append(("thread", n, q(n, 4)))
    for n in (2, 4):
        sizes = {4, q(n, 16), q(n, 4)} | ({1} if n_items <= 5000 else set())
        configs += [("process", n, cs) for cs in sorted(sizes)]
    return configs


def label(kind: str, n: int, cs: int) -> str:
    return "serial" if kind == "serial" else f"{kind} x{n} cs {cs}"


def baselines() -> dict[str, Callable[[Callable[[Any], Any], Any], Any]]:
    def ppe(f: Callable[[Any], Any], items: Any) -> Any:
        with ProcessPoolExecutor() as ex:
            return list(ex.map(f, items))

    def tpe(f: Callable[[Any], Any], items: Any) -> Any:
        with ThreadPoolExecutor() as ex:
            return list(ex.map(f, items))

    out = {"ProcessPoolExecutor()": ppe, "ThreadPoolExecutor()": tpe}
    try:
        from joblib import Parallel, delayed

        out["joblib n_jobs=-1"] = lambda f, items: Parallel(n_jobs=-1)(delayed(f)(x) for x in items)
    except ImportError:
        pass
    return out


def workload(name: str) -> tuple[Callable[[Any], Any], Any]:
    for w in suite.WORKLOADS + [suite.TINY]:
        if w[0] == name:
            return w[1], w[2]
    raise KeyError(name)


def in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """One entry timed in a fresh interpreter (``--cold``): what :func:`child` printed."""
    env = dict(os.environ, AUTOPAR_CACHE="off")
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{spec}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(spec: dict[str, Any]) -> None:
    """The fresh interpreter's side of ``--cold``: build the items, time the one entry."""
    if not spec.get("malloc_default") and sys.platform.startswith("linux"):
        keep_freed_memory()
    func, factory = workload(spec["name"])
    items = factory(spec["count"], spec["tmp"])
    how = spec["how"]
    gc.collect()
    report = None
    t0 = time.perf_counter()
    if how == "autopar":
        out, report = autopar.execute(func, fresh(items), return_report=True)
    elif how == "serial":
        out = [func(x) for x in fresh(items)]
    elif how in baselines():
        out = baselines()[how](func, fresh(items))
    else:
        kind, nj, cs = spec["config"]
        out = autopar.execute(func, fresh(items), executor_type=kind, n_jobs=nj, chunksize=cs, adapt=False)
    took = time.perf_counter() - t0
    assert len(out) == count_of(items), (spec, len(out))
    line: dict[str, Any] = {"time": took}
    if report is not None:
        line.update(
            pick=label(report.executor_type, report.n_jobs, report.chunksize) + (" *" if report.fell_back else ""),
            predicted=report.predicted_speedup or 1.0,
            measured=report.measured_speedup or 1.0,
            optimize_time=report.optimize_time,
            n_from_sample=report.n_from_sample,
        )
    print(json.dumps(line))


def run_workload(
    name: str, func: Callable[[Any], Any], items: Any, waiting: bool, bucket: str, rounds: int, count: int = 0, tmp: str = ""
) -> dict[str, Any]:
    n = count_of(items)
    spec = {"name": name, "count": count, "tmp": tmp, "malloc_default": MALLOC_DEFAULT[0]}

    def forced(kind: str, nj: int, cs: int, cold: bool = False) -> float:
        if cold:
            return in_fresh_process(dict(spec, how="serial" if kind == "serial" else "config", config=(kind, nj, cs)))["time"]
        settle()
        if kind == "serial":
            return timed(lambda: [func(x) for x in fresh(items)], "serial")
        return timed(
            lambda: autopar.execute(func, fresh(items), executor_type=kind, n_jobs=nj, chunksize=cs, adapt=False),
            label(kind, nj, cs),
        )

    first = sorted((forced(*c), c) for c in grid(n, waiting, bucket))
    top = [c for _, c in first[: 3 if bucket != "large" else 2]]
    for kind in ("serial", "thread", "process"):  # one pass is noisy: each kind's best goes on
        best_of_kind = next(c for _, c in first if c[0] == kind)
        if best_of_kind not in top:
            top.append(best_of_kind)
    base = baselines()
    times: dict[str, list[float]] = {label(*c): [] for c in top}
    times["autopar"] = []
    times[FLOOR] = []
    for b in base:
        times[b] = []
    picks, predicted, measured, overheads = [], [], [], []
    serial_estimate = next(t for t, c in first if c[0] == "serial")
    def auto() -> None:
        if COLD[0]:
            got = in_fresh_process(dict(spec, how="autopar"))
            times["autopar"].append(got["time"])
            picks.append(got["pick"])
            predicted.append(got["predicted"])
            measured.append(got["measured"])
            useful = got["n_from_sample"] * serial_estimate / n
            overheads.append(max(got["optimize_time"] - useful, 0.0) / serial_estimate)
            return
        settle()
        before = _counters()
        t0 = time.perf_counter()
        out, report = autopar.execute(func, fresh(items), return_report=True)
        times["autopar"].append(time.perf_counter() - t0)
        fell = f" * from item {report.fallback[0]} to {report.fallback[1]}" if report.fallback else ""
        trace("autopar " + label(report.executor_type, report.n_jobs, report.chunksize) + fell, times["autopar"][-1], before)
        assert len(out) == n, (name, len(out), n)
        del out
        picks.append(label(report.executor_type, report.n_jobs, report.chunksize) + (" *" if getattr(report, "fell_back", False) else ""))
        predicted.append(report.predicted_speedup or 1.0)
        measured.append(report.measured_speedup or 1.0)
        useful = report.n_from_sample * serial_estimate / n
        overheads.append(max(report.optimize_time - useful, 0.0) / serial_estimate)

    def entry(key: str, fn: Callable[[], float]) -> Callable[[], None]:
        def run() -> None:
            # A pathological baseline (over 5 s and 5x the grid's best) runs once.
            if key in base and times[key] and times[key][0] > max(5.0, 5 * first[0][0]):
                return
            if key in base and not COLD[0]:  # (grid entries settle in forced())
                settle()
            times[key].append(fn())

        return run

    if CACHE_WARM[0]:
        # The job ran before (untimed): its figures are in the tuning cache, and every timed
        # run decides from them, without a sample, and feeds its own back.
        settle()
        autopar.execute(func, fresh(items))
    if first[0][0] < QUICK_BEST and not ROUNDS_GIVEN[0]:
        # One run of a job the grid did in under a second is one noisy sample (sleeps of
        # 20 ms in the large bucket: 0.30, 0.23 and 0.18 s in three runs of the same code).
        rounds = max(rounds, QUICK_ROUNDS)
    entries = [auto]
    # The first pass's fastest configuration again, as an entry of its own: what a pick that
    # is always right and costs nothing reads against the best of the re-timed grid (the
    # noise of this run, and the min over several entries' medians, put it above 1).
    entries.append(entry(FLOOR, lambda c=first[0][1]: forced(*c, cold=COLD[0])))
    entries += [entry(label(*c), lambda c=c: forced(*c, cold=COLD[0])) for c in top]
    if COLD[0]:
        entries += [entry(b, lambda b=b: in_fresh_process(dict(spec, how=b))["time"]) for b in base]
    else:
        entries += [entry(b, lambda fn=fn: timed(lambda: fn(func, fresh(items)), b)) for b, fn in base.items()]
    order = random.Random(name)  # the same orders for a workload in every run
    for _ in range(rounds):
        # Each round in its own order: no entry always runs after the same one. (Rotating
        # where a round starts, as before, kept every entry's neighbour: autopar ran right
        # after joblib in every round but one.)
        for run in order.sample(entries, len(entries)):
            run()
    med = {k: statistics.median(v) for k, v in times.items() if v}
    # The best is the fastest grid configuration re-timed in the rounds (serial included).
    # Baselines are reported against it; one under 1.0 beat the grid (e.g. joblib's workers
    # stay warm from one call to the next, which no configuration of a fresh pool can).
    contenders = {label(*c): med[label(*c)] for c in top}
    best_label = min(contenders, key=contenders.get)  # type: ignore[arg-type]
    best = contenders[best_label]
    serial = med["serial"]
    return {
        "name": name,
        "bucket": bucket,
        "items": n,
        "serial": serial,
        "best": best,
        "best_config": best_label,
        "pick": max(set(picks), key=picks.count),
        "auto": med["autopar"],
        "regret": med["autopar"] / best,
        "vs_serial": med["autopar"] / serial,
        "serial_best": best_label == "serial",
        "overhead": statistics.median(overheads),
        "predicted": statistics.median(predicted),
        "measured": statistics.median(measured),
        "baselines": {b: med[b] / best for b in base if b in med},
        "worst": first[-1][0] / best,
        "worst_config": label(*first[-1][1]),
        "floor": med[FLOOR] / best,
    }


def geo(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def table(rows: list[dict[str, Any]], bucket: str) -> str:
    rows = [r for r in rows if r["bucket"] == bucket]
    if not rows:
        return ""
    names = list(rows[0]["baselines"])
    head = (
        "| workload | items | serial s | best (brute force) | best s | autopar pick | autopar s | regret | floor "
        "| vs serial | overhead | speedup pred. / meas. | " + " | ".join(names) + " | worst grid entry |\n"
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(names) + "---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['items']} | {r['serial']:.3f} | {r['best_config']} | {r['best']:.3f} | {r['pick']} "
            f"| {r['auto']:.3f} | **{r['regret']:.2f}** | {r['floor']:.2f} | {r['vs_serial']:.2f} | {100 * r['overhead']:.1f}% "
            f"| {r['predicted']:.2f} / {r['measured']:.2f} | "
            + " | ".join(f"{r['baselines'].get(b, float('nan')):.2f}" for b in names)
            + f" | {r['worst_config']} ({r['worst']:.1f}x) |"
        )
    regrets = [r["regret"] for r in rows]
    worst = max(rows, key=lambda r: r["regret"])
    serial_rows = [r for r in rows if r["serial_best"]]
    summary = [
        "",
        f"**{bucket}**: geometric-mean regret **{geo(regrets):.2f}**, worst **{worst['regret']:.2f}** "
        f"({worst['name']}); {len(rows)} workloads.",
    ]
    top = max(rows, key=lambda r: r["floor"])
    summary.append(
        f"Floor (the first pass's fastest configuration timed again in the rounds, as an entry of its own: "
        f"the regret of a pick always right and free, in this run): geometric mean "
        f"**{geo([r['floor'] for r in rows]):.2f}**, worst **{top['floor']:.2f}** ({top['name']})."
    )
    if serial_rows:
        w = max(serial_rows, key=lambda r: r["vs_serial"])
        line = f"Where serial was best ({len(serial_rows)}), autopar took at most **{w['vs_serial']:.2f}x** serial ({w['name']})"
        others = [r for r in serial_rows if r["name"] != suite.TINY[0]]
        if w["name"] == suite.TINY[0] and others:
            # The tiny calls have a target of their own (1.3x a bare loop, below).
            o = max(others, key=lambda r: r["vs_serial"])
            line += f"; leaving out the tiny calls, **{o['vs_serial']:.2f}x** ({o['name']})"
        summary.append(line + ".")
    for b in names:
        vals = [r["baselines"][b] for r in rows if b in r["baselines"]]
        summary.append(f"{b}: geometric-mean ratio to the best {geo(vals):.2f}, worst {max(vals):.2f}.")
    return f"### Bucket: {bucket}\n\n" + head + "\n".join(lines) + "\n" + "\n\n".join(summary) + "\n"


def tiny_row() -> str:
    name, func, factory, _ = suite.TINY
    items = factory(0, "")
    loops, autos = [], []
    for _ in range(9):  # alternating
        loops.append(timed(lambda: [func(x) for x in items], "serial"))
        autos.append(timed(lambda: autopar.execute(func, items), "autopar"))
    loop, auto = statistics.median(loops), statistics.median(autos)
    return (
        f"{name}: autopar **{auto * 1e3:.1f} ms** against {loop * 1e3:.1f} ms for a bare list "
        f"comprehension (**{auto / loop:.2f}x**), medians of 9 runs each.\n"
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", default="small,medium,large")
    parser.add_argument("--only", help="only workloads whose name contains this")
    parser.add_argument("--rounds", type=int, help="override the rounds per bucket")
    parser.add_argument("--out", help="write a Markdown report here")
    parser.add_argument("--trace", help="write a JSON line per timed entry here (wall, CPU, page faults, collections)")
    parser.add_argument("--malloc-default", action="store_true", help="leave the allocator's trimming as it is")
    parser.add_argument(
        "--cache", choices=["off", "warm"], default="off",
        help="the tuning cache: off (every autopar run measures: a job's first run) or warm (each job runs once "
        "untimed first, in a cache of the run's own: its repeated runs)",
    )
    parser.add_argument("--cold", action="store_true", help="each entry of the rounds in a fresh interpreter (a script's first run)")
    parser.add_argument("--hogs", type=int, default=0, help="processes spinning beside the whole run")
    args = parser.parse_args()
    if args.cold and args.cache == "warm":
        parser.error("--cold runs each job once in a fresh process: the tuning cache stays off")
    COLD[0], MALLOC_DEFAULT[0], ROUNDS_GIVEN[0] = args.cold, args.malloc_default, args.rounds is not None
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    try:
        _main(args)
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _main(args: argparse.Namespace) -> None:
    cache_scratch = _tuning_cache(args.cache)
    TRACE[0] = open(args.trace, "w") if args.trace else None
    kept = not args.malloc_default and sys.platform.startswith("linux") and keep_freed_memory()
    autopar.pool_costs()  # measured once per machine; not part of any timing
    info = autopar.system_info()
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str, int, int]] = []
    buckets = [b.strip() for b in args.buckets.split(",")]
    t_all = time.perf_counter()
    for bucket in buckets:
        target, rounds = BUCKETS[bucket]
        rounds = args.rounds or rounds
        for name, func, factory, _note in suite.WORKLOADS + [suite.TINY] * (bucket == "small"):
            if bucket == "large" and name not in LARGE:
                continue
            if args.only and args.only.lower() not in name.lower():
                continue
            tmp = tempfile.mkdtemp(prefix="autopar-bench-")
            try:
                count, ratio = size_for(func, factory, target, tmp) if name != suite.TINY[0] else (0, 1.0)
                cap = suite.MAX_ITEMS.get(name, count)
                if cap < count / 2 and bucket != "small":
                    # Capped for memory at under half the bucket's work: a smaller job, not this bucket's.
                    print(f"[{bucket}] {name:24} left out: {cap} items (the memory cap) are under half of {count}", flush=True)
                    skipped.append((bucket, name, cap, count))
                    continue
                count = min(count, cap)
                items = factory(count, tmp)
                t0 = time.perf_counter()
                TRACE[1] = f"{bucket}: {name}"
                row = run_workload(name, func, items, ratio < 0.5, bucket, rounds, count=count, tmp=tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                items = None  # the workload's data goes before the next one
                release_freed_memory()
            rows.append(row)
            print(
                f"[{bucket}] {name:24} n={row['items']:<7} serial {row['serial']:.3f}s best {row['best_config']} "
                f"{row['best']:.3f}s | autopar {row['pick']} {row['auto']:.3f}s regret {row['regret']:.2f} (floor {row['floor']:.2f}) "
                f"| baselines {' '.join(f'{v:.2f}' for v in row['baselines'].values())} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    try:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    except ImportError:
        pass
    parts = [table(rows, b) for b in buckets]
    parts += [
        f"Left out of **{b}**: {n}, whose memory cap of {cap} items is under half of the {want} the bucket's "
        "size asks for (its row in a smaller bucket is the same job).\n"
        for b, n, cap, want in skipped
    ]
    if "small" in buckets and not args.only and not args.cold:
        TRACE[1] = f"small: {suite.TINY[0]} (its own line)"
        parts.append(tiny_row())
    text = "\n".join(p for p in parts if p)
    print()
    print(text)
    if args.out:
        machine = (
            f"{info.usable_cores} usable cores ({info.physical_cores} physical), "
            f"{info.total_memory / 2**30:.0f} GiB, {info.python}, {platform.platform()}, start method {info.start_method}"
        )
        with open(args.out, "w") as fh:
            fh.write("# Benchmark: autopar's pick against a brute-forced grid and the usual baselines\n\n")
            fh.write(
                f"Machine: {machine}. Run: `python benchmarks/bench_grid.py --buckets {args.buckets}"
                f"{' --rounds %d' % args.rounds if args.rounds else ''}{' --malloc-default' * args.malloc_default}"
                f"{' --cache warm' * (args.cache == 'warm')}{' --cold' * args.cold}"
                f"{' --hogs %d' % args.hogs if args.hogs else ''} "
                f"--out {args.out}` on {time.strftime('%Y-%m-%d')}, {(time.perf_counter() - t_all) / 60:.0f} minutes; "
                f"freed heap {'kept in one arena' if kept else 'trimmed as the allocator does by default'}.\n\n"
            )
            fh.write((__doc__ or "").split("\n\n", 2)[-1].strip() + "\n\n")
            fh.write("Columns: regret = autopar / best; vs serial = autopar / serial; overhead = optimize() time "
                     "beyond the useful work its sample did, over serial; the baseline columns are each "
                     "baseline's time over the best. A `*` after a pick: the run fell back to another "
                     "configuration while running.\n\n")
            fh.write(text + "\n")
    if TRACE[0] is not None:  # after the tiny calls line, which is timed too
        TRACE[0].close()
        TRACE[0] = None
    if cache_scratch is not None:
        shutil.rmtree(cache_scratch, ignore_errors=True)


def _tuning_cache(mode: str) -> str | None:
    """``off``: AUTOPAR_CACHE=off. ``warm``: a cache folder of the run's own (the measured
    pool costs copied in, so they are not measured again); returns it, to remove at the end."""
    if mode == "off":
        os.environ["AUTOPAR_CACHE"] = "off"
        return None
    from autopar.tune.costs import cache_dir

    autopar.pool_costs()
    scratch = tempfile.mkdtemp(prefix="autopar-bench-cache-")
    for f in cache_dir().glob("pool-costs-*.json"):
        shutil.copy(f, scratch)
    os.environ["AUTOPAR_CACHE_DIR"] = scratch
    os.environ.pop("AUTOPAR_CACHE", None)
    CACHE_WARM[0] = True
    return scratch


if __name__ == "__main__":
    sys.exit(main())
