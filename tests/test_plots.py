"""Pictures: each plot rendered to a file that decodes at the expected size; the contact
sheet of a packed demo; the commands that write them; a clear error without matplotlib."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import autopar
from autopar.image.pack import make_demo_data, pack
from autopar.image.preview import contact_sheet, max_projection

pytest.importorskip("matplotlib")


def spin(x: int) -> int:
    s = 0
    for i in range(3000):
        s += i
    return s + x


def fail_on_9(x: int) -> int:
    if x == 9:
        raise ValueError("bad item 9")
    return spin(x)


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()  # decodes the whole image, not only its header
        return im.size


def test_the_speedup_plot(tmp_path):
    r = autopar.optimize(spin, list(range(300)), executor_type="process", n_jobs=2)
    assert r.plot(tmp_path / "speedup.png") == tmp_path / "speedup.png"
    assert _size(tmp_path / "speedup.png") == (1100, 420)  # workers beside chunksize
    serial = autopar.optimize(spin, list(range(300)), executor_type="serial")
    assert _size(serial.plot(tmp_path / "serial.png")) == (650, 420)  # workers only
    svg = r.plot(tmp_path / "speedup.svg").read_text()
    assert "<svg" in svg and "chosen: process pool, 2 workers" in svg


def test_the_timeline_records_every_chunk_and_plots(tmp_path):
    out, report = autopar.execute(
        fail_on_9, list(range(60)), executor_type="thread", n_jobs=2, chunksize=5, errors="collect", return_report=True
    )
    assert isinstance(out[9], autopar.ItemFailed)
    covered = sorted(i for first, n, _, _, _ in report.timeline for i in range(first, first + n))
    assert covered == list(range(60))  # each item in exactly one chunk
    assert [s for first, _, _, _, s in report.timeline if first == 5] == ["failed"]
    assert all(0 <= t0 <= t1 <= report.wall_time + 0.05 for _, _, t0, t1, _ in report.timeline)
    width, height = _size(report.plot(tmp_path / "timeline.png"))
    # optimize()'s row and a row a worker: at most two (chunks that never overlap share one)
    # (a pixel either way: matplotlib versions round the figure's height differently)
    assert width == 1000 and any(abs(height - 100 * (1.6 + 0.35 * rows)) <= 1 for rows in (2, 3)), height
    _, serial = autopar.execute(spin, list(range(40)), executor_type="serial", return_report=True)
    assert sum(n for _, n, _, _, _ in serial.timeline) == 40
    assert _size(serial.plot(tmp_path / "serial.png"))[0] == 1000


def test_the_pack_plot_and_the_contact_sheet(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_demo_data(src, channels=2, timepoints=2, shape=(16, 64, 64))
    report = pack(src, out, executor="thread", jobs=2)
    assert report.ok, report.summary()
    assert _size(report.plot(tmp_path / "passes.png")) == (800, round(100 * (1.4 + 0.6 * 3)))
    sheet = contact_sheet(out)
    assert sheet == out / "preview.png"
    assert _size(sheet) == (18 * 5 + 3 * (192 + 4), 18 + 2 * (192 + 4))  # c0, c1, merged; two timepoints
    with Image.open(sheet) as im:
        pixels = np.asarray(im.convert("RGB"))
    merged = pixels[18:, 18 * 5 + 2 * 196 :]
    assert merged[..., 1].max() > 100 and merged[..., 0].max() > 100  # green and magenta both there
    # The demo's cell is in the middle: its maximum projection is brighter there than at the edge.
    manifest = report.manifest
    assert manifest is not None
    entry = manifest["timepoints"][0]["files"]["c0"]
    layout, size = manifest["tile_layout"], manifest["volume_size"]
    proj = max_projection(out / entry["file"], layout["cols"], layout["rows"], size["width"], size["height"], size["depth"])
    assert proj.shape == (64, 64) and proj[24:40, 24:40].mean() > proj[:6, :6].mean() + 30


def test_the_commands_write_their_pictures(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "autopar", *a], capture_output=True, text=True, timeout=170)  # noqa: E731
    opt = run("optimize", "autopar.workloads:pure_python_cpu", "--items", *["100000"] * 24, "--executor", "process",
              "--sample-time", "0.01", "--plot", str(tmp_path / "s.png"), "--execute", "--timeline", str(tmp_path / "t.png"))
    assert opt.returncode == 0, opt.stderr
    # Processes were asked for: a pool of them, with its chunksize panel beside the workers',
    # or serial where no pool saves enough (the model's call on this machine's timings):
    # the workers' panel alone.
    chose = opt.stdout.splitlines()[0]
    assert chose.startswith(("autopar chose: process pool", "autopar chose: serial")), opt.stdout
    assert _size(tmp_path / "s.png") == ((1100, 420) if "process pool" in chose else (650, 420))
    assert _size(tmp_path / "t.png")[0] == 1000
    demo = run("demo", str(tmp_path / "demo"), "--timepoints", "2", "--depth", "16", "--size", "64", "--no-progress",
               "--plot", str(tmp_path / "passes.png"))
    assert demo.returncode == 0, demo.stderr
    assert "preview:" in demo.stdout
    assert _size(tmp_path / "demo" / "output" / "preview.png")[0] == 18 * 5 + 3 * 196
    assert _size(tmp_path / "passes.png")[0] == 800


def test_without_matplotlib_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    r = autopar.optimize(spin, list(range(50)), executor_type="serial")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"autopar\[plot\]"):
        r.plot(tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing half-written
