"""``autopar pack`` against PixelPacker 0.3.0 on the same generated data: time and peak memory.

    python -m venv /tmp/ppvenv
    /tmp/ppvenv/bin/pip install pixelpacker==0.3.0 "typer==0.15.2" "click==8.1.8"
    python benchmarks/pack_vs_pixelpacker.py --pixelpacker /tmp/ppvenv/bin/pixelpacker \\
        [--data noisy|demo] [--runs 3] [--out docs/pack_benchmark.md]

PixelPacker is not a dependency of autopar: it runs from its own environment, as a user would
run it. autopar runs the same way, as a command in a process of its own, so both are timed
from outside (interpreter start and imports included). Peak memory is measured in runs of
its own: the largest sum of PSS (shared pages split among the processes that share them)
over the process and its children, sampled every 20 ms. Sampling slows the run it watches
(reading a process's page tables stalls its page faults: 9% on autopar's pack here), so
the timed runs are not sampled. Steps, all in this one run:

1. generate the dataset: ``noisy`` (the default) is WebP-heavy: 2 channels x 4 timepoints
   of 64x512x512 uint16, faint blobs in a band of z over Poisson noise, about 160 KB of WebP
   a megapixel, so encoding is nearly all the work; ``demo`` is ``autopar demo``'s data
   (96 slices, mostly smooth);
2. PixelPacker with ``--executor thread|process`` x ``--threads 1,2,4``, once each, to find its
   best configuration;
3. autopar forced to ``serial``, ``thread`` and ``process`` with 2 workers, once each;
4. ``--runs`` rounds alternating PixelPacker's best configuration and ``autopar pack`` (auto);
   medians of those; then one run of each with its peak memory sampled;
5. pass 2's steps (read+stretch, encode, write) through ``autopar.bench``: sequential, fused
   on thread and process pools, staged, and the pipeline's own pick, one round;
6. the encode floor: every atlas encoded alone, one after another, in this process (the
   encoder's CPU time divided by the cores, against PixelPacker's median);
7. the outputs compared: atlas sizes and tile layout, crop range, contrast limits (within 1%).

Both use the same encoder settings (WebP quality 87, method 6, lossy). Per-pass times for
PixelPacker come from the moments its log announces each pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

import autopar
from autopar.image import passes
from autopar.image.pack import RENDER_STEPS, make_demo_data, pack, render_jobs


BLOB_LEVEL = 124.0  # photons at a blob's centre over the background's 100: noise is most of the picture


def _noisy_stack(spec: tuple[str, int, int, tuple[int, int, int], int]) -> str:
    """One WebP-heavy stack: a dozen faint Gaussian blobs in the middle band of z over a
    Poisson background of 100 counts; the noise is most of what the atlas holds."""
    import tifffile

    folder, c, t, shape, seed = spec
    depth, height, width = shape
    rng = np.random.default_rng([seed, t, c])
    yy, xx = np.ogrid[:height, :width]
    light = np.full(shape, 100.0, dtype=np.float32)
    for _ in range(12):
        cy, cx, r = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width, rng.uniform(0.05, 0.15) * width
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)).astype(np.float32)
        cz, rz = rng.uniform(depth * 0.4, depth * 0.6), rng.uniform(2, max(2.0, depth / 10))
        for z in range(depth):
            light[z] += BLOB_LEVEL * float(np.exp(-(((z - cz) / rz) ** 2) / 2)) * blob
    stack = np.clip(rng.poisson(light), 0, 65535).astype(np.uint16)
    path = f"{folder}/noisy_ch{c}_stack{t:04d}.tif"
    tifffile.imwrite(path, stack, compression="zlib", compressionargs={"level": 1}, photometric="minisblack")
    return path


def make_noisy_data(folder: Path, channels: int, timepoints: int, shape: tuple[int, int, int], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    specs = [(str(folder), c, t, shape, seed) for t in range(timepoints) for c in range(channels)]
    autopar.execute(_noisy_stack, specs)


class PeakMemory:
    """The largest sum of PSS over a process and its children, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1e6


def _run(cmd: list[str], memory: bool) -> tuple[float, float, list[str], dict[str, float]]:
    """(wall, peak MB or 0, output lines, {marker: seconds when first seen}) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    peak = PeakMemory(proc.pid) if memory else None
    assert proc.stdout is not None
    lines, marks = [], {}
    for line in proc.stdout:
        lines.append(line)
        for n in ("0", "1", "2"):
            if f"Kicking off Pass {n}" in line:
                marks.setdefault(f"pass {n}", time.perf_counter() - t0)
    proc.wait()
    wall = time.perf_counter() - t0
    mb = peak.stop() if peak is not None else 0.0
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(lines[-20:])}")
    return wall, mb, lines, marks


def run_pixelpacker(exe: str, src: Path, dst: Path, executor: str, threads: int, memory: bool = False) -> dict[str, Any]:
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [exe, "-i", str(src), "-o", str(dst), "--executor", executor, "-t", str(threads)]
    wall, mb, _, marks = _run(cmd, memory)
    starts = [marks.get(f"pass {n}", 0.0) for n in "012"] + [wall]
    passes_ = {f"pass {n}": starts[i + 1] - starts[i] for i, n in enumerate("012")}
    return {"wall": wall, "peak_mb": mb, "passes": passes_}


def _pack_in_this_process(src: str, dst: str, executor: str, jobs: str) -> None:
    """The child's side of :func:`run_autopar`: pack, then one line of JSON."""
    report = pack(src, dst, executor=executor, jobs=int(jobs) if jobs != "0" else None)
    print(json.dumps({
        "ok": report.ok, "errors": report.errors,
        "passes": {p.name: p.wall_time for p in report.passes},
        "choices": {p.name: p.executor if p.executor == "serial" else f"{p.executor} x{p.n_jobs}" for p in report.passes},
    }))


def run_autopar(src: Path, dst: Path, executor: str = "auto", jobs: int | None = None, memory: bool = False) -> dict[str, Any]:
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [sys.executable, __file__, "--pack-here", str(src), str(dst), executor, str(jobs or 0)]
    wall, mb, lines, _ = _run(cmd, memory)
    out = json.loads(lines[-1])
    if not out["ok"]:
        raise RuntimeError("autopar pack failed: " + "; ".join(out["errors"]))
    return {"wall": wall, "peak_mb": mb, "passes": out["passes"], "choices": out["choices"]}


def encode_floor(jobs: list[passes.RenderJob]) -> tuple[float, float]:
    """(seconds, KB a megapixel): every atlas pass 2 makes, encoded alone, one after another;
    the encoder's time only."""
    total, kb, mp = 0.0, 0.0, 0.0
    for job in jobs:
        _, atlas = passes.render_atlas(job)
        t0 = time.perf_counter()
        data = passes.webp_bytes(atlas, job.quality, job.method, job.lossless)
        total += time.perf_counter() - t0
        kb += len(data) / 1e3
        mp += atlas.size / 1e6
    return total, kb / mp


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
    if len(sys.argv) == 6 and sys.argv[1] == "--pack-here":
        _pack_in_this_process(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixelpacker", default="pixelpacker", help="the pixelpacker executable")
    parser.add_argument("--data", choices=("noisy", "demo"), default="noisy", help="which dataset to generate")
    parser.add_argument("--runs", type=int, default=3, help="alternating rounds for the medians")
    parser.add_argument("--timepoints", type=int, default=4)
    parser.add_argument("--depth", type=int, help="slices a stack (noisy: 64, demo: 96)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", help="write a Markdown report here")
    args = parser.parse_args()
    if shutil.which(args.pixelpacker) is None and not Path(args.pixelpacker).exists():
        print(f"PixelPacker not found at {args.pixelpacker}; see the header of this file", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="autopar-packbench-"))
    # A tuning cache of this run's own, inherited by the packs: the first autopar round runs
    # cold (every pass sampled), the others find its figures, as a user's second pack would.
    os.environ["AUTOPAR_CACHE_DIR"] = str(root / "cache")
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        src = root / "input"
        depth = args.depth or (64 if args.data == "noisy" else 96)
        shape = (depth, args.size, args.size)
        if args.data == "noisy":
            make_noisy_data(src, 2, args.timepoints, shape)
        else:
            make_demo_data(src, channels=2, timepoints=args.timepoints, shape=shape)
        in_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
        say(f"data ({args.data}): 2 channels x {args.timepoints} timepoints of {depth}x{args.size}x{args.size} uint16 "
            f"(zlib TIFF, {in_mb:.0f} MB)")

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

        say(f"\n{args.runs} alternating rounds: PixelPacker --executor {best[0]} --threads {best[1]} vs autopar pack (auto; "
            "its first round with an empty tuning cache)")
        pp_runs, ap_runs = [], []
        for i in range(args.runs):
            pr = run_pixelpacker(args.pixelpacker, src, root / "pp", *best)
            ar = run_autopar(src, root / "ap")
            pp_runs.append(pr)
            ap_runs.append(ar)
            say(f"  round {i + 1}: PixelPacker {pr['wall']:6.2f} s, autopar {ar['wall']:6.2f} s  {ar['choices']}")
        pp_med = statistics.median(r["wall"] for r in pp_runs)
        ap_med = statistics.median(r["wall"] for r in ap_runs)
        pp_mem = run_pixelpacker(args.pixelpacker, src, root / "pp", *best, memory=True)["peak_mb"]
        ap_mem = run_autopar(src, root / "ap", memory=True)["peak_mb"]
        say(f"peak memory (one run each, sampled): PixelPacker {pp_mem:.0f} MB, autopar {ap_mem:.0f} MB")
        serial = forced[("serial", None)]
        cores = autopar.usable_cores()
        best_forced = min(forced.values())

        say("\nper pass (medians):")
        for name in ("pass 0", "pass 1", "pass 2"):
            p = statistics.median(r["passes"][name] for r in pp_runs)
            a_name = {"pass 0": "pass 0: scan", "pass 1": "pass 1: limits", "pass 2": "pass 2: render"}[name]
            a = statistics.median(r["passes"][a_name] for r in ap_runs)
            say(f"  {name}: PixelPacker {p:6.2f} s, autopar {a:6.2f} s")

        say("\npass 2's steps every way (autopar.bench, one round): is a staged pipeline worth it here?")
        from autopar.pipeline import Stage

        jobs = render_jobs(src, root / "steps")
        (root / "steps").mkdir()
        steps = autopar.bench([Stage(f, name=n) for n, f in RENDER_STEPS], jobs, rounds=1)
        for line in steps.table().splitlines():
            say("  " + line)

        enc, kb_mp = encode_floor(jobs)
        say(f"\nencoding every atlas alone, one after another: {enc:.2f} s; {kb_mp:.0f} KB of WebP a megapixel")
        diffs = compare(root / "ap", root / "pp")
        say("\nresults:")
        say(f"  autopar / PixelPacker's best (time):          {ap_med / pp_med:.2f}  (target <= 0.75)")
        say(f"  the encode floor / PixelPacker's best:        {enc / cores / pp_med:.2f}  (encoding alone on {cores} cores)")
        say(f"  autopar / PixelPacker's best (peak memory):   {ap_mem / pp_mem:.2f}  ({ap_mem:.0f} MB against {pp_mem:.0f} MB; target <= 1)")
        say(f"  autopar auto / autopar's best forced choice:  {ap_med / best_forced:.2f}  (target <= 1.1)")
        say(f"  parallel efficiency serial / (auto x {cores} cores): {serial / (ap_med * cores):.2f}")
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
            f"{platform.platform()}. Run: `python benchmarks/pack_vs_pixelpacker.py --data {args.data} --runs {args.runs}` on "
            f"{time.strftime('%Y-%m-%d')}. All figures from this one run.\n\n```\n"
        )
        Path(args.out).write_text(head + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
