"""The service API's figures (issue 9's targets), one run, written as Markdown.

    python benchmarks/bench_service.py [--out docs/service.md] [--calls 1000] [--rounds 7]

1. Per-call overhead: ``await m.run_io(noop)`` against ``await asyncio.to_thread(noop)``,
   one call at a time, rounds alternating between the two; medians of each round's median.
   ``m.run_cpu(noop)`` on a warm pool, the same way (and ``m.run(noop)`` once routed).
2. 10,000 ``run_io`` awaits at once (each sleeps 10 ms): the most calls running, the threads
   the process had, and the memory Python allocated at the peak (tracemalloc), against the
   same awaits through ``asyncio.to_thread``.
3. Throttle: a CPU hog on every core started by the benchmark; seconds until the manager's
   admission limit drops, and until it is back after the hog ends.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc

import psutil

import autopar
from autopar import Manager


def noop() -> None:
    return None


def nap() -> None:
    time.sleep(0.01)


def _hog(stop) -> None:  # noqa: ANN001
    while not stop.is_set():
        pass


async def _median_us(call, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


async def overhead(m: Manager, calls: int, rounds: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {"run_io": [], "to_thread": [], "run_cpu": [], "run": []}
    m.warm()
    for _ in range(20):  # routes measured, threads started
        await m.run(noop)
        await m.run_cpu(noop)
        await m.run_io(noop)
        await asyncio.to_thread(noop)
    for r in range(rounds):
        pair = [("run_io", lambda: m.run_io(noop)), ("to_thread", lambda: asyncio.to_thread(noop))]
        for name, call in pair if r % 2 == 0 else pair[::-1]:
            runs[name].append(await _median_us(call, calls))
        runs["run_cpu"].append(await _median_us(lambda: m.run_cpu(noop), calls // 2))
        runs["run"].append(await _median_us(lambda: m.run(noop), calls))
    return {k: statistics.median(v) for k, v in runs.items()}


async def crowd(n: int, through_manager: bool) -> dict[str, float]:
    me = psutil.Process()
    peak_threads = [me.num_threads()]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            peak_threads[0] = max(peak_threads[0], me.num_threads())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    if through_manager:
        with Manager(throttle=False) as m:
            await asyncio.gather(*(m.run_io(nap) for _ in range(n)))
            running, limit = m.stats()["io"]["max_concurrent"], m.stats()["io"]["limit"]
    else:
        await asyncio.gather(*(asyncio.to_thread(nap) for _ in range(n)))
        running, limit = float("nan"), float("nan")
    took = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stop.set()
    watcher.join()
    return {"seconds": took, "peak_mb": peak / 2**20, "max_running": running, "limit": limit, "threads": peak_threads[0]}


def throttle_times() -> dict[str, float]:
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    with Manager(io_workers=8, throttle=True) as m:
        time.sleep(1.0)  # a quiet baseline
        base = m.gates["thread"].limit
        hogs = [ctx.Process(target=_hog, args=(stop,)) for _ in range(autopar.usable_cores())]
        t0 = time.monotonic()
        for h in hogs:
            h.start()
        while m.gates["thread"].limit >= base and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        dropped = time.monotonic() - t0
        low, reason = m.gates["thread"].limit, m.throttle.reason
        time.sleep(1.0)
        stop.set()
        t1 = time.monotonic()
        for h in hogs:
            h.join()
        while m.gates["thread"].limit < base and time.monotonic() - t1 < 10:
            time.sleep(0.01)
        back = time.monotonic() - t1
    return {"base": base, "low": low, "dropped_s": dropped, "back_s": back, "reason": reason}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/service.md")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--crowd", type=int, default=10_000)
    args = ap.parse_args()
    t_start = time.time()

    async def run_all():
        with Manager(cpu_workers=2, throttle=False) as m:
            o = await overhead(m, args.calls, args.rounds)
        c_m = await crowd(args.crowd, True)
        c_t = await crowd(args.crowd, False)
        return o, c_m, c_t

    o, c_m, c_t = asyncio.run(run_all())
    th = throttle_times()
    ratio = o["run_io"] / o["to_thread"]
    lines = [
        "# Service API: overhead, crowds, throttle",
        "",
        f"Machine: {autopar.usable_cores()} usable cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"CPython {platform.python_version()}, {platform.platform()}. Run: `python benchmarks/bench_service.py "
        f"--out {args.out}` on {time.strftime('%Y-%m-%d')}, {time.time() - t_start:.0f} s. One run; what each figure is: "
        "the script's docstring.",
        "",
        "## Per-call overhead (one call at a time, medians of per-round medians)",
        "",
        "| call | median us | target |",
        "|---|---:|---|",
        f"| `await m.run_io(noop)` | {o['run_io']:.1f} | <= 1.5x to_thread: **{ratio:.2f}x** |",
        f"| `await asyncio.to_thread(noop)` | {o['to_thread']:.1f} | |",
        f"| `await m.run_cpu(noop)`, warm pool | {o['run_cpu']:.1f} | <= 1000 us |",
        f"| `await m.run(noop)` (routed: inline) | {o['run']:.1f} | |",
        "",
        f"## {args.crowd:,} awaits at once (each sleeps 10 ms)",
        "",
        "| through | seconds | most running | limit | peak threads | peak Python memory MB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `m.run_io` | {c_m['seconds']:.2f} | {c_m['max_running']} | {c_m['limit']} | {c_m['threads']} | {c_m['peak_mb']:.1f} |",
        f"| `asyncio.to_thread` | {c_t['seconds']:.2f} | | | {c_t['threads']} | {c_t['peak_mb']:.1f} |",
        "",
        "## Throttle (a CPU hog on every core)",
        "",
        f"Admission limit of the I/O lane: {th['base']} quiet, {th['low']} under the hog ({th['reason']}). "
        f"Dropped **{th['dropped_s']:.2f} s** after the hog started (target 2 s); back **{th['back_s']:.2f} s** "
        "after it ended (target 2 s).",
        "",
    ]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
