"""What autopar says about a choice and a run reads the same way everywhere and never
contradicts itself: ``result.explain()``, ``report.explain()`` (a run), a pipeline run's
``report().explain()`` and ``autopar pack``'s report. The figures here are built by hand
(Profiles, results, reports), so nothing depends on how fast this machine is."""

from __future__ import annotations

import dataclasses
import json

import pytest

from autopar import Pipeline, Stage
from autopar.image.report import PackReport, PassReport
from autopar.run.report import ExecutionReport
from autopar.tune.model import Candidate
from autopar.tune.result import OptimizationResult
from autopar.tune.sample import Profile


def _profile(**kw) -> Profile:
    base = dict(
        n_sampled=40, n_probed=8, n_items=1000, item_time_mean=12.8e-3, item_time_std=1.0e-3, item_time_max=15e-3,
        cpu_ratio=1.0, func_bytes=500, func_pickle_time=1e-5, item_bytes=20, item_pickle_time=2e-6, result_bytes=20,
        result_pickle_time=2e-6, transport="pickle", pickle_error=None, peak_memory_per_item=4096,
        thread_scaling=1.9, probe_threads=2, sample_time=0.6, exhausted=False, probe_rounds=1,
    )
    base.update(kw)
    return Profile(**base)


def _result(profile: Profile | None = None, **kw) -> OptimizationResult:
    base = dict(
        executor_type="thread", n_jobs=2, chunksize=4, estimated_speedup=1.9, workload_type="cpu", cpu_ratio=1.0,
        predicted_time=6.5, serial_time=12.3, n_remaining=952, start_method="fork", usable_cores=2,
        profile=profile or _profile(), start_cost=2e-3, runner_ups=(), reasons=("threads: the work releases the GIL",),
        warnings=(), optimize_time=0.61,
    )
    base.update(kw)
    return OptimizationResult(**base)


def _section(text: str, title: str) -> list[str]:
    """The indented lines under ``title`` (up to the next unindented line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        out.append(line)
    return out


# -- result.explain() -------------------------------------------------------------------------


def test_threads_slower_than_one_are_said_to_be_slower():
    """A probe where two threads ran at 0.56 of one thread's speed is not "faster", neither in
    the measured figures nor in the reason optimize() gave."""
    r = _result(
        _profile(thread_scaling=0.56),
        executor_type="process",
        reasons=("processes: the work is cpu-bound and threads do not run it in parallel (2 threads ran x0.56 faster than one); pickling and pool start are paid back",),
    )
    text = r.explain()
    assert "x0.56 faster" not in text
    assert "2 threads ran slower than one: x0.56 the speed of one" in text
    # Above one it still reads as faster, and about one as neither.
    assert "2 threads ran x1.90 faster than one" in _result(_profile(thread_scaling=1.9)).explain()
    assert "2 threads ran about as fast as one: x1.01" in _result(_profile(thread_scaling=1.01)).explain()


def test_spread_and_max_say_what_they_are_over():
    """One timed batch has no spread; the max that is the first call says it is the first call
    (the mean and the spread are the timed batches', after it)."""
    text = _result(_profile(item_time_mean=12.8e-3, item_time_std=0.0, item_time_max=29e-3)).explain()
    line = next(line for line in text.splitlines() if "item time" in line)
    assert "0.0 us spread" not in text and "cv 0.00" not in text
    assert "12.8 ms mean" in line and "no spread" in line and "the first call took 29.0 ms" in line
    # With a spread, the max says whether the first call is in it.
    spread = _result(_profile(item_time_std=1.0e-3, item_time_max=15e-3)).explain()
    assert "1.0 ms spread (cv 0.08) between the timed batches; 15.0 ms max (the first call included)" in spread
    warm = _result(_profile(item_time_std=1.0e-3, item_time_max=15e-3, warmup_time=0.4)).explain()
    assert "15.0 ms max (the later items)" in warm and "first call 400.0 ms: a one-time cost" in warm


def test_a_cache_hit_says_where_its_figures_came_from_and_when():
    """On a tuning-cache hit no item ran: no sample line of zeros, the figures are said to be
    the cache's, with the date they were measured."""
    note = "figures from the tuning cache (measured 2025-03-04 10:21, 2 runs since; key 0123456789ab): no sample taken"
    p = _profile(n_sampled=0, n_probed=0, sample_time=0.0)
    text = _result(p, cache="hit", cache_key="0123456789abcdef", reasons=("threads: the work releases the GIL", note),
                   optimize_time=3e-4).explain()
    assert "0 items serially" not in text and "in 0.0 us" not in text
    evidence = _section(text, "measured before, kept in the tuning cache")
    assert any("measured 2025-03-04 10:21" in line for line in evidence), text
    assert text.count("2025-03-04 10:21") == 1  # said once, not again among the reasons


def test_one_worker_pools_are_not_runner_ups():
    """A pool of one worker runs nothing in parallel: it is not listed as an alternative;
    the other pools are, in the words the choice itself uses."""
    ups = (
        Candidate("process", 2, 8, 7.0),
        Candidate("thread", 1, 4, 12.5),
        Candidate("process", 1, 16, 12.9),
        Candidate("serial", 1, 1, 12.3),
    )
    text = _result(runner_ups=ups).explain()
    listed = _section(text, "runner-ups")
    assert any(line.strip().startswith("process pool, 2 workers, chunksize 8") for line in listed), text
    assert any(line.strip().startswith("serial") for line in listed)
    assert not any("1 worker," in line or "x1 " in line for line in listed), listed
    assert "2 pools of one worker left out" in text
    assert text.splitlines()[0] == "autopar chose: thread pool, 2 workers, chunksize 4"


def test_nothing_left_to_run_is_said_not_predicted():
    """The sample ran every item: no "predicted 0.0 us for the 0 remaining items", and the
    speedup plot draws no curve at 0 but says there is nothing left."""
    r = _result(_profile(n_items=48, exhausted=True), executor_type="serial", n_jobs=1, n_remaining=0,
                predicted_time=0.0, serial_time=0.0, estimated_speedup=1.0)
    text = r.explain()
    assert "0 remaining items" not in text and "nothing left to run" in text
    pytest.importorskip("matplotlib")
    from autopar.plot import speedup_figure

    fig = speedup_figure(r)
    ys = [y for ax in fig.axes for line in ax.get_lines() for y in line.get_ydata()]
    assert 0.0 not in ys and not any(y < 1e-6 for y in ys)
    words = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert "nothing left to run" in words and "48 items" in words


# -- a run's report ---------------------------------------------------------------------------


def test_a_run_report_explains_itself_in_the_same_words():
    """report.explain() exists (summary() is the same text), says "serially" and "1 item",
    and names pools as result.explain() does."""
    serial = ExecutionReport("serial", 1, 1, None, n_items=20, wall_time=1.5, completed=True)
    assert serial.explain() == serial.summary()
    assert serial.explain().splitlines()[0] == "ran 20 items serially in 1.50 s"
    one = ExecutionReport("thread", 2, 4, None, n_items=1, wall_time=0.0031, completed=True)
    assert one.explain().splitlines()[0] == "ran 1 item in 3.1 ms on a thread pool, 2 workers, chunksize 4"
    assert _result().label() in one.explain()  # the same pool, the same words
    ran = ExecutionReport(
        "process", 4, 8, "fork", n_items=600, n_from_sample=1, wall_time=2.0, run_time=1.9, predicted_time=1.2,
        failures=[3], fallback=(40, "process x4 (chunksize 8)", "threads were short of their prediction"),
    )
    text = ran.explain()
    assert "1 result came from optimize()'s sample" in text and "1 item failed: 3" in text
    assert "the other 599 items: predicted 1.20 s, measured 1.90 s" in text
    assert "from item 40 on, ran on a process pool, 4 workers, chunksize 8: threads were short" in text
    back = ExecutionReport("thread", 2, 4, None, n_items=60, fallback=(12, "serial", "losing to serial"))
    assert "from item 12 on, ran serially: losing to serial" in back.explain()


# -- a pipeline run's report ------------------------------------------------------------------


def nap(x: int) -> int:
    import time

    time.sleep(0.001)
    return x


def add1(x: int) -> int:
    return x + 1


def test_a_pipeline_run_report_is_an_object_with_explain_and_plain_data():
    """report() has explain() and to_dict() (JSON: a fused run's ExecutionReport as a dict,
    not a repr), and reads as the mapping it was (report()["mode"])."""
    items = list(range(60))
    staged = Pipeline([nap, Stage(add1, n_jobs=1)]).execute_iter(items)  # the pin keeps it staged
    assert list(staged) == [x + 1 for x in items]
    rep = staged.report()
    assert rep["mode"] == "staged" and rep["items"] == len(items) and dict(rep)["mode"] == "staged"
    text = rep.explain()
    assert text.startswith(f"pipeline run (staged): {len(items)} items in ") and str(rep) == text
    add1_line = next(line for line in text.splitlines() if line.strip().startswith("add1"))
    assert "thread pool, 1 worker:" in add1_line and "items, " in add1_line  # same words as explain()
    json.dumps(rep.to_dict())

    pipe = Pipeline([add1, add1])
    plan = pipe.optimize(list(range(40)))
    fused = pipe.execute_iter(list(range(40)), plan=dataclasses.replace(plan, mode="fused"))
    assert fused.to_list() == [x + 2 for x in range(40)]
    rep = fused.report()
    assert isinstance(rep["execution"], ExecutionReport)  # dict-style access as before
    plain = rep.to_dict()
    assert isinstance(plain["execution"], dict) and plain["execution"]["n_items"] == 40
    assert json.loads(json.dumps(plain))["mode"] == "fused"
    assert "fused run:" in rep.explain() and "ran 40 items" in rep.explain()


# -- autopar pack's report --------------------------------------------------------------------


def _pack_report(errors: list[str]) -> PackReport:
    return PackReport(
        passes=[
            PassReport("pass 0: scan", "thread", 2, 1, 0.42, 6, 12.0),
            PassReport("pass 1: limits", "serial", 1, 1, 0.01, 6, 0.0),
        ],
        errors=errors,
        written=["a_atlas.webp"],
        wall_time=1.25,
    )


def test_the_pack_report_has_explain_and_to_dict_in_the_same_words():
    report = _pack_report(["b.tif: truncated"])
    text = report.explain()
    assert text == report.summary()
    assert "1 problem:" in text and "1 problems" not in text and "wrote 1 atlas in 1.25 s" in text
    assert "thread pool, 2 workers, chunksize 1" in text  # as result.explain() names a pool
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False and d["passes"][0]["how"] == "thread pool, 2 workers, chunksize 1"
    assert d["errors"] == ["b.tif: truncated"]


def test_the_pack_plot_counts_in_the_singular(tmp_path):
    pytest.importorskip("matplotlib")
    svg = _pack_report(["b.tif: truncated"]).plot(tmp_path / "passes.svg").read_text()
    assert "1 atlas in 1.25 s, 1 problem" in svg
    assert "1 problems" not in svg and "1 atlases" not in svg
    assert "thread pool, 2 workers," in svg  # the bar says how its pass ran, in the same words
