"""execute() on every executor kind and start method: results, order, inputs, errors."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import itertools

import pytest

import autopar
from autopar import execute, execute_iter, optimize

from helpers import Unpicklable, fail_on, square, value_of

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_results_in_input_order(pool, chunksize):
    data = list(range(103))
    assert execute(square, data, pool=pool, chunksize=chunksize) == [x * x for x in data]


def test_generator_input(pool):
    gen = (i for i in range(57))
    assert execute(square, gen, pool=pool, chunksize=4) == [i * i for i in range(57)]


def test_empty_input(pool):
    assert execute(square, [], pool=pool, chunksize=1) == []
    assert execute(square, iter(()), pool=pool, chunksize=1) == []


def test_one_item(pool):
    assert execute(square, [12], pool=pool, chunksize=1) == [144]


def test_lambda_and_closure(pool):
    offset = 5
    assert execute(lambda x: x + offset, range(20), pool=pool, chunksize=3) == [x + 5 for x in range(20)]


def test_exception_names_the_item(pool):
    with pytest.raises(ValueError, match="bad item 7") as info:
        execute(fail_on, range(40), pool=pool, chunksize=4)
    exc = info.value
    assert exc.autopar_item_index == 7
    assert any("item 7" in note for note in exc.__notes__)
    if isinstance(pool, ProcessPoolExecutor):
        assert isinstance(exc.__cause__, autopar.RemoteTraceback)
        assert "fail_on" in str(exc.__cause__)


def test_unpicklable_item(pool):
    items = [Unpicklable(i) for i in range(6)]
    if isinstance(pool, ProcessPoolExecutor):
        with pytest.raises(TypeError, match="item 0 cannot be sent to a process worker"):
            execute(value_of, items, pool=pool, chunksize=2)
    else:
        assert execute(value_of, items, pool=pool, chunksize=2) == list(range(6))


def test_iterator_form_is_lazy(pool):
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    it = execute_iter(square, source(), pool=pool, chunksize=2)
    first = [next(it) for _ in range(5)]
    assert first == [0, 1, 4, 9, 16]
    # Bounded look-ahead: at most 2n+1 chunks beyond what was handed back.
    assert len(pulled) <= 5 + (2 * 2 + 1) * 2 + 2
    it.close()


def test_progress_callback_counts_items(pool):
    seen = []
    execute(square, range(30), pool=pool, chunksize=4, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == 30
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_own_pool_each_kind(executor):
    kind, method = executor
    results, report = execute(
        square, range(25), executor_type=kind, n_jobs=2, chunksize=3, start_method=method, return_report=True
    )
    assert results == [x * x for x in range(25)]
    assert report.executor_type == kind and report.completed
    if kind != "serial":
        assert report.n_chunks == 9


def test_lambda_under_spawn_with_own_pool():
    scale = 3
    assert execute(lambda x: x * scale, range(10), executor_type="process", n_jobs=2, chunksize=2, start_method="spawn") == [
        x * 3 for x in range(10)
    ]


def test_progress_bar_counts_items(capsys):
    execute(square, range(40), executor_type="thread", n_jobs=2, chunksize=5, progress=True, desc="squares")
    err = capsys.readouterr().err
    assert "squares" in err and "40/40" in err


def test_process_workers_limit_blas_threads():
    from helpers import blas_threads

    n = 2
    counts = execute(blas_threads, range(4), executor_type="process", n_jobs=n, chunksize=1)
    expected = max(1, autopar.usable_cores() // n)
    assert set(counts) == {expected}


def test_forked_workers_inherit_the_blas_cap_and_start_no_blas_threads():
    """Capping OpenBLAS in a forked child starts its threads (they spin for about 0.1 s):
    the workers inherit the caller's cap instead, and the caller's own setting comes back
    when the pool shuts down."""
    np = pytest.importorskip("numpy")
    from threadpoolctl import threadpool_info

    from helpers import blas_threads, threads_not_pythons

    np.ones((64, 64)) @ np.ones((64, 64))
    if not autopar.tune.system.threaded_blas_loaded():
        pytest.skip("no threaded BLAS loaded")
    before = [p["num_threads"] for p in threadpool_info()]
    with autopar.get_executor("process", 2, start_method="fork") as ex:
        started = list(ex.map(threads_not_pythons, range(2)))
        counts = list(ex.map(blas_threads, range(2)))
    assert started == [0, 0]
    assert counts == [max(1, autopar.usable_cores() // 2)] * 2
    assert [p["num_threads"] for p in threadpool_info()] == before


def test_early_close_stops_the_pool():
    from helpers import nap

    it = execute_iter(nap, [0.01] * 200, executor_type="process", n_jobs=2, chunksize=1)
    assert next(it) == 0.01
    it.close()  # the leak guard checks the workers are gone


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(n_jobs=0), ValueError, "n_jobs must be a positive int or -1"),
        (dict(n_jobs=-3), ValueError, "n_jobs"),
        (dict(n_jobs=2.5), TypeError, "n_jobs must be an int"),
        (dict(chunksize=0), ValueError, "chunksize must be a positive int"),
        (dict(executor_type="gpu"), ValueError, "executor_type must be one of"),
        (dict(start_method="clone"), ValueError, "start_method"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        execute(square, range(3), **kwargs)


def test_bad_func_and_data():
    with pytest.raises(TypeError, match="func must be callable"):
        execute(42, range(3))
    with pytest.raises(TypeError, match="data must be iterable"):
        execute(square, 42)


def test_pool_and_executor_type_must_agree(_pools):
    with pytest.raises(ValueError, match="does not match"):
        execute(square, range(3), pool=_pools["thread"], executor_type="process")


def test_n_jobs_minus_one_means_all_cores():
    _, report = execute(square, range(10), executor_type="thread", n_jobs=-1, chunksize=2, return_report=True)
    assert report.n_jobs == autopar.usable_cores()


def test_serial_run_caps_blas_where_the_sample_found_it_faster():
    import dataclasses

    from helpers import blas_threads

    r = optimize(blas_threads, list(range(20)), executor_type="serial")
    faster = dataclasses.replace(r, profile=dataclasses.replace(r.profile, single_blas_time=r.profile.item_time_mean / 2))
    assert set(execute(blas_threads, list(range(40)), result=faster)[20:]) == {1}


def test_serial_blocks_are_short_only_where_progress_is_watched():
    # A serial run yields its results in blocks; a block costs time of its own (300,000 calls
    # of x + 1: 13-15 ms in a comprehension, 19.4 ms in blocks from 2 ms of work). Blocks
    # start at 2 ms of work where a bar or a callback shows the count, else at 20 ms.
    data = list(range(200_000))
    r = autopar.optimize(_inc, data, executor_type="serial", cache=False)
    autopar.execute(_inc, data, result=r)  # takes the sample's results: the runs below run every item
    seen = []
    results = {}
    for progress in (False, lambda done, total: seen.append(done)):
        out, report = autopar.execute(_inc, data, result=r, progress=progress, return_report=True)
        assert out == [x + 1 for x in data]
        blocks = [n for _, n, _, _, _ in report.timeline]
        assert sum(blocks) == 200_000 and report.n_from_sample == 0
        results[bool(progress)] = blocks
    quiet, watched = results[False], results[True]
    assert quiet[0] >= min(len(data), 5 * watched[0])
    assert len(quiet) < len(watched) and seen[-1] == 200_000


def _inc(x: int) -> int:
    return x + 1
