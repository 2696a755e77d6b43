"""The tuning cache: what optimize() measured for a job, kept across runs (FFTW's "wisdom").

A job's key (:func:`job_key`): the function's identity and code, the data's signature, the
machine, Python, the start method, autopar's version and the options that bound the choice.
What is kept is the sample's :class:`~autopar.tune.sample.Profile`: on a hit optimize() skips
sampling and decides again from it. Every run feeds back what it measured (:func:`observe`):
the item time moves the kept one, or marks it stale; a run slower than serial (speedup under
``LOST``) leaves a verdict with the key. One SQLite database in the cache folder (WAL mode, at
most ``MAX_ENTRIES``); ``AUTOPAR_CACHE=off`` or ``cache=False`` turns it off, and a cache that
fails only costs the measurement.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import pickle
import platform
import sqlite3
import sys
import threading
import time
import types
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Iterator

import psutil

from .._version import __version__
from .costs import cache_dir
from .sample import Profile, one_shot

__all__ = [
    "LOST", "MAX_ENTRIES", "STALE_FACTOR", "THREAD_STALE_FACTOR", "Entry", "clear", "corrected", "enabled", "entries",
    "job_key", "lookup", "observe", "store",
]

SCHEMA_VERSION = 2  # 2: verdicts of runs slower than serial
MAX_ENTRIES = 2000
STALE_FACTOR = 1.5  # a run's item time this much over or under the kept one: measure again
LOST = 0.9  # a parallel run whose speedup over the serial estimate is under this lost to serial
THREAD_STALE_FACTOR = 1.5  # a thread run this much slower than predicted: the kept scaling is wrong
_BYTES_LIMIT = 1 << 16  # callable objects' state up to this size is hashed by value


def enabled(option: bool = True) -> bool:
    """Whether the cache is used: ``cache=`` and ``AUTOPAR_CACHE`` (off, 0, false, no)."""
    return option and os.environ.get("AUTOPAR_CACHE", "").strip().lower() not in ("off", "0", "false", "no")


# -- the key ----------------------------------------------------------------------------------


def _bucket(n: float) -> int:
    """Powers of two: 0 for 0, else the bit length (1 -> 1, 2-3 -> 2, 4-7 -> 3, ...)."""
    return int(n).bit_length() if n > 0 else 0


def _shape(value: Any) -> str:
    """A value's type and size bucket (what the model's figures depend on, not its content)."""
    t = type(value)
    name = f"{t.__module__}.{t.__qualname__}"
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return f"{name}:{getattr(value, 'dtype', '')}:{_bucket(nbytes)}"
    if isinstance(value, (bytes, bytearray, str, list, tuple, dict, set, frozenset)):
        return f"{name}:{_bucket(len(value))}"
    return name


def _code_digest(code: types.CodeType) -> str:
    """Bytecode, constants (nested code the same way), names and arguments; not line numbers."""
    h = hashlib.blake2b(digest_size=12)
    _hash_code(h, code)
    return h.hexdigest()


def _hash_code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_argcount, code.co_kwonlyargcount)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(h, const)
        else:
            h.update(repr(const).encode())


def _func_parts(func: Any, depth: int = 0) -> list[str] | None:
    """What identifies ``func`` for the cache; None where nothing stable can be said."""
    if depth > 3:
        return None
    if isinstance(func, types.FunctionType):
        parts = [func.__module__ or "", func.__qualname__, _code_digest(func.__code__)]
        parts += [_shape(v) for v in func.__defaults__ or ()]
        parts += [f"{k}={_shape(v)}" for k, v in sorted((func.__kwdefaults__ or {}).items())]
        for cell in func.__closure__ or ():
            try:
                parts.append(_shape(cell.cell_contents))
            except ValueError:  # an empty cell
                parts.append("<empty>")
        # A pipeline's composed function: its stages tell one pipeline from another.
        for stage in getattr(func, "key_funcs", ()):
            inner = _func_parts(stage, depth + 1)
            if inner is None:
                return None
            parts += ["stage", *inner]
        return parts
    if isinstance(func, functools.partial):
        inner = _func_parts(func.func, depth + 1)
        if inner is None:
            return None
        return ["partial", *inner, *map(_shape, func.args), *(f"{k}={_shape(v)}" for k, v in sorted(func.keywords.items()))]
    if isinstance(func, types.MethodType):
        inner = _func_parts(func.__func__, depth + 1)
        return None if inner is None else ["method", *inner, *_state_parts(func.__self__)]
    if isinstance(func, (types.BuiltinFunctionType, type)):
        return ["builtin", getattr(func, "__module__", "") or "", func.__qualname__]
    call = getattr(type(func), "__call__", None)
    if isinstance(call, types.FunctionType):  # a callable object: its class's code and its state
        inner = _func_parts(call, depth + 1)
        return None if inner is None else ["object", *inner, *_state_parts(func)]
    module, name = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str) and "<" not in name:
        # A library's callable of its own kind (NumPy's dispatchers): name and version.
        top = sys.modules.get(module.split(".")[0])
        return ["named", module, name, str(getattr(top, "__version__", ""))]
    return None


def _state_parts(obj: Any) -> list[str]:
    """A callable object's settings: by value where they pickle small, else by shape."""
    t = type(obj)
    parts = [f"{t.__module__}.{t.__qualname__}"]
    try:
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    if blob is not None and len(blob) <= _BYTES_LIMIT:
        parts.append(hashlib.blake2b(blob, digest_size=12).hexdigest())
    else:
        state = getattr(obj, "__dict__", None) or {}
        parts += [f"{k}={_shape(v)}" for k, v in sorted(state.items())]
    return parts


def _item_bytes(item: Any, depth: int = 0) -> int:
    """About how many bytes an item is, without pickling it: buffers by their length,
    containers by their length times their first element's size, objects by attributes."""
    nbytes = getattr(item, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(item, (bytes, bytearray, str)):
        return len(item)
    size = sys.getsizeof(item, 64)
    if depth >= 3:
        return size
    if isinstance(item, (list, tuple, set, frozenset)) and item:
        return size + len(item) * _item_bytes(next(iter(item)), depth + 1)
    if isinstance(item, dict) and item:
        k, v = next(iter(item.items()))
        return size + len(item) * (_item_bytes(k, depth + 1) + _item_bytes(v, depth + 1))
    attrs = getattr(item, "__dict__", None)
    if isinstance(attrs, dict):
        return size + sum(_item_bytes(v, depth + 1) for v in list(attrs.values())[:32])
    return size


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    """CPU model, memory, Python and autopar: fixed while the process runs."""
    model = platform.machine()  # (not platform.processor(): it runs `uname -p` on Linux)
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            for line in fh.read().decode(errors="replace").splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = psutil.virtual_memory().total >> 30
    return f"{model}|{memory}GiB|{sys.version_info[:3]}|{sys.implementation.name}|autopar {__version__}"


def job_key(
    func: Callable[[Any], Any], data: Iterable[Any], n_items: int | None, system: Any, method: str, options: tuple[Any, ...]
) -> str | None:
    """The job's key; None for no items, or a callable with nothing stable to name. A
    one-shot iterator (a generator, ``map()``, an open file) is keyed by its type, where a
    generator's code is, and the count given, if any: its items cannot be looked at without
    taking them (as a list of paths says nothing of the files' sizes), so a kept profile for
    the function over such an input is checked by the runs' feedback alone."""
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        try:
            n = len(data)  # type: ignore[arg-type]
            if n == 0:
                return None
            first = data[0]  # type: ignore[index]
        except Exception:
            return None
        # The item's size in KB, in powers of two (under 1 KB: one bucket), and the item count's.
        count = n_items if n_items is not None else n
        data_parts = [_shape(first), str(_bucket(_item_bytes(first) >> 10)), str(_bucket(count))]
    elif one_shot(data):
        t = type(data)
        code = getattr(data, "gi_code", None)  # a generator: where in the code it comes from
        made = f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}" if code is not None else ""
        data_parts = [f"one-shot {t.__module__}.{t.__qualname__}", made, str(_bucket(n_items)) if n_items is not None else "?"]
    else:
        return None
    parts = _func_parts(func)
    if parts is None:
        return None
    where = [f"cores={system.usable_cores}", f"quota={system.cgroup_cpu_quota}", f"gil={system.gil_enabled}", method]
    text = "|".join([*parts, *data_parts, *where, _machine(), repr(options)])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def func_name(func: Any) -> str:
    """A readable name for listings."""
    inner = getattr(func, "func", None) or getattr(func, "__func__", None) or func
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"{getattr(inner, '__module__', '') or ''}.{name}".lstrip(".")


# -- the store --------------------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    """One kept job: its profile, and what runs since have measured (``verdicts``: runs
    slower than serial, by pool kind: {"thread": {"n_jobs", "speedup", "cpu_ratio"}})."""

    key: str
    func: str
    profile: Profile
    created: float
    used: float
    hits: int
    runs: int
    stale: bool
    verdicts: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "profile"}
        return {**out, "profile": self.profile.to_dict()}


# One connection for the process, one operation at a time, under a lock.
_lock = threading.Lock()
_held: tuple[int, str, sqlite3.Connection] | None = None  # (pid, path, connection)
_forked_away: list[sqlite3.Connection] = []
_SCHEMA = (
    "CREATE TABLE entries (key TEXT PRIMARY KEY, func TEXT NOT NULL, profile TEXT NOT NULL, created REAL NOT NULL, "
    "used REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0, runs INTEGER NOT NULL DEFAULT 0, stale INTEGER NOT NULL DEFAULT 0, "
    "verdicts TEXT NOT NULL DEFAULT '{}')",
    "CREATE INDEX entries_used ON entries (used)",
)


def path() -> Any:
    return cache_dir() / "tuning.sqlite3"


@contextlib.contextmanager
def _database() -> Iterator[sqlite3.Connection]:
    """The process's connection, to this thread alone until the block ends."""
    with _lock:
        yield _connect()


def _connect() -> sqlite3.Connection:
    """The process's connection (under the lock; opened again after a fork or a folder change)."""
    global _held
    where = str(path())
    held = _held
    if held is not None and held[0] == os.getpid() and held[1] == where:
        return held[2]
    if held is not None:
        _held = None
        if held[0] == os.getpid():
            held[2].close()
        else:  # never used nor closed here: SQLite's close could drop the parent's locks
            _forked_away.append(held[2])
    os.makedirs(os.path.dirname(where), exist_ok=True)
    conn = sqlite3.connect(where, timeout=5.0, isolation_level=None, check_same_thread=False)  # transactions by hand
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        conn.execute("PRAGMA synchronous=NORMAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            with _transaction(conn):  # a new file, or another version's: emptied, not read
                if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    conn.execute("DROP TABLE IF EXISTS entries")
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    _held = (os.getpid(), where, conn)
    return conn


def close() -> None:
    """Close the process's connection (at exit; the next operation opens it again)."""
    global _held
    if not _lock.acquire(timeout=1.0):  # (at exit, a daemon thread may be inside an operation)
        return
    try:
        held, _held = _held, None
        if held is not None and held[0] == os.getpid():
            held[2].close()
    finally:
        _lock.release()


def _after_fork_in_child() -> None:
    """A forked child starts with a lock of its own and leaves the parent's connection alone."""
    global _lock, _held
    _lock = threading.Lock()
    if _held is not None:
        _forked_away.append(_held[2])
        _held = None


atexit.register(close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction, the database locked for writing from its start."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _safely(default: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A cache operation that fails (read-only folder, locked or damaged file) returns ``default``."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def safe(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except (sqlite3.Error, OSError, ValueError, TypeError, KeyError):
                return default

        return safe

    return wrap


def _profile_of(text: str) -> Profile:
    raw = json.loads(text)
    names = {f.name for f in fields(Profile)}
    return Profile(**{k: v for k, v in raw.items() if k in names})


def _row_entry(row: tuple[Any, ...]) -> Entry:
    key, func, profile, created, used, hits, runs, stale, verdicts = row
    return Entry(key, func, _profile_of(profile), created, used, hits, runs, bool(stale), json.loads(verdicts or "{}"))


_COLUMNS = "key, func, profile, created, used, hits, runs, stale, verdicts"


def corrected(profile: Profile, verdicts: dict[str, dict[str, float]]) -> Profile:
    """The profile as the runs that lost to serial measured it: a thread verdict's speedup
    replaces the probe's scaling, and its CPU/wall raises the sample's where that read less."""
    v = verdicts.get("thread")
    if not v:
        return profile
    return replace(
        profile, thread_scaling=max(float(v["speedup"]), 1e-3), probe_threads=max(int(v["n_jobs"]), 2),
        cpu_ratio=max(profile.cpu_ratio, min(float(v.get("cpu_ratio", 0.0)), 1.0)),
    )


@_safely(None)
def lookup(key: str) -> Entry | None:
    """The entry for ``key`` if there is one and it is not stale; counts the hit."""
    with _database() as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None or row[7]:
            return None
        conn.execute("UPDATE entries SET used = ?, hits = hits + 1 WHERE key = ?", (time.time(), key))
    entry = _row_entry(row)
    entry.profile = corrected(entry.profile, entry.verdicts)
    return entry


@_safely({})
def verdicts(key: str) -> dict[str, dict[str, float]]:
    """The verdicts kept for ``key`` (a stale entry's too)."""
    with _database() as conn:
        row = conn.execute("SELECT verdicts FROM entries WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row and row[0] else {}


def worth_keeping(profile: Profile) -> bool:
    """A sample is kept where it left work for the pool, or finished the job in the probe's
    rounds (a reading of how the items scale against items timed alone, for the next run to
    start from; a short job of long items is all sample every time otherwise: 5 zlib items
    of 40 ms took 135 ms in the sample's steps, 110 ms on 5 threads from the kept figures).
    One that finished the job serially has nothing to tell a pool; one whose items all ran
    at once beside the first has no item timed alone (6 items of 30 ms under one lock were
    kept at 116 ms an item, x3.4 on 6 threads, and no run found it out)."""
    return bool(profile.n_sampled) and profile.item_time_mean > 0 and (profile.n_remaining != 0 or profile.n_probed > 0)


@_safely(False)
def store(key: str, func: str, profile: Profile) -> bool:
    """Keep (or replace) ``key``'s profile; the least recently used go past MAX_ENTRIES. A
    replaced profile's verdicts stay with the key."""
    now = time.time()
    with _database() as conn, _transaction(conn):
        conn.execute(
            "INSERT INTO entries (key, func, profile, created, used, hits, runs, stale) VALUES (?, ?, ?, ?, ?, 0, 0, 0) "
            "ON CONFLICT(key) DO UPDATE SET func = excluded.func, profile = excluded.profile, created = excluded.created, "
            "used = excluded.used, hits = 0, runs = 0, stale = 0",
            (key, func, json.dumps(asdict(profile)), now, now),
        )
        (count,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
        if count > MAX_ENTRIES:
            conn.execute(
                "DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY used LIMIT ?)", (count - MAX_ENTRIES,)
            )
    return True


@_safely(None)
def observe(
    key: str, item_time: float | None, stale: bool = False, lost: tuple[str, dict[str, float]] | None = None,
    serial: bool = False,
) -> str | None:
    """What a run measured, fed back: "updated" (the kept item time moves towards
    ``item_time``), "checked" (no item time: the run only confirmed the figures), "stale"
    (off by STALE_FACTOR or more, or ``stale``: measured again next time), "replaced" (a
    ``serial`` run's items STALE_FACTOR or more faster than kept: the run's time is kept in
    place of the old one), "corrected" (``lost``: a thread run slower than serial, whose
    figures the profile takes from now on) or None (no entry). ``lost``: (pool kind,
    {"n_jobs", "speedup", "cpu_ratio"}) of a run slower than serial, kept as the key's verdict;
    a kind other than threads marks it stale.

    Faster items on a serial pick need no new sample: a pool's gain over serial only shrinks
    with the item time (its start and per-item costs stay), so serial stays the pick; the
    run's figure, timed in the loop that runs the job, replaces the sample's. (300,000 calls
    of x + 1: the sample's timed batches read 1.1e-7 s an item, the runs 6e-8: every few runs
    went stale and sampled again, 7 of 40.)"""
    if item_time is not None and item_time <= 0:
        return None
    with _database() as conn, _transaction(conn):
        row = conn.execute("SELECT profile, runs, verdicts FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        profile, runs = _profile_of(row[0]), row[1]
        if lost is not None:
            kind, figures = lost
            kept = json.loads(row[2] or "{}")
            old = kept.get(kind)
            if old is None or figures["speedup"] <= old["speedup"]:  # the worst run stands
                kept[kind] = figures
            conn.execute("UPDATE entries SET verdicts = ?, runs = runs + 1 WHERE key = ?", (json.dumps(kept), key))
            if kind == "thread":
                return "corrected"
            conn.execute("UPDATE entries SET stale = 1 WHERE key = ?", (key,))
            return "stale"
        kept = profile.item_time_mean
        # (the factor itself counts as off: 1e-9 for the rounding of t / 1.5 / t)
        off = item_time is not None and kept > 0 and not (1 + 1e-9) / STALE_FACTOR < item_time / kept < STALE_FACTOR * (1 - 1e-9)
        if off and not stale and serial and item_time < kept:  # type: ignore[operator]
            scale = item_time / kept  # type: ignore[operator]
            updated = replace(
                profile, item_time_mean=item_time, item_time_std=profile.item_time_std * scale,
                item_time_max=profile.item_time_max * scale,
            )
            conn.execute("UPDATE entries SET profile = ?, runs = runs + 1 WHERE key = ?", (json.dumps(asdict(updated)), key))
            return "replaced"
        if stale or off:
            conn.execute("UPDATE entries SET stale = 1, runs = runs + 1 WHERE key = ?", (key,))
            return "stale"
        if item_time is None:
            conn.execute("UPDATE entries SET runs = runs + 1 WHERE key = ?", (key,))
            return "checked"
        # A running average over the sample and the runs since (each run one vote).
        new = (kept * (runs + 1) + item_time) / (runs + 2) if kept > 0 else item_time
        scale = new / kept if kept > 0 else 1.0
        updated = replace(
            profile, item_time_mean=new, item_time_std=profile.item_time_std * scale, item_time_max=profile.item_time_max * scale
        )
        conn.execute(
            "UPDATE entries SET profile = ?, runs = runs + 1 WHERE key = ?", (json.dumps(asdict(updated)), key)
        )
    return "updated"


@_safely([])
def entries() -> list[Entry]:
    """Every entry, the most recently used first."""
    with _database() as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY used DESC").fetchall()
    return [_row_entry(r) for r in rows]


@_safely(0)
def clear(prefix: str = "") -> int:
    """Remove the entries whose key starts with ``prefix`` (all by default); how many went."""
    with _database() as conn, _transaction(conn):
        cur = conn.execute("DELETE FROM entries WHERE key LIKE ?", (prefix.replace("%", "") + "%",))
    return cur.rowcount
