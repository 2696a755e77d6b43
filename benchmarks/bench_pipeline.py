"""The staged pipeline's own cost: no-op stages on threads, per item and stage.

    python benchmarks/bench_pipeline.py [--items 50000] [--stages 4] [--rounds 5]

A pipeline of ``--stages`` stages of ``lambda x: x``, each on one thread (and again on two),
over ``--items`` integers, against the same calls in a plain loop; (pipeline - loop) /
(items x stages) is the machinery's cost per item and stage. Medians of ``--rounds``
alternating runs, all from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from autopar import Pipeline, Stage


def ident(x):
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    items = list(range(args.items))
    loop_t, one_t, two_t = [], [], []
    one = Pipeline([Stage(ident, name=f"s{i}", executor_type="thread", n_jobs=1) for i in range(args.stages)])
    two = Pipeline([Stage(ident, name=f"s{i}", executor_type="thread", n_jobs=2) for i in range(args.stages)])
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        out = [x for x in items]
        for _ in range(args.stages):
            out = [ident(x) for x in out]
        loop_t.append(time.perf_counter() - t0)
        for pipe, times in ((one, one_t), (two, two_t)):
            plan = pipe.optimize(items[:10])
            t0 = time.perf_counter()
            assert pipe.execute(items, plan=plan, queue_size=256) == items
            times.append(time.perf_counter() - t0)
    loop, t1, t2 = statistics.median(loop_t), statistics.median(one_t), statistics.median(two_t)
    per = args.items * args.stages
    print(f"{args.items} items, {args.stages} no-op stages on threads; medians of {args.rounds} runs")
    print(f"plain loop:              {loop * 1e3:8.1f} ms")
    print(f"staged, 1 thread a stage: {t1 * 1e3:8.1f} ms  -> {(t1 - loop) / per * 1e6:5.2f} us per item and stage")
    print(f"staged, 2 threads a stage:{t2 * 1e3:8.1f} ms  -> {(t2 - loop) / per * 1e6:5.2f} us per item and stage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
