"""Shared fixtures: one pool per executor kind and start method for the whole session, and a
guard that fails any test leaving child processes, threads or temp files behind."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

# The session's own temp folder, under the system's: everything the tests, their worker
# processes (spawn and forkserver workers inherit TMPDIR, fork workers tempfile.tempdir) and
# the commands they run write to a temp folder goes there, and the leak check looks only
# there, not at other programs' files in the shared folder. Removed when the session ends.
# pytest's own tmp_path folders stay under the system's temp folder, where pytest keeps the
# last few runs' for a look after a failure.
_SYSTEM_TMP = tempfile.gettempdir()
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", _SYSTEM_TMP)


def _remove_stale_sessions() -> None:
    """Folders of sessions that were killed before their end (their process is gone)."""
    for folder in Path(_SYSTEM_TMP).glob("autopar-test-session-*-*"):
        pid = folder.name.split("-")[3]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


_remove_stale_sessions()
SESSION_TMP = tempfile.mkdtemp(prefix=f"autopar-test-session-{os.getpid()}-", dir=_SYSTEM_TMP)
atexit.register(shutil.rmtree, SESSION_TMP, True)
os.environ["TMPDIR"] = SESSION_TMP
tempfile.tempdir = SESSION_TMP

# Measured pool costs go to a cache of the test session's own, not the user's.
_CACHE = os.path.join(SESSION_TMP, "cache")
os.mkdir(_CACHE)
os.environ["AUTOPAR_CACHE_DIR"] = _CACHE
# The tuning cache is off: a test that calls optimize() twice on the same job expects two
# samples. tests/test_wisdom.py turns it on, each test in a folder of its own.
os.environ["AUTOPAR_CACHE"] = "off"

import autopar  # noqa: E402

EXECUTORS = ["serial", "thread", "process-fork", "process-spawn", "process-forkserver"]


def _split(name: str) -> tuple[str, str | None]:
    kind, _, method = name.partition("-")
    return kind, method or None


def _warm(pool, n: int) -> None:
    # Start every worker now (spawn and forkserver pools start them on demand), so that the
    # leak guard sees them as the session's, not a test's.
    list(pool.map(time.sleep, [0.05] * n))


@pytest.fixture(scope="session")
def _pools():
    pools = {}
    stack = []
    for name in EXECUTORS:
        kind, method = _split(name)
        cm = autopar.get_executor(kind, 2, start_method=method)
        pool = cm.__enter__()
        stack.append(cm)
        if kind != "serial":
            _warm(pool, 2)
        pools[name] = pool
    yield pools
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture(params=EXECUTORS)
def pool(request, _pools):
    """A warm shared pool of 2 workers: serial, thread, or process with each start method."""
    return _pools[request.param]


@pytest.fixture(params=EXECUTORS)
def executor(request):
    """(executor_type, start_method) for tests that let execute() build its own pool."""
    return _split(request.param)


def _tmp_entries() -> set[str]:
    """What is in the session's own temp folder, less the session's cache, multiprocessing's
    per-process folders (the fork server's ``pymp-*``) and Dask's scratch root, which every
    Dask scheduler makes in the temp folder and keeps for the next (its work folders inside
    go with their servers)."""
    root = Path(SESSION_TMP)
    return {
        p.name
        for p in root.iterdir()
        if p.name not in ("cache", "dask-scratch-space") and not p.name.startswith("pymp-")
    }


def _mp_helpers() -> set[int]:
    """multiprocessing's own long-lived helpers (resource tracker, fork server): one per
    process, started on first use, not a test's leftovers."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(resource_tracker._resource_tracker, "_pid", None),
        getattr(forkserver._forkserver, "_forkserver_pid", None),
    }
    return {p for p in pids if p}


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves child processes, threads or temp files behind."""
    me = psutil.Process()
    children = {p.pid for p in me.children(recursive=True)}
    threads = set(threading.enumerate())
    tmp = _tmp_entries()
    yield
    deadline = time.monotonic() + 5
    while True:
        mp_helpers = _mp_helpers()
        new_children = [
            p
            for p in me.children(recursive=True)
            if p.pid not in children
            and p.pid not in mp_helpers
            and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE
        ]
        new_threads = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not new_children and not new_threads or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new_children, f"child processes left behind: {[p.pid for p in new_children]}"
    assert not new_threads, f"threads left behind: {[t.name for t in new_threads]}"
    left = _tmp_entries() - tmp
    assert not left, f"temp files left behind: {sorted(left)}"
