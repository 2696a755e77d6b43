"""autopar.bench() and ``autopar bench``: every way timed on the user's data, the best marked,
autopar's pick beside it, the stage breakdown; its picture and its command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import autopar
from autopar import Stage


def parse(x: int) -> list[int]:
    return [x] * 50


def crunch(values: list[int]) -> int:
    s = 0
    for v in values:
        for i in range(200):
            s += (v * i) % 7
    return s


def label(s: int) -> str:
    return f"item {s}"


def test_every_way_is_timed_and_the_best_marked():
    report = autopar.bench([parse, crunch, Stage(label, n_jobs=1)], range(40), rounds=1)
    kinds = {r.kind for r in report.rows}
    assert kinds == {"sequential", "fused", "staged", "autopar"}
    names = [r.name for r in report.rows]
    assert "fused thread x2" in names and "fused process x2" in names
    others = [r for r in report.rows if r.kind != "autopar"]
    best = min(others, key=lambda r: r.seconds)
    assert report.best == best.name
    auto = next(r for r in report.rows if r.kind == "autopar")
    assert report.regret == pytest.approx(auto.seconds / best.seconds)
    assert report.autopar_pick.startswith("staged")  # a pinned stage: staged
    assert [s["name"] for s in report.stages] == ["parse", "crunch", "label"]
    assert all(s["ms_per_item"] > 0 for s in report.stages)
    assert report.bottleneck in {"parse", "crunch", "label"}
    assert all(r.items == 40 and len(r.runs) == 1 for r in report.rows)
    text = report.table()
    assert "<- best" in text and "<- autopar's pick" in text and "bottleneck" in text
    json.dumps(report.to_dict())


def test_a_way_that_cannot_run_is_left_out_and_said():
    offset = 3
    report = autopar.bench([lambda x: x + offset], range(20), rounds=1)  # a lambda: no stdlib process pool
    assert not any(r.name.startswith("fused process") for r in report.rows)
    assert any(name.startswith("fused process") for name in report.extra["skipped"])
    assert "not timed: fused process" in report.table()
    with pytest.raises(ValueError, match="at least one item"):
        autopar.bench([parse], [])


def test_the_command_and_its_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    png = tmp_path / "bench.png"
    out = subprocess.run(
        [sys.executable, "-m", "autopar", "bench", "tests.test_bench:parse,tests.test_bench:crunch", "--range", "30",
         "--rounds", "1", "--plot", str(png)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "<- best" in out.stdout and "regret" in out.stdout and "crunch" in out.stdout
    with Image.open(png) as im:
        im.load()
        assert im.size[0] == 1200 and im.size[1] >= 160
