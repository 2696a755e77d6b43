"""Image passes and `pack` on real TIFF files written by tifffile, read back with Pillow."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from autopar.image import passes as image
from autopar.image.pack import pack

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def write_stack(folder: Path, name: str, stack: np.ndarray) -> Path:
    path = folder / name
    tifffile.imwrite(path, stack, compression="zlib", photometric="minisblack")
    return path


def stack_with_content(depth=20, size=32, first=5, last=14, seed=0, level=2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.poisson(5, size=(depth, size, size)).astype(np.uint16)
    stack[first : last + 1, 8:20, 8:20] += np.uint16(level)
    stack[first : last + 1, 10:14, 10:14] += rng.integers(0, level, size=(last - first + 1, 4, 4)).astype(np.uint16)
    return stack


# -- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, expected",
    [((16, 16), (1, 16, 16)), ((4, 16, 16), (4, 16, 16)), ((1, 4, 1, 16, 16), (4, 16, 16)), ((2, 3, 16, 16), None)],
)
def test_read_stack_shapes(tmp_path, shape, expected):
    path = write_stack(tmp_path, "a_ch0_stack0000.tif", np.ones(shape, np.uint16))
    if expected is None:  # two axes beside Y and X and nothing says which is Z: refused
        with pytest.raises(image.ImageError, match="cannot tell which axis is Z"):
            image.read_stack(path)
    else:
        assert image.read_stack(path).shape == expected


def test_corrupt_tiff_names_the_file(tmp_path):
    path = tmp_path / "bad_ch0_stack0000.tif"
    path.write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(image.ImageError, match="bad_ch0_stack0000.tif: cannot read the TIFF"):
        image.read_stack(path)


def test_parse_name():
    assert image.parse_name("/x/cell_ch1_stack0042_extra.tiff") == (1, "stack0042")
    with pytest.raises(image.ImageError, match="does not match"):
        image.parse_name("/x/cell_c1_t0042.tif")


# -- pass 0: z crop ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, threshold", [("slope", None), ("threshold", 100)])
def test_z_range_finds_the_slices_with_content(method, threshold):
    start, end = image.z_range(stack_with_content(first=5, last=14), method, threshold)
    assert 3 <= start <= 6 and 13 <= end <= 17
    assert start <= 5 and end >= 14  # content is never cut


def test_z_range_of_a_flat_stack_is_everything():
    assert image.z_range(np.full((12, 4, 4), 3, np.uint16)) == (0, 11)
    assert image.z_range(np.full((12, 4, 4), 3, np.uint16), "threshold", 5) == (0, 11)


def test_z_range_threshold_default_keeps_slices_above_zero():
    stack = np.zeros((10, 4, 4), np.uint16)
    stack[2:7] = 1
    assert image.z_range(stack, "threshold") == (2, 6)


# -- pass 1: limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", image.STRETCH_MODES)
def test_limits_from_histograms_equal_limits_from_pixels(tmp_path, mode):
    rng = np.random.default_rng(3)
    stack = (rng.gamma(2.0, 150.0, size=(12, 40, 40))).astype(np.uint16)
    stack[:, :5] = 0  # zeros are left out
    path = write_stack(tmp_path, "s_ch0_stack0000.tif", stack)
    info = image.scan_stack(str(path))
    from_hist = image.contrast_limits(info, 2, 9, mode)
    pixels = stack[2:10].ravel()
    values, counts = np.unique(pixels[pixels > 0], return_counts=True)
    direct = image.limits_from_histogram(values, counts, mode)
    assert from_hist == direct
    if mode == "imagej-auto":
        lo, hi = np.percentile(pixels[pixels > 0], (0.35, 99.65))
        assert from_hist.p_low == pytest.approx(lo) and from_hist.p_high == pytest.approx(hi)
    if mode == "max":
        assert (from_hist.p_low, from_hist.p_high) == (pixels[pixels > 0].min(), pixels.max())


def test_percentiles_match_numpy_on_known_distribution():
    rng = np.random.default_rng(0)
    data = rng.integers(1, 5000, size=100_001)
    values, counts = np.unique(data, return_counts=True)
    got = image._percentiles(values, counts, (1.0, 50.0, 99.0, 99.9))
    assert got == pytest.approx(list(np.percentile(data, (1.0, 50.0, 99.0, 99.9))))


# -- pass 2: stretch, atlas, WebP -------------------------------------------------------------


def test_stretch_and_atlas_geometry(tmp_path):
    vol = np.arange(10 * 6 * 8, dtype=np.uint16).reshape(10, 6, 8)
    out = image.stretch_to_uint8(vol, image.Limits(0, float(vol.max())))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert image.atlas_layout(10) == (4, 3)
    atlas = image.tile_atlas(out)
    assert atlas.shape == (3 * 6, 4 * 8)
    assert np.array_equal(atlas[6:12, 8:16], out[5])  # slice 5: row 1, column 1
    assert not atlas[12:, 16:].any()  # the unused tiles stay black
    size = image.write_webp(atlas, tmp_path / "a.webp")
    with Image.open(tmp_path / "a.webp") as im:
        assert im.format == "WEBP" and im.size == (32, 18)
    assert size == (tmp_path / "a.webp").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["a.webp"]  # no temp file left


# -- pack -------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for t in range(3):
        for c in range(2):
            write_stack(src, f"cell_ch{c}_stack{t:04d}.tif", stack_with_content(seed=t * 2 + c, level=1000 + 700 * t))
    return src


def test_pack_writes_atlases_and_manifest(dataset, tmp_path):
    out = tmp_path / "out"
    report = pack(dataset, out, executor="thread", jobs=2)
    assert report.ok, report.summary()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["channels"] == 2
    z0, z1 = manifest["global_z_crop_range"]
    depth = z1 - z0 + 1
    assert manifest["volume_size"] == {"width": 32, "height": 32, "depth": depth}
    cols, rows = image.atlas_layout(depth)
    assert manifest["tile_layout"] == {"cols": cols, "rows": rows}
    assert [tp["time"] for tp in manifest["timepoints"]] == ["stack0000", "stack0001", "stack0002"]
    for tp in manifest["timepoints"]:
        for c in ("c0", "c1"):
            entry = tp["files"][c]
            assert entry["file"] == f"volume_{tp['time']}_{c}.webp"
            assert entry["p_low"] == manifest["global_intensity"][c]["p_low"]  # global contrast
            with Image.open(out / entry["file"]) as im:
                assert im.size == (cols * 32, rows * 32)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "autopar-pack.json"] + [f"volume_stack{t:04d}_c{c}.webp" for t in range(3) for c in range(2)]
    )
    assert [p.name for p in report.passes] == ["pass 0: scan", "pass 1: limits", "pass 2: render"]
    assert all(p.executor == "thread" and p.n_jobs == 2 for p in report.passes if p.name != "pass 1: limits")


def test_per_image_contrast(dataset, tmp_path):
    report = pack(dataset, tmp_path / "out", executor="serial", per_image_contrast=True)
    lows = {tp["files"]["c0"]["p_low"] for tp in report.manifest["timepoints"]}
    highs = {tp["files"]["c0"]["p_high"] for tp in report.manifest["timepoints"]}
    assert len(lows | highs) > 2  # each image its own limits


def test_executor_option_overrides_the_choice(dataset, tmp_path):
    report = pack(dataset, tmp_path / "out", executor="process", jobs=2)
    assert {p.executor for p in report.passes if p.name != "pass 1: limits"} == {"process"}


def test_bad_inputs_are_named_and_the_rest_is_written(dataset, tmp_path):
    (dataset / "broken_ch0_stack0009.tif").write_bytes(b"II*\x00garbage")
    write_stack(dataset, "odd_ch1_stack0009.tif", np.ones((20, 16, 16), np.uint16))  # wrong size
    (dataset / "notes_ch0_stackXYZ.tif").write_bytes(b"")  # glob matches, pattern does not
    out = tmp_path / "out"
    report = pack(dataset, out, executor="thread", jobs=2)
    assert not report.ok
    text = "\n".join(report.errors)
    assert "broken_ch0_stack0009.tif: cannot read the TIFF" in text
    assert "odd_ch1_stack0009.tif: its slices are 16x16" in text
    assert "notes_ch0_stackXYZ.tif: the name does not match" in text
    assert len(report.written) == 6
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in names and all(not n.endswith(".tmp") for n in names)
    assert "volume_stack0009_c0.webp" not in names


def test_unwritable_output_folder(dataset, tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/autopar-cannot-write-here")
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(image.ImageError, match="cannot write to the output folder"):
        pack(dataset, target)


def test_dry_run_writes_nothing(dataset, tmp_path):
    report = pack(dataset, tmp_path / "out", executor="serial", dry_run=True)
    assert report.ok and report.manifest is not None
    assert not (tmp_path / "out").exists()


def test_cli_pack_exit_codes(dataset, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "autopar", *a], capture_output=True, text=True, timeout=170)  # noqa: E731
    ok = run("pack", str(dataset), str(tmp_path / "out"), "--no-progress", "--executor", "thread")
    assert ok.returncode == 0, ok.stderr
    assert "pass 2: render" in ok.stdout and "files/s" in ok.stdout
    (dataset / "broken_ch0_stack0009.tif").write_bytes(b"II*\x00garbage")
    bad = run("pack", str(dataset), str(tmp_path / "out2"), "--no-progress", "--executor", "serial")
    assert bad.returncode == 1 and "broken_ch0_stack0009.tif" in bad.stdout
    missing = run("pack", str(tmp_path / "nothing"), str(tmp_path / "out3"))
    assert missing.returncode == 2 and "no such input folder" in missing.stderr


@pytest.mark.slow
def test_demo_small(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "autopar", "demo", str(tmp_path / "demo"), "--timepoints", "2", "--depth", "16",
         "--size", "96", "--no-progress"],
        capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "demo" / "output" / "manifest.json").read_text())
    assert manifest["channels"] == 2 and len(manifest["timepoints"]) == 2
    assert manifest["global_z_crop_range"][0] > 0  # the demo's empty slices were cropped


# -- pass 2's steps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, start, end",
    [((12, 8, 8), 3, 7), ((12, 8, 8), 0, 11), ((12, 8, 8), 9, 30), ((1, 12, 1, 8, 8), 2, 5), ((8, 8), 0, 0)],
)
def test_read_slices_equals_the_crop_of_the_whole_stack(tmp_path, shape, start, end):
    """Only the crop's pages where the file keeps one a slice; otherwise the whole stack
    read and cropped: the same array either way (a range past the end is clamped)."""
    data = np.random.default_rng(0).integers(0, 4000, size=shape).astype(np.uint16)
    path = write_stack(tmp_path, "a_ch0_stack0000.tif", data)
    whole = image.read_stack(path)
    got = image.read_slices(path, start, end)
    assert np.array_equal(got, whole[start : min(end, whole.shape[0] - 1) + 1])


def test_read_slices_outside_the_stack_names_the_file(tmp_path):
    path = write_stack(tmp_path, "a_ch0_stack0000.tif", np.ones((4, 8, 8), np.uint16))
    with pytest.raises(image.ImageError, match="a_ch0_stack0000.tif: the z range 6-9 is outside its 4 slices"):
        image.read_slices(path, 6, 9)
    with pytest.raises(image.ImageError, match="b_ch0_stack0000.tif: cannot read the TIFF"):
        bad = tmp_path / "b_ch0_stack0000.tif"
        bad.write_bytes(b"II*\x00 not a tiff")
        image.read_slices(bad, 0, 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_render_atlas_equals_stretch_then_tile(tmp_path, dtype):
    """The table lookup (8- and 16-bit unsigned) and the per-slice stretch give the bytes the
    whole-volume float stretch gives."""
    rng = np.random.default_rng(1)
    data = (rng.normal(300, 120, size=(11, 12, 10))).clip(0, 250 if dtype == np.uint8 else 5000).astype(dtype)
    path = write_stack(tmp_path, "a_ch0_stack0000.tif", data)
    limits = image.Limits(40.0, 212.5)
    job = image.RenderJob(str(path), 0, "stack0000", 2, 9, limits, str(tmp_path))
    _, atlas = image.render_atlas(job)
    expected = image.tile_atlas(image.stretch_to_uint8(data[2:10], limits))
    assert atlas.dtype == np.uint8 and np.array_equal(atlas, expected)


def test_pack_runs_pass_2_as_a_pipeline_and_reports_its_steps(dataset, tmp_path):
    report = pack(dataset, tmp_path / "out")
    assert report.ok, report.summary()
    render = report.passes[-1]
    assert render.mode in ("fused", "staged")
    assert [name for name, _ in render.steps] == ["read+stretch", "encode", "write"]
    assert all(t > 0 for _, t in render.steps)
    assert "encode" in report.summary() and "a file" in report.summary()
    forced = pack(dataset, tmp_path / "out2", executor="thread", jobs=2)
    assert forced.passes[-1].mode is None and not forced.passes[-1].steps  # forced: execute() as it is told


def test_a_failing_step_of_pass_2_names_the_file_and_the_step(dataset, tmp_path):
    out = tmp_path / "out"
    (out / "volume_stack0001_c1.webp").mkdir(parents=True)  # its atlas cannot be written over a folder
    report = pack(dataset, out)
    assert not report.ok
    (problem,) = report.errors
    assert "cell_ch1_stack0001.tif" in problem and "(in step write)" in problem
    assert len(report.written) == 5 and "volume_stack0001_c1.webp" not in report.written
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_gaussian_smooth_is_scipys_to_the_last_bit():
    """The z crop and the smart limits smooth as PixelPacker does, with scipy's filter: the
    copy here (no scipy import on the scan's path) gives the same bits, short lines
    (reflected more than once) and every dtype the passes meet included."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(7)
    for dtype in (np.uint16, np.uint8, np.int32, np.float32, np.float64):
        for n in (1, 2, 5, 9, 17, 64, 512):
            for sigma in (2.0, 3.0):
                for _ in range(5):
                    if np.issubdtype(dtype, np.integer):
                        x = rng.integers(0, min(np.iinfo(dtype).max, 100000), size=n).astype(dtype)
                    else:
                        x = (rng.normal(0, 10, size=n)).astype(dtype)
                    got, want = image.gaussian_smooth(x, sigma), gaussian_filter1d(x, sigma, mode="reflect")
                    assert got.dtype == want.dtype and np.array_equal(got, want), (dtype, n, sigma)


@pytest.mark.parametrize(
    "options", [dict(imagej=True), dict(imagej=True, compression="zlib"), dict(ome=True), dict(tile=(16, 16), compression="zlib"), dict(bigtiff=True)],
    ids=["imagej", "imagej-zlib", "ome", "tiled", "bigtiff"],
)
def test_read_slices_reads_the_crop_of_the_usual_stack_layouts(tmp_path, options):
    data = np.random.default_rng(3).integers(0, 4000, size=(12, 16, 20)).astype(np.uint16)
    path = tmp_path / "a_ch0_stack0000.tif"
    tifffile.imwrite(path, data, photometric="minisblack", **options)
    assert np.array_equal(image.read_slices(path, 3, 8), data[3:9])


def test_render_jobs_are_the_jobs_pack_renders(dataset, tmp_path):
    from autopar.image.pack import RENDER_STEPS, render_jobs

    report = pack(dataset, tmp_path / "out", executor="serial")
    jobs = render_jobs(dataset, tmp_path / "other")
    z0, z1 = report.manifest["global_z_crop_range"]
    assert len(jobs) == 6 and {(j.z_start, j.z_end) for j in jobs} == {(z0, z1)}
    for job in jobs:
        lim = report.manifest["global_intensity"][f"c{job.channel}"]
        assert (job.limits.p_low, job.limits.p_high) == (lim["p_low"], lim["p_high"])
    (tmp_path / "other").mkdir()
    result = jobs[0]
    for _, step in RENDER_STEPS:
        result = step(result)
    with Image.open(tmp_path / "other" / result["file"]) as ours, Image.open(tmp_path / "out" / result["file"]) as packed:
        assert ours.size == packed.size
    with pytest.raises(TypeError, match="dry_run"):
        render_jobs(dataset, tmp_path / "x", dry_run=True)
