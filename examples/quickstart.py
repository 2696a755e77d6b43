"""Optimize and execute a few built-in workloads; print what autopar chose and how it did.

    python examples/quickstart.py

Each workload runs twice: plainly (``[f(x) for x in items]``) and with ``autopar.execute``,
which samples it, picks serial, threads or processes with n_jobs and chunksize, and runs it.
"""

from __future__ import annotations

import time

import numpy as np

import autopar
from autopar.workloads import make_skewed_items, numpy_gil_free, pure_python_cpu, skewed, sleep_io, tiny

WORKLOADS = [
    ("pure Python, CPU-bound", pure_python_cpu, [150_000] * 40),
    ("NumPy, releases the GIL", numpy_gil_free, list(range(40))),
    ("sleep (I/O stand-in)", sleep_io, [0.01] * 100),
    ("200,000 tiny tasks", tiny, list(range(200_000))),
    ("skewed item times", skewed, make_skewed_items(400, base=4_000)),
]


def main() -> None:
    info = autopar.system_info()
    print(f"{info.usable_cores} usable cores, start method {info.start_method}\n")
    print(f"{'workload':26} {'serial':>8} {'autopar':>8} {'speedup':>8}  choice")
    for name, func, items in WORKLOADS:
        t0 = time.perf_counter()
        expected = [func(x) for x in items]
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        results, report = autopar.execute(func, items, return_report=True)
        took = time.perf_counter() - t0
        assert all(np.array_equal(a, b) for a, b in zip(results, expected)) and len(results) == len(expected)
        choice = report.executor_type if report.executor_type == "serial" else (
            f"{report.executor_type} x{report.n_jobs}, chunksize {report.chunksize}"
        )
        print(f"{name:26} {serial:7.2f}s {took:7.2f}s {serial / took:7.2f}x  {choice}")

    print("\nWhy, for the pure-Python workload:\n")
    print(autopar.optimize(pure_python_cpu, [150_000] * 40).explain())


if __name__ == "__main__":
    main()
