"""``autopar pack`` against PixelPacker 0.3.0 on the same generated data.

    python -m venv /tmp/ppvenv
    /tmp/ppvenv/bin/pip install pixelpacker==0.3.0 "typer==0.15.2" "click==8.1.8"
    python benchmarks/pack_vs_pixelpacker.py --pixelpacker /tmp/ppvenv/bin/pixelpacker \\
        [--runs 3] [--out docs/pack_benchmark.md]

PixelPacker is not a dependency of autopar: it runs from its own environment, as a user would
run it. Steps, all in this one run:

1. generate the dataset (2 channels x 4 timepoints of 96x512x512 uint16, zlib TIFF);
2. PixelPacker with ``--executor thread|process`` x ``--threads 1,2,4``, once each, to find its
   best configuration;
3. autopar forced to ``serial``, ``thread`` and ``process`` with 2 workers, once each;
4. ``--runs`` rounds alternating PixelPacker's best configuration and ``autopar pack`` (auto);
   medians of those;
5. the outputs compared: atlas sizes and tile layout, crop range, contrast limits (within 1%).

Both use the same encoder settings (WebP quality 87, method 6, lossy). Per-pass times for
PixelPacker come from the moments its log announces each pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

import autopar
from autopar.image.pack import make_demo_data, pack


def run_pixelpacker(exe: str, src: Path, dst: Path, executor: str, threads: int) -> dict[str, Any]:
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [exe, "-i", str(src), "-o", str(dst), "--executor", executor, "-t", str(threads)]
    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        for n in ("0", "1", "2"):
            if f"Kicking off Pass {n}" in line:
                marks[f"pass {n}"] = time.perf_counter() - t0
    proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"PixelPacker failed ({proc.returncode}): {' '.join(cmd)}")
    starts = [marks.get(f"pass {n}", 0.0) for n in "012"] + [wall]
    passes = {f"pass {n}": starts[i + 1] - starts[i] for i, n in enumerate("012")}
    return {"wall": wall, "passes": passes}


def run_autopar(src: Path, dst: Path, executor: str = "auto", jobs: int | None = None) -> dict[str, Any]:
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    report = pack(src, dst, executor=executor, jobs=jobs)
    wall = time.perf_counter() - t0
    if not report.ok:
        raise RuntimeError("autopar pack failed: " + "; ".join(report.errors))
    return {
        "wall": wall,
        "passes": {p.name: p.wall_time for p in report.passes},
        "choices": {p.name: f"{p.executor} x{p.n_jobs}" for p in report.passes},
    }


def compare(a_dir: Path, p_dir: Path) -> list[str]:
    """What differs between the two outputs (empty: they agree)."""
    a = json.loads((a_dir / "manifest.json").read_text())
    p = json.loads((p_dir / "manifest.json").read_text())
    diffs = []
    for key in ("tile_layout", "volume_size", "channels", "global_z_crop_range"):
        if a[key] != p[key]:
            diffs.append(f"{key}: autopar {a[key]} vs PixelPacker {p[key]}")
    for ch, lim in p["global_intensity"].items():
        for k in ("p_low", "p_high"):
            mine = a["global_intensity"][ch][k]
            if abs(mine - lim[k]) > 0.01 * max(abs(lim[k]), 1e-9):
                diffs.append(f"global_intensity {ch} {k}: autopar {mine} vs PixelPacker {lim[k]}")
    for tp in p["timepoints"]:
        for entry in tp["files"].values():
            with Image.open(a_dir / entry["file"]) as ia, Image.open(p_dir / entry["file"]) as ip:
                if ia.size != ip.size:
                    diffs.append(f"{entry['file']}: autopar {ia.size} vs PixelPacker {ip.size}")
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixelpacker", default="pixelpacker", help="the pixelpacker executable")
    parser.add_argument("--runs", type=int, default=3, help="alternating rounds for the medians")
    parser.add_argument("--timepoints", type=int, default=4)
    parser.add_argument("--depth", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()
    if shutil.which(args.pixelpacker) is None and not Path(args.pixelpacker).exists():
        print(f"PixelPacker not found at {args.pixelpacker}; see the header of this file", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="autopar-packbench-"))
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        src = root / "input"
        make_demo_data(src, channels=2, timepoints=args.timepoints, shape=(args.depth, args.size, args.size))
        say(f"data: 2 channels x {args.timepoints} timepoints of {args.depth}x{args.size}x{args.size} uint16 (zlib TIFF)")

        say("\nPixelPacker 0.3.0, each configuration once:")
        pp: dict[tuple[str, int], float] = {}
        for executor in ("thread", "process"):
            for threads in (1, 2, 4):
                r = run_pixelpacker(args.pixelpacker, src, root / "pp", executor, threads)
                pp[(executor, threads)] = r["wall"]
                say(f"  --executor {executor:7} --threads {threads}: {r['wall']:6.2f} s")
        best = min(pp, key=pp.get)  # type: ignore[arg-type]

        say("\nautopar pack, forced configurations, once each:")
        forced = {}
        for executor, jobs in (("serial", None), ("thread", 2), ("process", 2)):
            r = run_autopar(src, root / "ap", executor, jobs)
            forced[(executor, jobs)] = r["wall"]
            say(f"  --executor {executor:7} --jobs {jobs or 1}: {r['wall']:6.2f} s")

        say(f"\n{args.runs} alternating rounds: PixelPacker --executor {best[0]} --threads {best[1]} vs autopar pack (auto)")
        pp_runs, ap_runs = [], []
        for i in range(args.runs):
            pr = run_pixelpacker(args.pixelpacker, src, root / "pp", *best)
            ar = run_autopar(src, root / "ap")
            pp_runs.append(pr)
            ap_runs.append(ar)
            say(f"  round {i + 1}: PixelPacker {pr['wall']:6.2f} s, autopar {ar['wall']:6.2f} s  ({ar['choices']})")
        pp_med = statistics.median(r["wall"] for r in pp_runs)
        ap_med = statistics.median(r["wall"] for r in ap_runs)
        serial = forced[("serial", None)]
        cores = autopar.usable_cores()
        best_forced = min(forced.values())

        say("\nper pass (medians):")
        for name in ("pass 0", "pass 1", "pass 2"):
            p = statistics.median(r["passes"][name] for r in pp_runs)
            a_name = {"pass 0": "pass 0: scan", "pass 1": "pass 1: limits", "pass 2": "pass 2: render"}[name]
            a = statistics.median(r["passes"][a_name] for r in ap_runs)
            say(f"  {name}: PixelPacker {p:6.2f} s, autopar {a:6.2f} s")

        diffs = compare(root / "ap", root / "pp")
        say("\nresults:")
        say(f"  autopar / PixelPacker's best:                 {ap_med / pp_med:.2f}  (target <= 0.8)")
        say(f"  autopar auto / autopar's best forced choice:  {ap_med / best_forced:.2f}  (target <= 1.1)")
        say(f"  parallel efficiency serial / (auto x {cores} cores): {serial / (ap_med * cores):.2f}  (target >= 0.9)")
        say("  outputs agree (atlas sizes, tile layout, crop range, limits within 1%)" if not diffs else "  outputs differ:")
        for d in diffs:
            say(f"    - {d}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        info = autopar.system_info()
        head = (
            "# Benchmark: `autopar pack` against PixelPacker 0.3.0\n\n"
            f"Machine: {info.usable_cores} usable cores, {info.total_memory / 2**30:.0f} GiB, {info.python}, "
            f"{platform.platform()}. Run: `python benchmarks/pack_vs_pixelpacker.py --runs {args.runs}` on "
            f"{time.strftime('%Y-%m-%d')}. All figures from this one run.\n\n```\n"
        )
        Path(args.out).write_text(head + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
