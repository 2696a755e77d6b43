"""Machine facts, the on-disk cost cache, the command line and the examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import autopar
from autopar.tune.system import system_info

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def run(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_usable_cores_follow_affinity():
    code = "import os; os.sched_setaffinity(0, {0}); import autopar; print(autopar.usable_cores())"
    out = run("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_usable_cores_override():
    out = run("-c", "import autopar; print(autopar.usable_cores())", env={"AUTOPAR_CPU_COUNT": "3"})
    assert out.stdout.strip() == "3"


def test_system_info_facts():
    info = system_info()
    assert 1 <= info.usable_cores <= info.logical_cores
    assert 0 < info.available_memory <= info.total_memory
    assert info.start_method in ("fork", "spawn", "forkserver")
    assert isinstance(info.gil_enabled, bool)


def test_pool_costs_cached_on_disk_across_processes(tmp_path):
    env = {"AUTOPAR_CACHE_DIR": str(tmp_path)}
    code = "import autopar, json; c = autopar.pool_costs('fork'); print(json.dumps(c.to_dict()))"
    first = run("-c", code, env=env)
    assert first.returncode == 0, first.stderr
    files = list(tmp_path.glob("pool-costs-fork-*.json"))
    assert len(files) == 1
    second = run("-c", code, env=env)
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["measured_at"] == b["measured_at"]  # read back, not measured again
    assert a["process_start_per_worker"] >= 0 and a["process_task_overhead"] > 0


def test_pool_costs_are_positive():
    c = autopar.pool_costs()
    assert c.process_start(2) > c.thread_start(2) > 0
    assert c.process_task_overhead > c.thread_task_overhead > 0
    assert c.thread_chunk_cost >= c.thread_task_overhead  # the runner's chunk costs at least a bare task
    assert c.process_seconds_per_byte > 0


def test_get_executor_auto_needs_a_result():
    with pytest.raises(ValueError, match="needs the result of optimize"):
        with autopar.get_executor("auto"):
            pass


def test_get_executor_from_result():
    from helpers import nap, square

    r = autopar.optimize(nap, [0.002] * 200, executor_type="thread", n_jobs=3)
    assert r.executor_type == "thread"
    with autopar.get_executor(r) as pool:
        assert pool._max_workers == 3
        assert list(pool.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_get_executor_process_leaves_no_workers():
    from helpers import pid

    with autopar.get_executor("process", 2) as pool:
        pids = set(pool.map(pid, range(8)))
    assert os.getpid() not in pids  # the leak guard checks they are gone


def test_cli_info():
    out = run("-m", "autopar", "info")
    assert out.returncode == 0, out.stderr
    for words in ("usable cores", "start method", "GIL", "process pool start", "thread round trip"):
        assert words in out.stdout


def test_cli_info_json():
    out = run("-m", "autopar", "info", "--json")
    data = json.loads(out.stdout)
    assert data["system"]["usable_cores"] >= 1
    assert data["pool_costs"]["process_task_overhead"] > 0


def test_cli_optimize_and_execute():
    out = run("-m", "autopar", "optimize", "autopar.workloads:sleep_io", "--items", *["0.01"] * 200, "--execute")
    assert out.returncode == 0, out.stderr
    assert "autopar chose: thread pool" in out.stdout
    assert "ran 200 items" in out.stdout


def test_cli_optimize_json_with_range():
    out = run("-m", "autopar", "optimize", "autopar.workloads:tiny", "--range", "50000", "--json")
    data = json.loads(out.stdout)
    assert data["executor_type"] == "serial"


def test_cli_bad_function():
    out = run("-m", "autopar", "optimize", "autopar.nothere:f", "--range", "5")
    assert out.returncode != 0
    assert "cannot import 'autopar.nothere'" in out.stderr
    out = run("-m", "autopar", "optimize", "autopar.workloads:nothing", "--range", "5")
    assert out.returncode != 0 and "no attribute 'nothing'" in out.stderr
