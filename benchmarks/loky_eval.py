"""loky (joblib's process pool) against concurrent.futures.ProcessPoolExecutor as the pool under
autopar's process backend: what each costs and does where autopar leans on the pool.

    python benchmarks/loky_eval.py [--rounds 7] [--quick] [--out docs/loky_eval.md]

Each round runs both pools, in an order that alternates from round to round; the report gives
medians over the rounds and the ratio loky / ProcessPoolExecutor ("PPE" below).

(a) Start to first result: a pool of 2 workers made and a trivial task's result back, (1)
    through autopar's process backend (``make_backend("process", ...)``: a fork pool from
    ``make_process_pool``, BLAS capped, the function sent as cloudpickle bytes) against the
    same backend on a loky pool it borrows (BLAS capped by loky's ``env=``), and (2) the bare
    pools (``concurrent.futures.ProcessPoolExecutor`` with fork, as autopar uses on Linux,
    against ``loky.ProcessPoolExecutor`` with its own start method). A last row, for
    reference only, gives loky on a fork context.
(b) 2,000 tiny tasks (``operator.neg``, pickled by reference on both sides) on a warm pool
    of 2: ``submit`` one at a time, ``map(chunksize=50)``, and autopar's backend sending the
    items in 40 chunks of 50.
(c) A closure with a 1 MB NumPy array argument: one round trip (sent, run, the array back)
    at a time. The bare PPE cannot pickle a closure (autopar ships the function with
    cloudpickle, :mod:`autopar._serialize`); loky cloudpickles every task.
(d) A worker that calls ``os._exit(3)`` in a task, four other tasks of 0.3 s submitted after
    it, both through autopar's backend: seconds until the caller sees the error, the
    exception's type, whether its message names the exit code, what autopar's
    ``how_it_ended()`` says, and what became of the other futures.
(e) Stopping a pool whose 2 workers are in a 10 s sleep: autopar's ``terminate()`` (what
    ``ProcessBackend.close(clean=False)`` and ``replace()`` call) against loky's
    ``shutdown(kill_workers=True)``, each in a fresh interpreter: seconds to return, worker
    processes still alive then (psutil), the pool's threads still alive, and any worker left
    once that interpreter has exited. Twice: with 2 small tasks waiting, and with 8 tasks of a
    1 MB argument waiting (the call queue's feeder thread then blocks writing to the workers).
(f) ``loky.cpu_count()`` against ``os.cpu_count()``, the affinity mask and autopar's own
    ``usable_cores()`` on this machine.
(g) Once, outside the rounds: autopar's own machinery on a loky pool (its ``terminate()``, a
    tracked pool's slot table passed by loky's ``initializer=``, a per-item time limit by
    SIGALRM in a loky worker).

Both sides are warmed once before the rounds (untimed: loky's resource tracker started, lazy
imports done), so (a) is a pool's start in a process that has made one before.

``--quick``: one round, 200 tasks, 3 round trips, 3 s sleeps: a smoke run, not figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import operator
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor as StdPool
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
from joblib.externals import loky

import autopar
from autopar.backends._cpython import worker_processes
from autopar.backends.blas import blas_share
from autopar.backends.pools import make_backend, make_executor, terminate
from autopar.backends.process import _BLAS_ENV
from autopar.tune.system import default_start_method, usable_cores

warnings.filterwarnings("ignore", category=UserWarning, module=r"joblib\..*")

SIDES = ("ppe", "loky")
N_WORKERS = 2


def loky_pool(**kw: Any) -> Any:
    """A loky pool of 2, its workers' BLAS capped as autopar caps a spawned worker's."""
    env = {name: str(blas_share(N_WORKERS)) for name in _BLAS_ENV}
    return loky.ProcessPoolExecutor(max_workers=N_WORKERS, env=env, **kw)


def ppe_pool() -> Any:
    """autopar's own process pool (its make_executor: fork here, BLAS capped)."""
    return make_executor("process", N_WORKERS, start_method=default_start_method())


def warm(pool: Any) -> None:
    """Every worker started and answering."""
    for f in [pool.submit(abs, -i) for i in range(4 * N_WORKERS)]:
        f.result()


def _clock(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- (a) start to first result -------------------------------------------------------------


def start_backend(side: str) -> float:
    t0 = time.perf_counter()
    borrowed = loky_pool() if side == "loky" else None
    backend = make_backend("process", abs, N_WORKERS, pool=borrowed, start_method=default_start_method())
    assert backend.decode(backend.submit(0, [-1]).result()[0]) == [1]
    took = time.perf_counter() - t0
    backend.close(clean=True)
    if borrowed is not None:
        borrowed.shutdown()
    return took


def start_bare(side: str, fork_loky: bool = False) -> float:
    t0 = time.perf_counter()
    if side == "ppe":
        pool = StdPool(N_WORKERS, mp_context=mp.get_context(default_start_method()))
    else:
        pool = loky_pool(context=mp.get_context("fork")) if fork_loky else loky_pool()
    assert pool.submit(abs, -1).result() == 1
    took = time.perf_counter() - t0
    pool.shutdown()
    return took


def measure_start(side: str, out: dict[str, Any]) -> None:
    out["a1"] = start_backend(side)
    out["a2"] = start_bare(side)
    if side == "loky":
        out["a3"] = start_bare(side, fork_loky=True)


# ---- (b) many tiny tasks, (c) a closure with a 1 MB array ----------------------------------


def tiny_tasks(pool: Any, n: int, out: dict[str, Any]) -> None:
    expect = [-i for i in range(n)]
    out["b1"] = _clock(lambda: [f.result() for f in [pool.submit(operator.neg, i) for i in range(n)]])
    out["b2"] = _clock(lambda: list(pool.map(operator.neg, range(n), chunksize=50)))
    backend = make_backend("process", operator.neg, N_WORKERS, pool=pool)
    for f in [backend.submit(0, [1]) for _ in range(4)]:
        f.result()  # the function unpickled (and, in a loky worker, autopar imported)

    def chunks() -> None:
        futs = [backend.submit(s, list(range(s, min(s + 50, n)))) for s in range(0, n, 50)]
        got = [v for f in futs for v in backend.decode(f.result()[0])]
        assert got == expect

    out["b3"] = _clock(chunks)


def closure_trips(pool: Any, trips: int, out: dict[str, Any]) -> None:
    arr = np.arange(131072, dtype=np.float64)  # 1 MiB
    k = 1.0
    func = lambda a: a + k  # noqa: E731 (a closure, as a user passes one)
    backend = make_backend("process", func, N_WORKERS, pool=pool)
    backend.submit(0, [arr]).result()
    times = []
    for _ in range(trips):
        t0 = time.perf_counter()
        got = backend.decode(backend.submit(0, [arr]).result()[0])[0]
        times.append(time.perf_counter() - t0)
        assert got[5] == 6.0
    out["c1"] = statistics.median(times)
    try:
        pool.submit(func, arr).result()
    except Exception as exc:
        out["c2"] = f"cannot: {type(exc).__name__}"
        return
    times = []
    for _ in range(trips):
        t0 = time.perf_counter()
        got = pool.submit(func, arr).result()
        times.append(time.perf_counter() - t0)
    out["c2"] = statistics.median(times)


def measure_warm(side: str, n: int, trips: int, out: dict[str, Any]) -> None:
    pool = loky_pool() if side == "loky" else ppe_pool()
    try:
        warm(pool)
        tiny_tasks(pool, n, out)
        closure_trips(pool, trips, out)
    finally:
        pool.shutdown()


# ---- (d) a worker that exits under a task --------------------------------------------------


def exit_or_sleep(x: Any) -> Any:
    if x == "exit":
        os._exit(3)
    time.sleep(x)
    return x


def _outcome(fut: Any) -> str:
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception()
    return "result" if exc is None else type(exc).__name__


def measure_crash(side: str, out: dict[str, Any]) -> None:
    borrowed = loky_pool() if side == "loky" else None
    backend = make_backend("process", exit_or_sleep, N_WORKERS, pool=borrowed, one_run=False)
    try:
        for f in [backend.submit(i, [0.0]) for i in range(4)]:
            f.result()  # workers up (in loky's, autopar imported)
        t0 = time.perf_counter()
        crash = backend.submit(0, ["exit"])
        others = [backend.submit(i, [0.3]) for i in range(1, 5)]
        exc = crash.exception(timeout=60)
        out["d1"] = time.perf_counter() - t0
        out["d2"] = type(exc).__name__
        message = str(exc)
        out["d3"] = "yes" if re.search(r"\b3\b", message) else "no"
        out["d4"] = backend.how_it_ended()
        wait_futures(others, timeout=30)
        out["d5"] = ", ".join(f"{k} x{v}" for k, v in sorted(collections.Counter(map(_outcome, others)).items()))
        try:
            backend.ex.submit(abs, -1).result(timeout=30)
            out["d6"] = "runs"
        except Exception as after:
            out["d6"] = type(after).__name__
        out["d7"] = backend.pool_broken()
        out["d_msg"] = " ".join(message.split())
    finally:
        backend.close(clean=False)
        if borrowed is not None:
            borrowed.shutdown(kill_workers=True)


# ---- (e) stopping a pool with busy workers (run in a fresh interpreter) --------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def shutdown_trial(how: str, sleep: float, big: bool) -> None:
    """One stop of a busy pool, its report printed as JSON (the child of :func:`run_shutdown`)."""
    me = psutil.Process()
    threads_before = set(threading.enumerate())
    pool = ppe_pool() if how == "autopar" else loky_pool()
    warm(pool)
    workers = list(worker_processes(pool))  # (loky's pool keeps the same pid -> Process map)
    print(json.dumps({"workers": workers}), flush=True)  # read if this process has to be killed
    futs = [pool.submit(time.sleep, sleep) for _ in range(N_WORKERS)]
    waiting = [b"x" * (1 << 20)] * 8 if big else [b"x"] * 2
    futs += [pool.submit(len, arg) for arg in waiting]
    time.sleep(0.5)  # both workers in their sleep
    t0 = time.perf_counter()
    if how == "autopar":
        terminate(pool)
    else:
        pool.shutdown(wait=how == "loky", kill_workers=True)
    took = time.perf_counter() - t0
    report = {
        "seconds": took,
        "workers_left": sum(_alive(pid) for pid in workers),
        "threads_left": sorted(t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()),
        "other_children": sorted(_what(p) for p in me.children() if p.pid not in workers and _alive(p.pid)),
        "futures": dict(collections.Counter(map(_outcome_now, futs))),
    }
    print(json.dumps(report), flush=True)


def _what(proc: Any) -> str:
    """A child process by what it runs (a resource tracker by its module)."""
    try:
        found = re.search(r"[\w.]*resource_tracker", " ".join(proc.cmdline()))
        return found.group(0) if found else proc.name()
    except psutil.Error:
        return "gone"


def _outcome_now(fut: Any) -> str:
    return _outcome(fut) if fut.done() else "pending"


CHILD = "import sys; sys.path.insert(0, {bench!r}); import loky_eval; loky_eval.shutdown_trial({how!r}, {sleep!r}, {big!r})"


def run_shutdown(how: str, sleep: float, big: bool) -> dict[str, Any]:
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), how=how, sleep=sleep, big=big)
    limit = sleep + 20
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=limit)
        hung = False
    except subprocess.TimeoutExpired:
        for proc in psutil.Process(child.pid).children(recursive=True):
            proc.kill()
        child.kill()
        stdout, stderr = child.communicate()
        hung = True
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the {how} trial said nothing: {stderr[-2000:]}")
    workers = lines[0]["workers"]
    report = lines[1] if len(lines) > 1 else {"seconds": f"hung (> {limit:.0f} s)"}
    report["exit"] = "hung (killed)" if hung else "yes"
    time.sleep(0.2)
    report["left_after_exit"] = "n/a (killed)" if hung else sum(_alive(pid) for pid in workers)
    for pid in workers:  # nothing of this run outlives it
        if _alive(pid):
            psutil.Process(pid).kill()
    return report


def measure_shutdown(side: str, sleep: float, out: dict[str, Any]) -> None:
    for key, big in (("e1", False), ("e2", True)):
        r = run_shutdown("autopar" if side == "ppe" else "loky", sleep, big)
        out[key] = r["seconds"]
        out[key + "e"] = r["exit"]
        out[key + "w"] = r.get("workers_left", "?")
        out[key + "t"] = ", ".join(r.get("threads_left", [])) or "none"
        out[key + "x"] = r["left_after_exit"]
        out[key + "f"] = ", ".join(f"{k} x{v}" for k, v in sorted(r.get("futures", {}).items()))
        out[key + "c"] = ", ".join(r.get("other_children", [])) or "none"
    if side == "loky":
        r = run_shutdown("loky-nowait", sleep, False)
        out["e3"] = r["seconds"]
        out["e3w"] = r.get("workers_left", "?")


# ---- (g) autopar's own machinery on a loky pool (once) ------------------------------------


def _try(fn: Callable[[], Any]) -> str:
    try:
        return str(fn())
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def _terminate_loky() -> str:
    pool = loky_pool()
    warm(pool)
    workers = list(worker_processes(pool))
    said = _try(lambda: terminate(pool) or "returned")
    time.sleep(0.2)
    left = sum(_alive(pid) for pid in workers)
    pool.shutdown(kill_workers=True)
    return f"{said}; workers alive after: {left}"


def _slots_loky() -> str:
    from autopar.backends.process import _init_process_worker
    from autopar.backends.slots import Slots

    ctx = loky.backend.get_context("loky")
    slots = Slots(ctx, N_WORKERS)
    pool = loky.ProcessPoolExecutor(N_WORKERS, context=ctx, initializer=_init_process_worker,
                                    initargs=(1, False, slots.table, slots.lock))
    try:
        warm(pool)
        return f"slots hold {sorted(slots.pids())}, the pool's workers are {sorted(worker_processes(pool))}"
    finally:
        pool.shutdown(kill_workers=True)


def _alarm_loky() -> str:
    pool = loky_pool()
    try:
        backend = make_backend("process", time.sleep, N_WORKERS, pool=pool, timeout=0.2)
        for f in [backend.submit(0, [0.0]) for _ in range(4)]:
            f.result()  # workers up, autopar imported there
        t0 = time.perf_counter()
        _, _, failures, _ = backend.submit(0, [5.0]).result()
        took = time.perf_counter() - t0
        return f"{type(failures[0][1]).__name__ if failures else 'no failure'} after {took:.2f} s"
    finally:
        pool.shutdown(kill_workers=True)


def compat_checks() -> list[str]:
    return [
        "| autopar's machinery on a loky pool | what happened |",
        "|---|---|",
        f"| `terminate()` (autopar's stop path) | {_try(_terminate_loky)} |",
        f"| a tracked pool's slot table (a multiprocessing RawArray and Lock) by loky's `initializer=` | {_try(_slots_loky)} |",
        f"| per-item time limit (SIGALRM in the worker), a 5 s item under a 0.2 s limit | {_try(_alarm_loky)} |",
    ]


# ---- the report ----------------------------------------------------------------------------

ROWS = [
    ("a1", "(a) start to first result, autopar's process backend (make_backend)", "ms"),
    ("a2", "(a) start to first result, bare pool", "ms"),
    ("a3", "(a) for reference: loky on a fork context, bare", "ms"),
    ("b1", "(b) tasks one at a time (submit)", "ms"),
    ("b2", "(b) tasks by map(chunksize=50)", "ms"),
    ("b3", "(b) tasks by autopar's backend, chunks of 50", "ms"),
    ("c1", "(c) closure + 1 MB array, one round trip, autopar's backend", "ms"),
    ("c2", "(c) closure + 1 MB array, one round trip, bare submit", "ms"),
    ("d1", "(d) os._exit(3): seconds until the caller sees it", "ms"),
    ("d2", "(d) the exception", ""),
    ("d3", "(d) its message names the exit code", ""),
    ("d4", "(d) autopar's how_it_ended()", ""),
    ("d5", "(d) the 4 futures submitted after it", ""),
    ("d6", "(d) a submit after the break", ""),
    ("d7", "(d) autopar's pool_broken() after the break (reads CPython's `_broken`)", ""),
    ("e1", "(e) stop 2 busy workers (2 small tasks waiting): seconds to return", "ms"),
    ("e1w", "(e) workers alive when it returns", ""),
    ("e1t", "(e) the pool's threads alive when it returns", ""),
    ("e1f", "(e) the futures when it returns", ""),
    ("e1c", "(e) other child processes of the caller", ""),
    ("e1e", "(e) the caller's interpreter then exits", ""),
    ("e1x", "(e) workers alive once the caller has exited", ""),
    ("e2", "(e) stop, 8 tasks of 1 MB waiting (feeder blocked): seconds to return", "ms"),
    ("e2w", "(e) workers alive when it returns", ""),
    ("e2t", "(e) the pool's threads alive when it returns", ""),
    ("e2f", "(e) the futures when it returns", ""),
    ("e2e", "(e) the caller's interpreter then exits", ""),
    ("e2x", "(e) workers alive once the caller has exited", ""),
    ("e3", "(e) for reference: loky shutdown(wait=False, kill_workers=True), seconds", "ms"),
    ("e3w", "(e) for reference: workers alive when that returns", ""),
]


def _cell(values: list[Any], unit: str) -> tuple[str, float | None]:
    if not values:
        return "-", None
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if unit == "ms" and len(numbers) == len(values):
        med = statistics.median(numbers)
        return f"{med * 1e3:.1f} ms", med
    if len(numbers) == len(values):
        return f"{statistics.median(numbers):g}", None
    common = collections.Counter(map(str, values)).most_common()
    text = common[0][0] if len(common) == 1 else "; ".join(f"{v} ({n}/{len(values)})" for v, n in common)
    return text.replace("|", "/"), None


def table(results: dict[str, dict[str, list[Any]]]) -> list[str]:
    lines = ["| measure | ProcessPoolExecutor | loky | loky / PPE |", "|---|---|---|---:|"]
    for key, label, unit in ROWS:
        ppe, ppe_v = _cell(results["ppe"].get(key, []), unit)
        lk, lk_v = _cell(results["loky"].get(key, []), unit)
        ratio = f"{lk_v / ppe_v:.2f}" if lk_v is not None and ppe_v else "-"
        lines.append(f"| {label} | {ppe} | {lk} | {ratio} |")
    return lines


def cpu_counts() -> list[str]:
    cpu_max = Path("/sys/fs/cgroup/cpu.max")
    return [
        "| count | value |",
        "|---|---:|",
        f"| os.cpu_count() | {os.cpu_count()} |",
        f"| len(os.sched_getaffinity(0)) | {len(os.sched_getaffinity(0))} |",
        f"| loky.cpu_count() | {loky.cpu_count()} |",
        f"| loky.cpu_count(only_physical_cores=True) | {loky.cpu_count(only_physical_cores=True)} |",
        f"| autopar usable_cores() | {usable_cores()} |",
        f"| /sys/fs/cgroup/cpu.max | {cpu_max.read_text().strip() if cpu_max.exists() else 'absent'} |",
    ]


def run_rounds(args: argparse.Namespace) -> dict[str, dict[str, list[Any]]]:
    results: dict[str, dict[str, list[Any]]] = {side: collections.defaultdict(list) for side in SIDES}
    steps: list[Callable[[str, dict[str, Any]], None]] = [
        measure_start,
        lambda side, out: measure_warm(side, args.tasks, args.trips, out),
        measure_crash,
        lambda side, out: measure_shutdown(side, args.sleep, out),
    ]
    for side in SIDES:  # once, untimed: loky's resource tracker started, lazy imports done
        start_bare(side)
    for r in range(args.rounds):
        for step in steps:
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                out: dict[str, Any] = {}
                step(side, out)
                time.sleep(0.2)  # (a BLAS pool put back after a fork pool spins about 0.1 s)
                for key, value in out.items():
                    results[side][key].append(value)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, list[Any]]], compat: list[str], minutes: float) -> str:
    probe = loky_pool()
    loky_method = probe._context.get_start_method()
    probe.shutdown()
    messages = {side: results[side].get("d_msg", [""])[0] for side in SIDES}
    flags = "--quick" if args.quick else f"--rounds {args.rounds}"
    return "\n".join([
        "# loky or ProcessPoolExecutor under autopar's process backend",
        "",
        f"Run: `python benchmarks/loky_eval.py {flags}` on {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"Python {platform.python_version()}, loky {loky.__version__} (joblib's), autopar {autopar.__version__}, "
        f"{minutes:.1f} minutes. Medians of {args.rounds} round(s), the two pools in alternating order; "
        f"{args.tasks} tasks in (b), {args.trips} round trips in (c), workers sleeping {args.sleep:g} s in (e).",
        "",
        f"Start methods: ProcessPoolExecutor with `{default_start_method()}` (autopar's default here); "
        f"loky with `{loky_method}` (fork then exec of a fresh interpreter, "
        "`python -m joblib.externals.loky.backend.popen_loky_posix`: nothing of the caller's heap is "
        "inherited, the caller's `__main__` is not run again, the function and arguments arrive by cloudpickle).",
        "",
        *table(results),
        "",
        "(f) CPU counts on this machine:",
        "",
        *cpu_counts(),
        "",
        "(g) autopar's own machinery on a loky pool (once, outside the rounds):",
        "",
        *compat,
        "",
        "The break's messages (d):",
        "",
        *[f"- {side}: {messages[side][:400]}" for side in SIDES],
        "",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the report here (Markdown)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run: 1 round, small sizes")
    args = ap.parse_args()
    args.tasks, args.trips, args.sleep = (200, 3, 3.0) if args.quick else (2000, 20, 10.0)
    if args.quick:
        args.rounds = 1
    t0 = time.perf_counter()
    results = run_rounds(args)
    compat = compat_checks()
    text = report(args, results, compat, (time.perf_counter() - t0) / 60)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
