"""Shared fixtures: the executor x start-method matrix (one pool per executor kind and start
method, shared by the tests that take it), and a guard that fails any test leaving child
processes, threads or temp files behind."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
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

# -- the executor x start-method matrix ---------------------------------------------------
#
# Where work runs, written once for the whole suite: serial, threads, and a process pool under
# each start method this platform has (fork, forkserver, spawn). A test takes the matrix by
# naming one of three fixtures, and pytest_generate_tests below runs it once for each place:
#
#   where     a Where (.kind, .method, .kw for execute(): executor_type and start_method);
#             the test starts what it needs itself (a fault breaks the pool it runs on)
#   pool      a warm pool of 2 workers of that kind, shared by the tests that take it (one
#             pool start for a run of tests that ask: the cheapest way to run on every start
#             method); see _SharedPools for when one is up
#   executor  (executor_type, start_method), for tests that let execute() build its own pool
#
# (A test may take ``where`` and ``pool`` together: both are then the same place.)
#
# ``@pytest.mark.matrix(*kinds, cost=...)`` narrows it: ``kinds`` (default all three) and
# ``cost``. "cheap" (the default): the process cases under every start method. "expensive",
# for cases that start several pools, kill or replace workers, or wait on them for seconds:
# the process cases under EXPENSIVE_METHODS only, the documented subset: the default start
# method alone (autopar's default_start_method(): what a caller who names none gets, fork on
# Linux before 3.14, forkserver on 3.14, spawn on macOS; AUTOPAR_START_METHOD where set).
# The other methods reach the same code through the cheap cases (a pool started, run, failed
# and shut down under each). AUTOPAR_TEST_EXPENSIVE_METHODS widens the subset: "all", or
# names ("fork,spawn"). On this project's 2-core machine, spawn added to the default cost
# about 10 s more over faults, pipeline and service (about 47 s without it).

START_METHODS = tuple(m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods())
KINDS = ("serial", "thread", "process")
COSTS = ("cheap", "expensive")


def _expensive_methods() -> tuple[str, ...]:
    from autopar.tune.system import default_start_method

    asked = os.environ.get("AUTOPAR_TEST_EXPENSIVE_METHODS", "").strip()
    if asked == "all":
        return START_METHODS
    wanted = {m.strip() for m in asked.split(",") if m.strip()} or {default_start_method()}
    unknown = wanted - set(START_METHODS)
    if unknown:
        raise ValueError(f"AUTOPAR_TEST_EXPENSIVE_METHODS: {sorted(unknown)} not among this platform's {START_METHODS}")
    return tuple(m for m in START_METHODS if m in wanted)


EXPENSIVE_METHODS = _expensive_methods()


@dataclass(frozen=True)
class Where:
    """One place work runs: ``kind`` serial, thread or process; ``method`` the start method
    of a process pool (None otherwise)."""

    kind: str
    method: str | None = None

    def __str__(self) -> str:
        return self.kind if self.method is None else f"{self.kind}-{self.method}"

    @property
    def kw(self) -> dict:
        """execute()'s arguments for it."""
        return {"executor_type": self.kind, "start_method": self.method}


def matrix(kinds: tuple[str, ...] = KINDS, cost: str = "cheap") -> list[Where]:
    """The places a test with these ``kinds`` and this ``cost`` runs on, in a fixed order."""
    if cost not in COSTS:
        raise ValueError(f"matrix cost must be one of {COSTS}, got {cost!r}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"matrix kinds must be among {KINDS}, got {sorted(unknown)}")
    methods = START_METHODS if cost == "cheap" else EXPENSIVE_METHODS
    out: list[Where] = []
    for kind in KINDS:
        if kind in kinds:
            out += [Where(kind, m) for m in methods] if kind == "process" else [Where(kind)]
    return out


EVERY = matrix()  # every place, for the session's shared pools
_MATRIX_FIXTURES = ("where", "pool", "executor")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "matrix(*kinds, cost='cheap'): the executor x start-method matrix a test taking `where`, "
        "`pool` or `executor` runs on (tests/conftest.py): kinds among serial, thread, process; "
        "cost 'expensive' runs process cases under EXPENSIVE_METHODS only",
    )


def pytest_unconfigure(config):
    """Whatever child process is still alive when the session ends goes (each test checks
    its own leftovers; this keeps a worker of the session's shared pools, left waiting by a
    pool whose manager thread died, from holding the interpreter's exit, where
    multiprocessing joins its children)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)


def pytest_generate_tests(metafunc):
    named = [n for n in _MATRIX_FIXTURES if n in metafunc.fixturenames]
    if not named:
        return
    marker = metafunc.definition.get_closest_marker("matrix")
    places = matrix(marker.args or KINDS, **marker.kwargs) if marker else matrix()
    if len(named) == 1:
        metafunc.parametrize(named[0], places, ids=str, indirect=True)
    else:  # (``where`` and ``pool`` together: the same place for both)
        metafunc.parametrize(named, [[p] * len(named) for p in places], ids=[str(p) for p in places], indirect=True)


@pytest.fixture
def where(request) -> Where:
    """Where the test runs its work (see the matrix above)."""
    return request.param


def _warm(pool, n: int) -> None:
    # Start every worker now (spawn and forkserver pools start them on demand).
    list(pool.map(time.sleep, [0.05] * n))


class _SharedPools:
    """The shared pools of ``pool``, one per place, each started when a test first takes it.

    Their threads (a thread pool's workers, a process pool's manager and queue feeder) would
    be alive at any fork made beside them, and a fork beside threads copies their locks
    (3.12+ warn: "This process is multi-threaded, use of fork() may lead to deadlocks"). So
    they are up only while tests that take ``pool`` run: a test that does not starts with
    none of them up (it may fork: a pool of its own, optimize()'s sample), and a fork pool
    starts with no other of them up. A test that starts a pool of its own before it takes the
    shared one asks for it after, with ``request.getfixturevalue("pool")``.

    The threads and child processes they start are theirs, not a test's: the leak guard
    leaves them out."""

    def __init__(self) -> None:
        self.pools: dict[str, tuple] = {}  # by the place's id ("thread", "process-spawn"): (cm, pool)
        self.threads: set[threading.Thread] = set()
        self.pids: set[int] = set()

    def __getitem__(self, place_id: str):
        return self.get(_PLACES[place_id])

    def get(self, place: Where):
        if str(place) not in self.pools:
            if place.method == "fork":
                self.close()
            self.pools[str(place)] = self._start(place)
        return self.pools[str(place)][1]

    def _start(self, place: Where) -> tuple:
        me = psutil.Process()
        threads, children = set(threading.enumerate()), {p.pid for p in me.children(recursive=True)}
        cm = autopar.get_executor(place.kind, 2, start_method=place.method)
        pool = cm.__enter__()
        if place.kind != "serial":
            _warm(pool, 2)
        self.threads |= set(threading.enumerate()) - threads
        self.pids |= {p.pid for p in me.children(recursive=True)} - children
        return cm, pool

    def close(self) -> None:
        for cm, _ in reversed(list(self.pools.values())):
            cm.__exit__(None, None, None)
        self.pools.clear()
        self.threads.clear()
        self.pids.clear()


_SHARED = _SharedPools()
_PLACES = {str(p): p for p in EVERY}


@pytest.fixture(scope="session")
def _pools():
    """The shared pools, by the place's id: ``_pools["thread"]``."""
    yield _SHARED
    _SHARED.close()


@pytest.fixture(autouse=True)
def _shared_pools_only_where_taken(request, _pools):
    """A test that does not take ``pool`` runs with none of the shared pools up."""
    if "pool" not in request.fixturenames:
        _pools.close()


@pytest.fixture
def pool(request, _pools):
    """A warm pool of 2 workers at the test's place, shared by the tests that take it (the
    place of ``where`` for a test that asks with request.getfixturevalue)."""
    place = request.param if hasattr(request, "param") else request.getfixturevalue("where")
    return _pools.get(place)


@pytest.fixture
def executor(request) -> tuple[str, str | None]:
    """(executor_type, start_method) for tests that let execute() build its own pool."""
    return request.param.kind, request.param.method


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
            and p.pid not in _SHARED.pids
            and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE
        ]
        new_threads = [
            t for t in threading.enumerate() if t not in threads and t not in _SHARED.threads and t.is_alive()
        ]
        if not new_children and not new_threads or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not new_children, f"child processes left behind: {[p.pid for p in new_children]}"
    assert not new_threads, f"threads left behind: {[t.name for t in new_threads]}"
    left = _tmp_entries() - tmp
    assert not left, f"temp files left behind: {sorted(left)}"
