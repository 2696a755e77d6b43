"""Runs on a real Dask cluster: a LocalCluster of worker processes on 127.0.0.1, started once
for the module (scratch space in a temp folder), and a cluster of its own for the test that
kills a worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import pytest

import autopar
from autopar import ItemFailed, execute, execute_iter
from autopar.backends.dask import INSTALL_HINT, require_distributed
from autopar.tune.model import dask_chunksize

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.dask


@contextmanager
def _cluster(scratch: str, dashboard: str | None = None):
    """A LocalCluster; the environment it changes for its workers (LocalCluster sets
    OPENBLAS_NUM_THREADS=1 and the like in this process's os.environ) is put back once its
    workers are up (a BLAS library loaded here later, SciPy's by the image passes, would
    start with one thread) and again after."""
    environ = dict(os.environ)
    try:
        with _local_cluster(scratch, dashboard) as cluster:
            os.environ.clear()
            os.environ.update(environ)
            yield cluster
    finally:
        os.environ.clear()
        os.environ.update(environ)


def _local_cluster(scratch: str, dashboard: str | None):
    return distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=dashboard,  # None: on 127.0.0.1:8787
        local_directory=scratch,
        silence_logs=50,
    )


@pytest.fixture(scope="module")
def client():
    with tempfile.TemporaryDirectory(prefix="autopar-test-dask-") as scratch:
        with _cluster(scratch) as cluster, distributed.Client(cluster, set_as_default=False) as c:
            # Threads the client starts on first use are up before any test counts threads.
            autopar.execute(abs, range(-40, 0), pool=c, chunksize=4)
            c.get_executor().submit(bytes, 1 << 20).result()
            yield c
    _retire_offload_thread()


def _retire_offload_thread() -> None:
    """distributed runs part of a client's work on a thread of its own, process-wide
    (``Dask-Offload``: started on first use, never ended). Once this module's clients are
    gone it ends too, so that no later test forks beside it (a fork beside threads copies
    their locks; 3.12+ warn); an idle executor takes its place (its thread starts on use)."""
    from concurrent.futures import ThreadPoolExecutor

    from distributed import utils

    old, utils._offload_executor = utils._offload_executor, ThreadPoolExecutor(1, thread_name_prefix="Dask-Offload")
    old.shutdown(wait=True)


def square(x: int) -> int:
    return x * x


def fail_on_7(x: int) -> int:
    if x == 7:
        raise ValueError(f"bad item {x}")
    return x


def where(x: int) -> tuple[int, int]:
    return x, os.getpid()


def nap_square(x: int) -> int:
    time.sleep(0.001)
    return x * x


def test_results_in_input_order_with_chunks_as_tasks(client):
    data = list(range(300))
    out, report = execute(nap_square, data, pool=client, return_report=True)
    assert out == [x * x for x in data]
    assert report.executor_type == "dask" and report.n_jobs == 2
    assert report.n_from_sample < len(data)  # the sample sized the tasks; the cluster ran the rest
    # Items of 1 ms: each task carries many of them (its work >> its round trip), not one.
    assert report.chunksize > 1, report.summary()
    # (The chunk tuner re-sizes tasks whose items run faster or slower than sampled, as on
    # a busy machine: the bound is on the smallest size it used.)
    smallest = min([report.chunksize, *(new for _, _, new, _ in report.chunksize_changes)])
    assert smallest > 1 and report.n_chunks <= -(-(len(data) - report.n_from_sample) // smallest)


def test_a_job_the_sample_finishes_never_reaches_the_cluster(client):
    out, report = execute(square, range(1000), pool=client, return_report=True)
    assert out == [x * x for x in range(1000)]
    assert report.n_from_sample == 1000 and report.n_chunks == 0


def test_work_runs_on_the_cluster_workers(client):
    out = execute(where, range(40), pool=client, chunksize=5)
    assert [x for x, _ in out] == list(range(40))
    workers = set(client.run(os.getpid).values())  # each worker's process
    assert {p for _, p in out} <= workers and os.getpid() not in workers


def test_a_generator_is_consumed_once_and_in_order(client):
    gen = (x for x in range(300))
    assert list(execute_iter(square, gen, pool=client)) == [x * x for x in range(300)]


def test_a_failing_item_is_named(client):
    with pytest.raises(ValueError, match="bad item 7") as info:
        execute(fail_on_7, range(20), pool=client, chunksize=3)
    assert info.value.autopar_item_index == 7


def test_collect_keeps_going_past_a_failing_item(client):
    out, report = execute(fail_on_7, range(20), pool=client, chunksize=3, errors="collect", return_report=True)
    assert isinstance(out[7], ItemFailed) and out[7].index == 7
    assert [x for i, x in enumerate(out) if i != 7] == [x for x in range(20) if x != 7]
    assert report.failures == [7]


def test_a_scheduler_address_gets_a_client_of_its_own_closed_after_the_run(client):
    address = client.scheduler.address
    before = client.run_on_scheduler(_n_clients)
    out, report = execute(square, range(50), scheduler=address, return_report=True)
    assert out == [x * x for x in range(50)] and report.executor_type == "dask"
    deadline = time.monotonic() + 5
    while client.run_on_scheduler(_n_clients) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.run_on_scheduler(_n_clients) == before


def _n_clients(dask_scheduler) -> int:
    return len(dask_scheduler.clients)


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds():
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        execute(square, range(10), scheduler="tcp://127.0.0.1:9")
    assert time.monotonic() - t0 < 30


def test_dask_options_are_checked():
    with pytest.raises(ValueError, match="needs scheduler="):
        execute(square, range(10), executor_type="dask")
    with pytest.raises(ValueError, match="does not go with executor_type='thread'"):
        execute(square, range(10), executor_type="thread", scheduler="tcp://127.0.0.1:8786")


def test_without_distributed_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now fails
    with pytest.raises(ImportError, match="pip install"):
        require_distributed()
    assert "autopar[dask]" in INSTALL_HINT


def test_tasks_are_sized_against_their_round_trip():
    import dataclasses

    profile = autopar.optimize(square, range(100), executor_type="serial").profile
    tiny = dataclasses.replace(profile, item_time_mean=1e-6)
    heavy = dataclasses.replace(profile, item_time_mean=0.05)
    cs = dask_chunksize(tiny, 100_000, 2)
    # Work per task at least 20 round trips of 1 ms, or 4 tasks a thread where that is less.
    assert cs == min(20_000, 100_000 // 8)
    assert dask_chunksize(heavy, 400, 2) == 1
    assert dask_chunksize(tiny, 10, 2) == 2  # a short job still spreads over the threads


def test_cluster_costs_are_measured_once_per_scheduler(client):
    from autopar.backends.dask import cluster_costs

    costs = cluster_costs(client)
    assert costs.address == client.scheduler.address
    assert (costs.workers, costs.threads) == (2, 2) and costs.memory > 0
    assert 0 < costs.task_seconds < 1 and 0 < costs.task_share_seconds < 1 and costs.bytes_per_second_to > 0 and costs.bytes_per_second_from > 0
    assert cluster_costs(client) is costs  # cached for this scheduler
    assert cluster_costs(client, refresh=True) is not costs


def test_info_names_the_cluster_and_its_costs(client, capsys):
    import json

    from autopar.cli import main

    assert main(["info", "--scheduler", client.scheduler.address, "--json"]) == 0
    cluster = json.loads(capsys.readouterr().out)["cluster"]
    assert cluster["workers"] == 2 and cluster["threads"] == 2 and cluster["task_seconds"] > 0
    assert main(["info", "--scheduler", client.scheduler.address]) == 0
    text = capsys.readouterr().out
    assert "2 threads" in text and "task round trip" in text and "MB/s" in text
    assert main(["info", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def spin(x: int) -> int:
    """About 2 ms of pure Python."""
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.002:
        pass
    return x


def _cluster_costs(threads: int, per_worker: int = 1):
    from autopar.backends.dask import ClusterCosts

    return ClusterCosts("tcp://127.0.0.1:1", threads // per_worker, threads, 1 << 34, 1e-3, 2e-4, 1e8, 1e8)


def test_the_model_sends_work_to_a_cluster_only_where_it_pays():
    import dataclasses

    from autopar.tune.costs import pool_costs
    from autopar.tune.model import decide
    from autopar.tune.system import system_info

    r = autopar.optimize(spin, range(400), executor_type="serial")
    cpu = dataclasses.replace(
        r.profile, n_items=4000, exhausted=False, item_time_mean=0.002, cpu_ratio=1.0, thread_scaling=1.0, probe_threads=2,
        others_cores=0.0, single_blas_time=None,  # (not the load or BLAS of the sample's moment)
    )
    system = dataclasses.replace(system_info(), usable_cores=2)
    costs = pool_costs()
    types = ("serial", "thread", "process", "dask")
    # 4000 items of 2 ms of pure Python: 64 cluster threads beat 2 local cores by far.
    big = decide(cpu, system, costs, executor_types=types, cluster=_cluster_costs(64))
    assert big.best.executor_type == "dask" and big.best.n_jobs == 64, big.reasons
    # Sub-microsecond items: no task round trip pays; the work stays here.
    tiny = dataclasses.replace(cpu, item_time_mean=1e-7, item_time_std=0.0)
    assert decide(tiny, system, costs, executor_types=types, cluster=_cluster_costs(64)).best.executor_type != "dask"
    # A cluster no bigger than this machine: a local pool within 20% wins.
    two = decide(cpu, system, costs, executor_types=types, cluster=_cluster_costs(2))
    assert two.best.executor_type != "dask", two.reasons


def test_threads_per_worker_count_for_work_that_holds_the_gil():
    import dataclasses

    from autopar.tune.costs import pool_costs
    from autopar.tune.model import best_dask, decide
    from autopar.tune.system import system_info

    r = autopar.optimize(spin, range(400), executor_type="serial")
    held = dataclasses.replace(r.profile, n_items=4000, exhausted=False, item_time_mean=0.002, cpu_ratio=1.0, thread_scaling=1.0, probe_threads=2)
    free = dataclasses.replace(held, thread_scaling=2.0)
    one, four = _cluster_costs(64), _cluster_costs(64, per_worker=4)
    # The same 64 threads: as 16 workers of 4 they run pure Python a quarter as fast.
    ratio = best_dask(4000, held, four).work / best_dask(4000, held, one).work
    assert 3.5 < ratio < 4.5
    assert best_dask(4000, free, four).work == pytest.approx(best_dask(4000, free, one).work)
    system, costs, types = system_info(), pool_costs(), ("serial", "process", "dask")
    advice = [x for x in decide(held, system, costs, executor_types=types, cluster=four).reasons if x.startswith("dask:")]
    assert advice and "--nthreads 1 --nworkers 4" in advice[0] and "x4.0 faster" in advice[0]
    advice = [x for x in decide(free, system, costs, executor_types=types, cluster=one).reasons if x.startswith("dask:")]
    assert advice and "releases the GIL" in advice[0]
    assert not [x for x in decide(held, system, costs, executor_types=types, cluster=one).reasons if x.startswith("dask:")]


def test_optimize_with_a_cluster_then_execute_on_its_scheduler(client):
    data = list(range(120))
    r = autopar.optimize(spin, data, cluster=client, executor_type="dask")
    assert r.executor_type == "dask" and r.scheduler == client.scheduler.address
    assert r.n_jobs == 2 and "dask cluster at" in r.explain()
    out, report = execute(spin, data, result=r, return_report=True)  # a client of its own, closed after
    assert out == data and report.executor_type == "dask"
    r = autopar.optimize(square, range(1000), cluster=client)  # tiny items: local
    assert r.executor_type != "dask"
    # Where the model ranked the pools, the cluster is among them. (It ranks none where the
    # work left is under MIN_SAVING: on a quiet machine the sample runs this whole job
    # itself, on a busy one it may stop early and leave a rest too small to rank.)
    assert not r.runner_ups or any(c.executor_type == "dask" for c in r.runner_ups)


def test_optimize_for_dask_needs_the_cluster():
    with pytest.raises(ValueError, match="needs cluster="):
        autopar.optimize(square, range(10), executor_type="dask")
    with pytest.raises(TypeError, match="cluster must be a dask.distributed Client"):
        autopar.optimize(square, range(10), cluster="tcp://127.0.0.1:8786")


def kill_worker_once(item: tuple[int, str]) -> int:
    """Kills the worker process it runs in, the first time item 30 runs (a file marks it)."""
    x, marker = item
    if x == 30 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.005)
    return x


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_no_result(client, tmp_path):  # (client: Dask's process-wide threads are up)
    marker = str(tmp_path / "killed")
    with tempfile.TemporaryDirectory(prefix="autopar-test-dask-") as scratch:
        # (The module's cluster holds 127.0.0.1:8787: this one's dashboard takes a free port.)
        with _cluster(scratch, "127.0.0.1:0") as cluster, distributed.Client(cluster, set_as_default=False) as c:
            out = execute(kill_worker_once, [(x, marker) for x in range(80)], pool=c, chunksize=5)
    assert os.path.exists(marker)  # the worker was killed
    assert out == list(range(80))


def kill_worker_always(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.slow
def test_a_task_whose_workers_keep_dying_raises_worker_died_naming_its_items(client):  # (as above)
    import dask

    with tempfile.TemporaryDirectory(prefix="autopar-test-dask-") as scratch:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            with _cluster(scratch, "127.0.0.1:0") as cluster, distributed.Client(cluster, set_as_default=False) as c:
                with pytest.raises(autopar.WorkerDied) as info:
                    execute(kill_worker_always, range(8), pool=c, chunksize=2)
    # Item 3 kills the worker running it; Dask marks every task that worker held as failed
    # (allowed-failures 0): the task of items 2-3, and the later ones queued behind it on a
    # busy machine. Which of them the run sees first depends on the machine's speed.
    assert info.value.items in ((2, 3), (4, 5), (6, 7))
    first, last = info.value.items
    assert f"Dask workers died running items {first}-{last}" in str(info.value)


def spin_on_5(x: int) -> int:
    if x == 5:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 30:  # pure Python: stopped at its next bytecode
            pass
    return x * 2


def test_a_timeout_stops_a_python_item_on_a_worker_thread(client):
    t0 = time.monotonic()
    out = execute(spin_on_5, range(12), pool=client, chunksize=2, timeout=0.5, errors="collect")
    assert time.monotonic() - t0 < 15  # not the item's 30 s
    assert [o for i, o in enumerate(out) if i != 5] == [2 * x for x in range(12) if x != 5]
    assert isinstance(out[5], ItemFailed) and isinstance(out[5].exception, autopar.ItemTimeout)
    assert "0.5 s timeout" in str(out[5].exception)
    with pytest.raises(autopar.ItemTimeout):
        execute(spin_on_5, range(12), pool=client, chunksize=2, timeout=0.5)


def sleep_on_5(x: int) -> int:
    if x == 5:
        time.sleep(7)  # one call into C: no exception reaches it before it returns
    return x * 2


def test_an_item_stuck_in_c_is_named_and_the_other_items_go_on(client):
    t0 = time.monotonic()
    out = execute(sleep_on_5, range(16), pool=client, chunksize=2, timeout=0.3, errors="collect")
    # The run did not wait for the stuck call (found after 2 x 0.3 s + 2 s and a check a
    # second at most: about 3.6 s; 7 s if it had waited).
    assert time.monotonic() - t0 < 6.0
    failed = [o.index for o in out if isinstance(o, ItemFailed)]
    assert failed == [4, 5]  # its chunk, and only its chunk
    assert "ran past the 0.3 s timeout on the Dask worker" in str(out[5].exception)
    assert [o for i, o in enumerate(out) if i not in (4, 5)] == [2 * x for x in range(16) if x not in (4, 5)]
    time.sleep(max(0.0, 7.5 - (time.monotonic() - t0)))  # the worker's thread is free again


def test_large_data_goes_to_the_cluster_by_scatter_and_the_function_once(client):
    from autopar.backends.dask import DaskExecutor

    ex = DaskExecutor(client)
    items = [bytes(3 << 19) for _ in range(4)] + [b"small"]  # 1.5 MB each, then 5 bytes
    out = execute(lambda b, big=bytes(2 << 20): len(b) + len(big), items, pool=ex, chunksize=1)
    assert out == [len(b) + (2 << 20) for b in items]
    assert ex.scattered == 1 + 4  # the function once, each large chunk once, the small one inline


@pytest.mark.slow
def test_a_scheduler_that_goes_away_is_a_clear_error_within_seconds(client):  # (client: Dask's threads are up)
    import threading

    before = {t.ident for t in threading.enumerate()}
    with tempfile.TemporaryDirectory(prefix="autopar-test-dask-") as scratch:
        with _cluster(scratch, "127.0.0.1:0") as cluster:
            address = cluster.scheduler_address
            closer = threading.Timer(1.5, cluster.close)
            closer.start()
            t0 = time.monotonic()
            with pytest.raises(ConnectionError, match=f"the Dask scheduler at {address} went away") as info:
                execute(nap_square_slow, range(200), scheduler=address, chunksize=1)
            waited = time.monotonic() - t0
            closer.join()
    assert waited < 1.5 + 5  # within seconds of the scheduler going
    assert "were in flight" in str(info.value)
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not left, left


def nap_square_slow(x: int) -> int:
    time.sleep(0.1)
    return x * x


def test_pack_on_the_cluster_writes_what_a_local_pack_writes(client, tmp_path):
    from autopar.image.pack import make_demo_data, pack

    src = tmp_path / "in"
    make_demo_data(src, channels=2, timepoints=2, shape=(12, 48, 48))
    local = pack(src, tmp_path / "local", executor="serial")
    address = str(client.scheduler.address)
    remote = pack(src, tmp_path / "dask", executor="dask", scheduler=address)
    assert local.ok and remote.ok, remote.summary()
    assert [p.executor for p in remote.passes] == ["dask", "serial", "dask"]  # pass 1 runs here
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "dask").iterdir()) and len(names) == 6  # + autopar-pack.json
    for name in names:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes(), name
    cli = subprocess.run(
        [sys.executable, "-m", "autopar", "pack", str(src), str(tmp_path / "auto"), "--scheduler", address, "--no-progress"],
        capture_output=True, text=True, timeout=170,
    )
    assert cli.returncode == 0, cli.stderr
    assert "pass 2: render" in cli.stdout
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == names


def test_pack_on_a_cluster_checks_what_its_workers_see(client, tmp_path):
    from autopar.image import ImageError
    from autopar.image.pack import _check_workers_see, pack

    with pytest.raises(ImageError, match="cannot see this folder"):
        _check_workers_see(client, tmp_path / "only-here" / "nowhere", None)
    with pytest.raises(ValueError, match="goes with executor 'auto' or 'dask'"):
        pack(tmp_path, tmp_path / "out", executor="thread", scheduler=str(client.scheduler.address))
    with pytest.raises(ValueError, match="needs scheduler="):
        pack(tmp_path, tmp_path / "out", executor="dask")


def test_execute_with_a_cluster_as_a_candidate(client):
    out, report = execute(nap_square, range(60), cluster=client, return_report=True)
    assert out == [x * x for x in range(60)]
    assert report.executor_type in ("serial", "thread", "process", "dask")
    out, report = execute(nap_square, range(60), cluster=client, executor_type="dask", return_report=True)
    assert out == [x * x for x in range(60)] and report.executor_type == "dask"
    with pytest.raises(ValueError, match="not both"):
        execute(square, range(3), cluster=client, pool=client)
    with pytest.raises(ValueError, match="does not go with executor_type='process'"):
        execute(square, range(3), cluster=client, executor_type="process")
