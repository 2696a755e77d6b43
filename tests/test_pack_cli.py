"""`autopar pack` and the command line as a user meets them (issue 25): shapes named by the
file's axes, .TIF, dry runs, measured step times, file modes, options checked first, Ctrl-C,
CLI messages, resume, the demo's size. Real TIFFs written with tifffile, WebP read with Pillow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from autopar import cli
from autopar._atomic import atomic_write
from autopar.image import passes as image
from autopar.image.pack import pack
from autopar.image.report import PackInterrupted

from helpers import sigint_on

RECORD = "autopar-pack.json"  # the resume record beside manifest.json
NO_RATE = re.compile(r"(?<![\d.])0\.0 MB/s")  # a pass said to read at 0.0 MB/s (not 10.0 MB/s)

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent


def stack(depth=20, size=32, seed=0, level=1500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.poisson(5, size=(depth, size, size)).astype(np.uint16)
    data[5:15, 8:24, 8:24] += np.uint16(level)
    data[6:13, 10:20, 10:20] += rng.integers(0, level, size=(7, 10, 10)).astype(np.uint16)
    return data


def write(folder: Path, name: str, data: np.ndarray, **options) -> Path:
    options.setdefault("photometric", "minisblack")
    tifffile.imwrite(folder / name, data, compression="zlib", **options)
    return folder / name


@pytest.fixture
def dataset(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for t in range(3):
        for c in range(2):
            write(src, f"cell_ch{c}_stack{t:04d}.tif", stack(seed=t * 2 + c, level=1000 + 500 * t))
    return src


def cli_run(*args, env=None, timeout=240, **kw):
    return subprocess.run([sys.executable, "-m", "autopar", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def atlases(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("volume_*.webp"))


def assert_manifest_true(out: Path) -> dict:
    """Every atlas the manifest lists is on disk at the size its layout and volume say."""
    manifest = json.loads((out / "manifest.json").read_text())
    layout, size = manifest["tile_layout"], manifest["volume_size"]
    z0, z1 = manifest["global_z_crop_range"]
    assert size["depth"] == z1 - z0 + 1 and layout["cols"] * layout["rows"] >= size["depth"]
    listed = [f["file"] for tp in manifest["timepoints"] for f in tp["files"].values()]
    for name in listed:
        with Image.open(out / name) as im:
            assert im.size == (layout["cols"] * size["width"], layout["rows"] * size["height"]), name
    return manifest


# -- 1. shapes ---------------------------------------------------------------------------------


def test_shapes_that_are_not_zyx_are_named_and_the_rest_is_written(dataset, tmp_path):
    plain = stack()
    write(dataset, "hyper_ch0_stack0003.tif", np.stack([plain, plain], axis=1), imagej=True, metadata={"axes": "ZCYX"})
    write(dataset, "series_ch1_stack0003.tif", np.stack([plain] * 3), metadata={"axes": "TZYX"})
    write(dataset, "rgb_ch0_stack0004.tif", np.zeros((20, 32, 32, 3), np.uint8), photometric="rgb")
    write(dataset, "flat_ch1_stack0004.tif", plain[10])  # a single image among stacks
    write(dataset, "deep_ch0_stack0005.tif", stack(depth=25))  # deeper than the others
    write(dataset, "noaxes_ch1_stack0005.tif", np.stack([plain, plain], axis=1))  # ZCYX without metadata
    out = tmp_path / "out"
    report = pack(dataset, out, executor="thread", jobs=2)
    text = "\n".join(report.errors)
    assert not report.ok and len(report.errors) == 6, text
    assert "hyper_ch0_stack0003.tif: 2 channels in one file (shape (20, 2, 32, 32), axes ZCYX)" in text
    assert "series_ch1_stack0003.tif: 3 timepoints in one file (shape (3, 20, 32, 32), axes TZYX)" in text
    assert "rgb_ch0_stack0004.tif: 3 samples a pixel (RGB), shape (20, 32, 32, 3)" in text
    assert "flat_ch1_stack0004.tif: a single image (Z×Y×X 1x32x32), the others have 20 (Z×Y×X 20x32x32)" in text
    assert "deep_ch0_stack0005.tif: 25 slices (Z×Y×X 25x32x32), the others have 20" in text
    assert "noaxes_ch1_stack0005.tif: cannot tell which axis is Z (shape (20, 2, 32, 32), axes QQYX)" in text
    assert "one channel and one timepoint a file" in text  # what was expected
    assert sorted(report.written) == atlases(out) == [f"volume_stack{t:04d}_c{c}.webp" for t in range(3) for c in range(2)]
    manifest = assert_manifest_true(out)
    assert manifest["volume_size"]["width"] == 32 and len(manifest["timepoints"]) == 3


def test_a_stack_labelled_by_imagej_or_ome_reads_as_the_plain_stack(tmp_path):
    data = stack(depth=16)
    for i, options in enumerate([dict(imagej=True), dict(ome=True), dict(metadata={"axes": "ZYX"}),
                                 dict(imagej=True, metadata={"axes": "TZCYX"})]):
        shaped = data[np.newaxis, :, np.newaxis] if "TZCYX" in str(options) else data
        path = write(tmp_path, f"a{i}_ch0_stack0000.tif", shaped, **options)
        assert np.array_equal(image.read_stack(path), data), options


# -- 2. upper-case extensions, names that do not match ------------------------------------------


def test_upper_case_tif_is_packed_and_unmatched_tiffs_are_reported(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write(src, "x_ch0_stack0000.TIF", stack(seed=1))
    write(src, "x_ch1_stack0000.Tiff", stack(seed=2))
    write(src, "overview.tif", stack(seed=3))
    write(src, "x_ch0_stack0000.tif", stack(seed=4))  # a second file for one atlas
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    report = pack(src, out, executor="serial")
    text = "\n".join(report.errors)
    assert sorted(report.written) == ["volume_stack0000_c0.webp", "volume_stack0000_c1.webp"]
    assert "overview.tif: the name does not match" in text
    assert "x_ch0_stack0000.tif: channel 0 of stack0000 again (already x_ch0_stack0000.TIF)" in text
    assert "notes.txt" not in text and len(report.errors) == 2
    assert json.loads((out / "manifest.json").read_text())["channels"] == 2


# -- 3. dry run ---------------------------------------------------------------------------------


def test_a_dry_run_writes_nothing_not_even_the_tuning_cache(dataset, tmp_path):
    env = {"AUTOPAR_CACHE": "on", "AUTOPAR_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "out"
    dry = cli_run("pack", str(dataset), str(out), "--dry-run", "--no-progress", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would write 6 atlases" in dry.stdout and "wrote" not in dry.stdout
    assert not out.exists()
    assert not (tmp_path / "cache" / "tuning.sqlite3").exists()  # not even opened
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []  # nor the pool costs
    listed = cli_run("cache", "list", "--json", env=env)
    assert json.loads(listed.stdout) == []
    # The same pack for real opens the tuning cache (what the dry run must not do); what it
    # keeps there depends on whether a pass's sample left work for a pool, which is timing.
    real_cache = tmp_path / "real-cache"
    real = cli_run("pack", str(dataset), str(out), "--no-progress", env={**env, "AUTOPAR_CACHE_DIR": str(real_cache)})
    assert real.returncode == 0 and "wrote 6 atlases" in real.stdout, real.stderr
    assert (real_cache / "tuning.sqlite3").exists()


def test_a_stack_of_another_pixel_type_in_a_channel_is_named_and_skipped(dataset, tmp_path):
    # One channel's limits come from all its stacks: an 8-bit or float stack among 16-bit
    # ones came out black or nearly, with exit 0.
    write(dataset, "cell_ch0_stack0003.tif", (stack(seed=9) // 16).astype(np.uint8))
    write(dataset, "cell_ch1_stack0003.tif", stack(seed=10).astype(np.float32))
    report = pack(dataset, tmp_path / "out", executor="serial")
    text = "\n".join(report.errors)
    assert len(report.errors) == 2, text
    assert "cell_ch0_stack0003.tif: its pixels are uint8, channel 0's other stacks uint16" in text
    assert "cell_ch1_stack0003.tif: its pixels are float32, channel 1's other stacks uint16" in text
    assert len(report.written) == 6
    assert_manifest_true(tmp_path / "out")


def test_a_channel_missing_at_a_timepoint_is_said(dataset, tmp_path):
    (dataset / "cell_ch1_stack0001.tif").unlink()
    report = pack(dataset, tmp_path / "out", executor="serial")
    assert report.ok and len(report.written) == 5
    assert report.notes == [
        "stack0001 has no file for channel 1 (the other timepoints have it): its manifest entry lists the channels there are"
    ]
    assert "note: stack0001 has no file for channel 1" in report.explain()


# -- 4. the report's step figures are this run's -------------------------------------------------


def test_the_report_gives_the_steps_this_run_measured(tmp_path, monkeypatch):
    from autopar.tune import wisdom

    monkeypatch.setenv("AUTOPAR_CACHE", "on")
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "in"
    src.mkdir()
    flat = np.zeros((20, 32, 32), np.uint16)
    flat[4:16] = 7
    write(tmp_path, "flat.tif", flat)  # quick to encode
    noisy = np.random.default_rng(0).integers(0, 4000, size=(20, 96, 96)).astype(np.uint16)
    noisy[:4] = 0
    noisy[16:] = 0
    write(tmp_path, "noisy.tif", noisy)  # many times slower to encode
    names = [f"s_ch0_stack{t:04d}.tif" for t in range(80)]  # enough that the sample leaves work: kept
    for name in names:
        os.link(tmp_path / "flat.tif", src / name)
    image.webp_bytes(flat[0].astype(np.uint8))  # the encoder loaded: the first sample times encoding only
    for _ in range(8):  # a run far off its plan (a busy machine) leaves the figures stale: again
        first = pack(src, tmp_path / "o1", force=True)
        kept = [e for e in wisdom.entries() if e.func.startswith("pipeline(") and not e.stale]
        if kept:
            break
    assert kept, "every run of 80 quick encodes was far off its plan: nothing kept to plan from"
    assert first.ok and first.passes[-1].planned_from in ("", "the tuning cache")
    for name in names:  # the same job, other images: planned from the first run's figures
        os.unlink(src / name)
        os.link(tmp_path / "noisy.tif", src / name)
    second = pack(src, tmp_path / "o2")
    render = second.passes[-1]
    held = [(e.key[:8], e.func[:40], e.stale, e.hits, len(e.profile.stage_times)) for e in wisdom.entries()]
    assert render.planned_from == "the tuning cache", (render, held)  # (what the cache held, should it fail)
    measured, planned = dict(render.steps), dict(render.planned)
    assert measured["encode"] > 2 * planned["encode"], render  # the report does not repeat the plan
    assert measured["encode"] > 2 * dict(first.passes[-1].steps)["encode"]  # and follows this run's images
    text = second.summary()
    assert "a file, measured" in text and "a file, planned from the tuning cache" in text
    assert not NO_RATE.search(text) and "(no reads)" in text  # pass 1 reads nothing


# -- 5. file modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, dataset, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.bin") as fh:
            fh.write(b"x")
        out = tmp_path / "out"
        report = pack(dataset, out, executor="serial")
    finally:
        os.umask(old)
    assert report.ok
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == mode, p.name


# -- 6. options checked before any work ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["-q", "150"], "WebP quality goes from 0 to 100"),
        (["--quality", "high"], "expected a whole number from 0 to 100"),
        (["--jobs", "0"], "expected 1 or more workers"),
        (["-j", "-2"], "expected 1 or more workers"),
    ],
)
def test_bad_options_are_refused_before_any_work(dataset, tmp_path, capsys, args, says):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["pack", str(dataset), str(out), "--no-progress", *args])
    assert exc.value.code == 2 and says in capsys.readouterr().err
    assert not out.exists()


def test_bad_folders_are_refused_before_any_write(tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    odd = tmp_path / "odd"
    odd.mkdir()
    write(odd, "overview.tif", stack())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    good = tmp_path / "good"
    good.mkdir()
    write(good, "a_ch0_stack0000.tif", stack())
    cases = [
        ([str(empty), str(out)], f"{empty}: nothing to pack, no TIFF files in it; pack reads stacks named *_ch<N>_stack<NNNN>"),
        ([str(odd), str(out)], "its 1 TIFF file(s) (overview.tif) do not follow the naming"),
        ([str(a_file), str(out)], f"{a_file} is a file, not a folder; give the folder that holds the stacks"),
        ([str(tmp_path / "nothing"), str(out)], "no such input folder"),
        ([str(good), str(a_file)], f"{a_file} is a file; give a folder for the atlases"),
    ]
    for argv, says in cases:
        assert cli.main(["pack", *argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert says in err, (argv, err)
        assert not out.exists()
    with pytest.raises(ValueError, match="quality must be a whole number from 0 to 100"):
        pack(good, out, quality=150)
    with pytest.raises(ValueError, match="jobs must be a whole number of workers, 1 or more"):
        pack(good, out, jobs=0)
    assert not out.exists()


# -- 7. Ctrl-C -----------------------------------------------------------------------------------


@pytest.fixture
def many(tmp_path):
    """30 stacks (links to three files) whose atlases take a while to encode."""
    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.default_rng(1)
    bases = []
    for i in range(3):
        data = rng.integers(0, 3000, size=(24, 160, 160)).astype(np.uint16)
        data[:2] = 0
        bases.append(write(tmp_path, f"base{i}.tif", data))
    for t in range(15):
        for c in range(2):
            os.link(bases[(t + c) % 3], src / f"m_ch{c}_stack{t:04d}.tif")
    return src


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_says_how_far_it_got_in_one_line_and_the_same_command_finishes(many, tmp_path, presses):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "autopar", "pack", str(many), str(out), "--executor", "thread", "-j", "1", "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_on)
    try:
        deadline = time.monotonic() + 200
        while not atlases(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    (line,) = [ln for ln in stderr.splitlines() if ln.strip()]
    n = len(atlases(out))
    assert line == f"autopar: interrupted: {n} of 30 atlases written; no manifest; run the same command again to finish"
    assert 0 < n < 30 and not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    again = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    left = 30 - n
    assert f"wrote {left} {'atlas' if left == 1 else 'atlases'}, kept {n} up to date" in again.stdout
    assert len(assert_manifest_true(out)["timepoints"]) == 15


def test_an_interrupted_packs_writes_stop_and_one_still_writing_is_named(tmp_path):
    # The guard pack's Ctrl-C uses: a write under way past the wait is returned (its temp file
    # in use), a stopped job writes nothing more, other jobs and a new job of the same values
    # (a later pack) write as usual.
    from dataclasses import replace

    job = image.RenderJob(str(tmp_path / "a.tif"), 0, "stack0000", 0, 1, image.Limits(0.0, 1.0), str(tmp_path))
    other = replace(job, time_id="stack0001")
    inside, release = threading.Event(), threading.Event()

    def slow_write() -> None:
        with image.WRITES.one(job):
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=slow_write)
    writer.start()
    try:
        assert inside.wait(10)
        assert image.WRITES.stop([job], 0.05) == [job]  # still writing after the wait
        with pytest.raises(KeyboardInterrupt):
            image.write_atlas((job, (1, 1), b"x"))
        assert not (tmp_path / image.output_name("stack0000", 0)).exists()
        image.write_atlas((other, (1, 1), b"y"))  # another job: not stopped
        assert (tmp_path / image.output_name("stack0001", 0)).read_bytes() == b"y"
    finally:
        release.set()
        writer.join()
    assert image.WRITES.stop([job], 1.0) == []  # the write ended
    again = replace(job)  # equal values, another object: a later pack's job
    image.write_atlas((again, (1, 1), b"z"))
    assert (tmp_path / image.output_name("stack0000", 0)).read_bytes() == b"z"


def test_ctrl_c_counts_what_threads_still_busy_with_an_atlas_leave_on_disk(many, tmp_path):
    """Interrupted while pool threads run their items: the count said is what stays on disk
    once every thread has ended (a thread busy with an atlas writes nothing after the count)."""
    out = tmp_path / "out"
    main = threading.main_thread()
    ended = threading.Event()

    def press() -> None:
        deadline = time.monotonic() + 200
        while len(atlases(out)) < 3 and not ended.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not ended.is_set():
            signal.pthread_kill(main.ident, signal.SIGINT)  # as Ctrl-C: a real signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a run with SIGINT ignored)
    presser = threading.Thread(target=press)
    caught = None
    try:
        presser.start()
        try:
            pack(many, out, executor="thread", jobs=2, method=4)
        except PackInterrupted as exc:
            caught = exc
        ended.set()
        presser.join()
    except KeyboardInterrupt:  # (not pack's: the press came after pack had ended)
        pytest.fail("the press came after pack had ended")
    finally:
        ended.set()
        presser.join()
        signal.signal(signal.SIGINT, old)
    assert caught is not None, "pack finished before the press"
    for t in threading.enumerate():  # the pool's threads end their items, then stop
        if t is not main and t.name.startswith("autopar"):
            t.join(timeout=60)
    # (On a busy machine the press can land once every atlas is written, as pack ends: then
    # all 30 are said and on disk, and the second run writes none. Once in a 3.13 CI run.)
    assert 3 <= caught.written <= 30
    assert caught.written == len(atlases(out))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    before = atlases(out)
    again = pack(many, out, executor="thread", jobs=2, method=4)  # the same files write as usual
    assert sorted(again.kept) == before  # (nothing was written since)
    assert again.ok and len(again.written) == 30 - caught.written and len(atlases(out)) == 30


# -- 8. the command line's messages --------------------------------------------------------------


def test_a_closed_pipe_ends_the_listing_quietly(tmp_path):
    read, write_end = os.pipe()
    os.close(read)  # the reader is gone before the first line (as `| head` after its lines)
    try:
        done = subprocess.run([sys.executable, "-m", "autopar", "cache", "list"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, env={**os.environ, "AUTOPAR_CACHE_DIR": str(tmp_path)})
    finally:
        os.close(write_end)
    assert "Broken pipe" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert done.returncode == 1


def test_cache_list_shows_long_function_names_whole(tmp_path, monkeypatch, capsys):
    import autopar
    from autopar.tune import wisdom

    monkeypatch.setenv("AUTOPAR_CACHE", "on")
    monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path))
    autopar.optimize(a_function_with_a_name_long_enough_to_be_cut_in_a_forty_column_listing, [0.0005] * 2000)
    (entry,) = wisdom.entries()
    assert cli.main(["cache", "list"]) == 0
    text = capsys.readouterr().out
    assert entry.func in text and len(entry.func) > 40
    assert "1 entry in" in text


def a_function_with_a_name_long_enough_to_be_cut_in_a_forty_column_listing(x):
    time.sleep(x)


def test_help_says_what_each_pack_option_does():
    text = cli.build_parser()._subparsers._group_actions[0].choices["pack"].format_help()
    flat = " ".join(text.split())
    # (3.13's argparse names the value once: "-j, --jobs JOBS")
    assert "-j JOBS, --jobs JOBS" in flat or "-j, --jobs JOBS" in flat
    assert "-q QUALITY, --quality QUALITY" in flat or "-q, --quality QUALITY" in flat
    for words in ["smart-late: the last steep fall",
                  "smart: where the histogram first falls steeply", "slope: where the", "threshold: the slices whose",
                  "how each pass runs", "--force"]:
        assert words in flat, words
    demo = cli.build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    assert "channels per timepoint" in " ".join(demo.split()) and "timepoints, each a" in " ".join(demo.split())


def test_a_truncated_tiff_is_named_once_and_the_counts_read_well(dataset, tmp_path):
    whole = (dataset / "cell_ch0_stack0002.tif").read_bytes()
    (dataset / "cell_ch0_stack0002.tif").write_bytes(whole[: len(whole) // 2])
    done = cli_run("pack", str(dataset), str(tmp_path / "out"), "--executor", "serial", "--no-progress")
    assert done.returncode == 1
    assert "cell_ch0_stack0002.tif: cannot read the TIFF (damaged or truncated" in done.stdout
    assert "tifffile" not in done.stderr and "invalid page offset" not in done.stderr, done.stderr
    assert "1 problem:" in done.stdout and "wrote 5 atlases" in done.stdout and not NO_RATE.search(done.stdout)


# -- 9. resume -----------------------------------------------------------------------------------


def test_a_rerun_makes_only_what_is_missing_or_out_of_date(dataset, tmp_path):
    out = tmp_path / "out"
    first = pack(dataset, out, executor="serial")
    assert len(first.written) == 6 and (out / RECORD).is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("volume_*.webp")}
    (out / "volume_stack0099_c0.webp").write_bytes((out / "volume_stack0000_c0.webp").read_bytes())  # not listed

    again = pack(dataset, out, executor="serial")
    assert again.ok and again.written == [] and len(again.kept) == 6
    assert again.passes == [] and "no pass ran" in again.explain()  # nothing changed: not even the scan
    assert again.unlisted == ["volume_stack0099_c0.webp"] and (out / "volume_stack0099_c0.webp").exists()
    assert "kept 6 up to date" in again.summary() and "not in the manifest (left as they are)" in again.summary()
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps
    assert json.loads((out / "manifest.json").read_text()) == first.manifest

    # An input touched, an atlas cut short, an atlas gone: those three are made again.
    os.utime(dataset / "cell_ch1_stack0001.tif", ns=(1, 1))
    data = (out / "volume_stack0002_c0.webp").read_bytes()
    (out / "volume_stack0002_c0.webp").write_bytes(data[: len(data) // 2])
    (out / "volume_stack0000_c1.webp").unlink()
    third = pack(dataset, out, executor="serial")
    assert sorted(third.written) == ["volume_stack0000_c1.webp", "volume_stack0001_c1.webp", "volume_stack0002_c0.webp"]
    assert len(third.kept) == 3 and json.loads((out / "manifest.json").read_text()) == first.manifest

    # The input folder moved (its files as they were): nothing to make again.
    moved = dataset.parent / "moved"
    dataset.rename(moved)
    assert len(pack(moved, out, executor="serial").kept) == 6
    moved.rename(dataset)
    # A manifest that does not say what the record does (a run stopped before writing its
    # own left the last one; or edited): the passes run and write it again.
    edited = json.loads((out / "manifest.json").read_text())
    edited["timepoints"][0]["files"]["c0"]["p_low"] += 1.0
    (out / "manifest.json").write_text(json.dumps(edited))
    assert len(pack(dataset, out, executor="serial").passes) == 2
    assert json.loads((out / "manifest.json").read_text()) == first.manifest
    # No manifest (a run stopped before it): the passes run, the atlases are kept, the manifest made.
    (out / "manifest.json").unlink()
    fourth = pack(dataset, out, executor="serial")
    assert len(fourth.passes) == 2 and len(fourth.kept) == 6  # scan and limits; nothing to render and json.loads((out / "manifest.json").read_text()) == first.manifest

    # Other settings, or --force: everything again.
    assert len(pack(dataset, out, executor="serial", quality=60).written) == 6
    assert len(pack(dataset, out, executor="serial", quality=60).kept) == 6
    assert len(pack(dataset, out, executor="serial", quality=60, force=True).written) == 6
    assert_manifest_true(out)


# -- 10. the demo --------------------------------------------------------------------------------


def test_the_demo_is_small_and_ends_with_its_picture(tmp_path):
    done = cli_run("demo", str(tmp_path / "demo"), "--no-progress", timeout=280)
    assert done.returncode == 0, done.stderr
    assert "wrote 8 atlases" in done.stdout and "preview:" in done.stdout
    total = sum(p.stat().st_size for p in (tmp_path / "demo").rglob("*") if p.is_file())
    assert total <= 100e6, total
    manifest = assert_manifest_true(tmp_path / "demo" / "output")
    assert manifest["global_z_crop_range"][0] > 0  # the empty slices were cropped
    with Image.open(tmp_path / "demo" / "output" / "preview.png") as im:
        assert im.size[0] > 500
