"""The ``autopar`` command: ``info``, ``optimize``, ``cache``, ``pack``, ``demo`` (``python -m autopar`` too)."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .backends.dask import cluster_costs, connect
from .benchmark import bench
from .image import ImageError
from .image.demo import DEMO_SHAPE, DEMO_TIMEPOINTS
from .image.pack import make_demo_data, pack
from .image.preview import contact_sheet
from .run import execute
from .tune import wisdom
from .tune.costs import pool_costs
from .tune.optimize import optimize
from .tune.system import system_info


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def cmd_info(args: argparse.Namespace) -> int:
    if args.scheduler:
        return _cluster_info(args)
    import numpy  # noqa: F401  (loads the BLAS library so it shows)

    info = system_info()
    t0 = time.perf_counter()
    costs = pool_costs(args.start_method or info.start_method, refresh=args.refresh)
    took = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"system": info.to_dict(), "pool_costs": costs.to_dict()}, indent=2, default=str))
        return 0
    quota = f"{info.cgroup_cpu_quota:g} cores" if info.cgroup_cpu_quota else "none"
    print(f"autopar {__version__} on {info.python}, {info.platform}")
    print(f"usable cores      {info.usable_cores} (affinity and cgroup quota; cgroup quota: {quota})")
    print(f"logical/physical  {info.logical_cores} / {info.physical_cores}")
    limit = _gib(info.cgroup_memory_limit) if info.cgroup_memory_limit else "none"
    print(f"memory            {_gib(info.available_memory)} available of {_gib(info.total_memory)} (cgroup limit: {limit})")
    print(f"start method      {info.start_method}")
    print(f"GIL               {'enabled' if info.gil_enabled else 'disabled (free-threaded build)'}")
    if info.blas:
        for pool in info.blas:
            print(f"BLAS              {pool['internal_api']} {pool['version']}: {pool['num_threads']} threads")
    else:
        print("BLAS              none loaded")
    source = "measured now" if took > 0.05 else "cached"
    print(f"pool costs ({costs.start_method}, {source}):")
    print(f"  process pool start   {costs.process_start_base * 1e3:.1f} ms + {costs.process_start_per_worker * 1e3:.1f} ms per worker")
    if costs.process_fork_per_byte:
        print(f"  forked worker        {costs.process_fork_per_byte * (1 << 30) * 1e3:.1f} ms more per GB the parent holds")
    print(f"  process round trip   {costs.process_task_overhead * 1e6:.0f} us per task, {costs.process_seconds_per_byte * 1e9:.2f} ns per byte")
    print(f"  process worker       {costs.process_worker_memory / 2**20:.1f} MiB private memory")
    print(f"  thread pool start    {costs.thread_start_base * 1e6:.0f} us + {costs.thread_start_per_worker * 1e6:.0f} us per worker")
    print(f"  thread round trip    {costs.thread_task_overhead * 1e6:.1f} us per task, {costs.thread_chunk_cost * 1e6:.1f} us per chunk of a run")
    return 0


def _load(spec: str) -> Any:
    if ":" not in spec:
        raise SystemExit(f"autopar: expected MODULE:NAME, got {spec!r}")
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"autopar: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"autopar: {module_name!r} has no attribute {attr!r}") from None
    return obj


def _items(args: argparse.Namespace) -> Any:
    if args.data:
        data = _load(args.data)
        return data() if callable(data) else data
    if args.range is not None:
        return range(*args.range)
    if args.items:
        out = []
        for text in args.items:
            try:
                out.append(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                out.append(text)  # a plain string, e.g. a file name
        return out
    raise SystemExit("autopar: give the items with --items, --range or --data")


def cmd_optimize(args: argparse.Namespace) -> int:
    func = _load(args.function)
    if not callable(func):
        raise SystemExit(f"autopar: {args.function} is not callable")
    data = _items(args)
    kind = None if args.executor == "auto" else args.executor
    if kind == "dask" and args.scheduler is None:
        raise ValueError("--executor dask needs --scheduler tcp://host:port")
    pool = None
    if args.scheduler is not None:
        pool = connect(args.scheduler)
    try:
        result = optimize(
            func, data, executor_type=kind, n_jobs=args.jobs, prefer_threads_for_io=not args.no_threads_for_io,
            start_method=args.start_method, sample_time=args.sample_time,
            cluster=pool.client if pool is not None else None, cache=not args.no_cache,
        )
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, default=str))
        else:
            print(result.explain())
        if args.plot:
            print(f"plot: {result.plot(args.plot)}")
        if args.execute:
            on = {"pool": pool.client} if pool is not None and result.executor_type == "dask" else {}
            results, report = execute(func, data, result=result, progress=args.progress, return_report=True, **on)
            print()
            print(report.explain())
            if args.timeline:
                print(f"timeline: {report.plot(args.timeline)}")
    finally:
        if pool is not None:
            pool.shutdown()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    stages = []
    for spec in args.stages.split(","):
        func = _load(spec.strip())
        if not callable(func):
            raise SystemExit(f"autopar: {spec} is not callable")
        stages.append(func)
    report = bench(stages, _items(args), rounds=args.rounds, max_workers=args.jobs)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.table())
    if args.plot:
        print(f"plot: {report.plot(args.plot)}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``autopar cache list | show KEY | clear [KEY] | path``: the tuning cache."""
    if args.action == "path":
        print(wisdom.path())
        return 0
    if args.action == "clear":
        n = wisdom.clear(args.key or "")
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {wisdom.path()}")
        return 0
    found = [e for e in wisdom.entries() if e.key.startswith(args.key or "")]
    if args.action == "show":
        if not args.key or len(found) != 1:
            print(f"autopar: {'no' if not found else 'more than one'} entry with a key starting {args.key!r}", file=sys.stderr)
            return 2
        print(json.dumps(found[0].to_dict(), indent=2))
        return 0
    if args.json:
        print(json.dumps([e.to_dict() for e in found], indent=2))
        return 0
    # The function comes last, whole: long qualified names are told apart by both ends.
    print(f"{'key':<14} {'item time':>11} {'CPU/wall':>8} {'items':>8} {'hits':>5} {'runs':>5}  {'last used':<16}  function")
    for e in found:
        p = e.profile
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
        mark = " (stale)" if e.stale else ""
        mark += "".join(f" (lost to serial on {k} x{int(v['n_jobs'])})" for k, v in sorted(e.verdicts.items()))
        print(
            f"{e.key[:12]:<14} {p.item_time_mean * 1e3:8.3f} ms {p.cpu_ratio:8.2f} "
            f"{p.n_items if p.n_items is not None else '?':>8} {e.hits:>5} {e.runs:>5}  {when:<16}  {e.func}{mark}"
        )
    print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'} in {wisdom.path()}")
    return 0


def _pack_and_report(args: argparse.Namespace, src: str, dst: str) -> int:
    try:
        report = pack(
            src, dst, executor=args.executor, jobs=args.jobs, stretch=args.stretch, z_crop=args.z_crop,
            z_threshold=args.z_threshold, per_image_contrast=args.per_image_contrast, quality=args.quality,
            dry_run=args.dry_run, progress=not args.no_progress, scheduler=args.scheduler, force=args.force,
        )
    except (ImageError, ConnectionError, ImportError) as exc:
        print(f"autopar: {exc}", file=sys.stderr)
        return 2
    print(report.explain())
    made = report.manifest is not None and not args.dry_run and bool(report.written or report.kept)
    if made:
        print(f"manifest: {dst}/manifest.json")
    if args.plot:
        print(f"plot: {report.plot(args.plot)}")
    preview = args.preview or (str(Path(dst) / "preview.png") if args.command == "demo" else None)
    if preview and made:
        print(f"preview: {contact_sheet(dst, preview)} (maximum projections of the atlases)")
    return 0 if report.ok else 1


def cmd_pack(args: argparse.Namespace) -> int:
    return _pack_and_report(args, args.input, args.output)


def cmd_demo(args: argparse.Namespace) -> int:
    root = Path(args.output)
    src, dst = root / "input", root / "output"
    if root.exists() and not root.is_dir():
        print(f"autopar: {root} is a file; give a folder for the demo (it is made if missing)", file=sys.stderr)
        return 2
    n = args.channels * args.timepoints
    if args.dry_run:
        print(f"would write {n} sample stacks to {src} and pack them into {dst} (dry run: nothing written)")
        return 0
    print(f"writing {n} sample stacks ({args.depth}x{args.size}x{args.size}) to {src} ...")
    make_demo_data(src, channels=args.channels, timepoints=args.timepoints, shape=(args.depth, args.size, args.size))
    print(f"packing into {dst}")
    return _pack_and_report(args, str(src), str(dst))


def _cluster_info(args: argparse.Namespace) -> int:
    """``autopar info --scheduler ADDRESS``: the Dask cluster and its measured costs."""
    pool = connect(args.scheduler)
    try:
        costs = cluster_costs(pool.client)
    finally:
        pool.shutdown()
    if args.json:
        print(json.dumps({"cluster": costs.to_dict()}, indent=2))
        return 0
    print(f"Dask scheduler    {costs.address}")
    print(f"workers           {costs.workers}, {costs.threads} threads, {_gib(costs.memory)} memory limit in all")
    print(f"task round trip   {costs.task_seconds * 1e3:.2f} ms (a no-op task, median of consecutive ones)")
    print(f"task, queued      {costs.task_share_seconds * 1e3:.2f} ms (no-op tasks submitted together, per task)")
    mb = 2**20
    print(f"bandwidth         {costs.bytes_per_second_to / mb:.0f} MB/s to the workers, {costs.bytes_per_second_from / mb:.0f} MB/s back")
    return 0


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of workers, 1 or more, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more workers, got {n} (leave the option out to let autopar choose)")
    return n


def _quality(text: str) -> int:
    try:
        q = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 100, got {text!r}") from None
    if not 0 <= q <= 100:
        raise argparse.ArgumentTypeError(f"WebP quality goes from 0 to 100 (default 87), got {q}")
    return q


def _pack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executor", choices=["auto", "serial", "thread", "process", "dask"], default="auto",
        help="how each pass runs: auto (measured and chosen per pass; pass 2 as a pipeline of its steps), "
        "or the same pool for every pass; dask needs --scheduler (default auto)",
    )
    p.add_argument(
        "--scheduler",
        help="a Dask scheduler's address (tcp://host:8786): each pass may run on its cluster where it pays "
        "(--executor dask: always); its workers must see both folders at the same paths",
    )
    p.add_argument("-j", "--jobs", type=_positive, help="workers, 1 or more (default: chosen per pass)")
    p.add_argument(
        "--stretch", choices=["smart", "smart-late", "imagej-auto", "max"], default="smart",
        help="contrast limits of the pixels above zero, per channel over all timepoints: the low limit is the "
        "1st percentile in the smart modes; the high limit, smart: where the histogram first falls steeply "
        "from the dim side (the end of the background and dim signal: bright spots saturate); smart-late: the "
        "last steep fall, from the bright side (bright spots keep their detail, dim structures stay darker); "
        "imagej-auto: the 0.35th and 99.65th percentiles, as ImageJ's Auto; max: the lowest and the highest "
        "value (default smart)",
    )
    p.add_argument(
        "--z-crop", choices=["slope", "threshold"], default="slope",
        help="which slices to keep, one range for all stacks (the union of each stack's): slope: where the "
        "smoothed brightest-pixel-per-slice profile rises and falls by more than --z-threshold a slice; "
        "threshold: the slices whose brightest pixel is above --z-threshold (default slope)",
    )
    p.add_argument("--z-threshold", type=float, help="z crop: slope step per slice (slope, default 20) or intensity (threshold, default 0)")
    p.add_argument("--per-image-contrast", action="store_true", help="limits per image, not per channel")
    p.add_argument("-q", "--quality", type=_quality, default=87, help="WebP quality, 0 to 100 (default 87)")
    p.add_argument("--dry-run", action="store_true", help="run the passes and say what would be written; write nothing")
    p.add_argument(
        "--force", action="store_true",
        help="make every atlas again (default: atlases already in OUTPUT, made from the same input files "
        "with the same crop, limits and settings, are kept)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--plot", metavar="FILE", help="each pass's time and pool as a bar chart, a PNG (needs autopar[plot])")
    p.add_argument("--preview", metavar="FILE", help="a contact sheet of the atlases' maximum projections, a PNG (demo: OUTPUT/preview.png)")


def _item_options(p: argparse.ArgumentParser, required: bool) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--items", nargs="+", metavar="ITEM", help="items as Python literals (or plain strings)")
    src.add_argument("--range", nargs="+", type=int, metavar="N", help="items range(N) or range(A, B[, STEP])")
    src.add_argument("--data", metavar="MODULE:NAME", help="an iterable, or a function returning one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autopar", description="Measure a batch of work, then run it the best way.")
    parser.add_argument("--version", action="version", version=f"autopar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="the machine as autopar sees it, with measured pool costs")
    p.add_argument("--start-method", choices=["fork", "spawn", "forkserver"])
    p.add_argument("--refresh", action="store_true", help="measure the pool costs again")
    p.add_argument("--json", action="store_true")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler (tcp://host:8786): its workers and measured costs")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser("optimize", help="advice for a function of yours over some items")
    p.add_argument("function", metavar="MODULE:FUNCTION", help="e.g. mypkg.steps:process")
    _item_options(p, required=False)
    p.add_argument("--executor", choices=["auto", "serial", "thread", "process", "dask"], default="auto")
    p.add_argument(
        "--scheduler",
        help="a Dask scheduler's address (tcp://host:8786): its cluster is a candidate too (--executor dask: the only one)",
    )
    p.add_argument("--no-cache", action="store_true", help="measure even if the tuning cache knows the job")
    p.add_argument("--plot", metavar="FILE", help="predicted speedup against workers and chunksize, as a PNG (needs autopar[plot])")
    p.add_argument("--timeline", metavar="FILE", help="with --execute: each worker's chunks over the run, as a PNG")
    p.add_argument("--jobs", type=int, help="fix the number of workers")
    p.add_argument("--start-method", choices=["fork", "spawn", "forkserver"])
    p.add_argument("--no-threads-for-io", action="store_true", help="never send I/O-bound work to threads")
    p.add_argument("--sample-time", type=float, default=0.2, help="most seconds the serial sample may take")
    p.add_argument("--execute", action="store_true", help="then run it and show measured against predicted")
    p.add_argument("--progress", action="store_true", help="with --execute: a progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_optimize)

    p = sub.add_parser("bench", help="time a pipeline of your functions every way worth trying, autopar's pick beside the best")
    p.add_argument("stages", metavar="MODULE:FUNC[,MODULE:FUNC...]", help="the stages in order, e.g. mypkg.steps:read,mypkg.steps:encode")
    _item_options(p, required=True)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every way, in shuffled order (default 3)")
    p.add_argument("--jobs", type=int, help="the most workers tried (default: the usable cores)")
    p.add_argument("--plot", metavar="FILE", help="the ways and the stages as bar charts, a PNG (needs autopar[plot])")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("cache", help="the tuning cache: what optimize() measured for jobs run before")
    p.add_argument("action", choices=["list", "show", "clear", "path"])
    p.add_argument("key", nargs="?", help="a key or its first characters (show: required; list, clear: a filter)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_cache)

    p = sub.add_parser("pack", help="a folder of TIFF stacks to WebP atlases and manifest.json")
    p.add_argument("input", metavar="INPUT", help="folder with *_ch*_stack*.tif* files")
    p.add_argument("output", metavar="OUTPUT", help="folder for the atlases and manifest.json")
    _pack_options(p)
    p.set_defaults(handler=cmd_pack)

    p = sub.add_parser("demo", help="generate sample stacks and pack them")
    p.add_argument("output", metavar="OUTPUT", nargs="?", default="autopar-demo", help="folder (default: ./autopar-demo)")
    p.add_argument("--channels", type=_positive, default=2,
                   help="channels per timepoint, each its own *_ch<N>_* stack (default 2: a cell body and bright puncta)")
    p.add_argument("--timepoints", type=_positive, default=DEMO_TIMEPOINTS,
                   help=f"timepoints, each a *_stack<NNNN>* stack per channel; the cell drifts between them (default {DEMO_TIMEPOINTS})")
    p.add_argument("--depth", type=_positive, default=DEMO_SHAPE[0], help=f"slices per stack (default {DEMO_SHAPE[0]})")
    p.add_argument("--size", type=_positive, default=DEMO_SHAPE[1], help=f"width and height (default {DEMO_SHAPE[1]})")
    _pack_options(p)
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt as exc:
        if argv is None:  # the command itself: a second Ctrl-C while it exits is ignored
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"autopar: {exc or 'interrupted'}", file=sys.stderr)  # pack says how far it got
        return 130
    except BrokenPipeError:  # `autopar cache list | head`: the rest goes to devnull, as Python's docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (TypeError, ValueError, ConnectionError, ImportError) as exc:
        print(f"autopar: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
