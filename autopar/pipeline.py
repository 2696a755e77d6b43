"""Multi-stage work: every item through all stages on one pool (fused), or each stage on
pools of its own joined by bounded queues (staged, a streaming executor).

::

    items ─► feeder ─► [stage 0 workers] ─► Handoff ─► [stage 1 workers] ─► ... ─► Handoff ─► caller
                       (threads, or driver          (bounded: a producer
                        threads over a process       ahead of the consumer
                        pool, or one thread)         by `queue_size` waits)

* **Fused**: the stages composed into one picklable function (:class:`Fused`) and run by
  :func:`autopar.execute`, which measures and chooses the pool as for any function.
* **Staged**: each stage has its workers: threads that run the function, or driver threads
  that send one item at a time to the stage's process pool, or one thread (serial). Between
  stages a :class:`Handoff` passes items on in input order (or as they finish, for a stage
  with ``ordered=False``), and holds at most ``queue_size`` of them: a slow stage holds the
  ones before it back, so memory stays bounded (in flight at most stages x (queue_size +
  workers)).
* A failing item names its stage and its index; with ``errors="collect"`` an
  :class:`~autopar.ItemFailed` takes its place and passes the later stages untouched.
  stop(), an error or Ctrl-C ends every stage's workers within a second or two (process pools
  are killed), and nothing is left running.

:meth:`Pipeline.optimize` measures each stage on a few items and returns a
:class:`PipelinePlan`; this first version chooses staged where a stage is pinned (a
single-writer sink, a stage that must stay on threads) and fused otherwise, and sizes the
stages' workers by their measured times.
"""

from __future__ import annotations

import itertools
import math
import operator
import queue
import threading
import time
import weakref
from collections.abc import Iterator as _IteratorABC
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, cast

from . import _serialize
from .errors import AutoparError, ItemFailed, annotate, annotate_stage
from .options import EXECUTOR_TYPES, Options, check_pool_args

__all__ = ["Fused", "Pipeline", "PipelinePlan", "PipelineReport", "PipelineRun", "Stage", "StagePlan", "Stream", "StreamStalled"]

POLL = 0.05  # seconds between a blocked worker's looks at the stop flag
TIMED_CALLS = 64  # items of the sample whose stages are timed one by one
WATCH = 0.2  # seconds between the staged run's looks at its stages' busy shares
MAX_GROWN = 4  # a stage grows to at most this many times its starting workers
SWITCH_AFTER = 1.0  # seconds of a staged run's results before it is judged against fused
SWITCH_RATIO = 0.8  # a staged run delivering under this share of fused's predicted rate turns fused


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. Pin what must be pinned (``executor_type``, ``n_jobs``); what
    is not pinned is chosen. ``ordered``: the stage takes its items in input order (a sink
    that appends to one file); False passes them on as they finish."""

    func: Callable[[Any], Any]
    name: str | None = None
    executor_type: str | None = None
    n_jobs: int | None = None
    ordered: bool = True

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise TypeError(f"a stage needs a callable, got {type(self.func).__name__}")
        kind, n_jobs = check_pool_args(self.executor_type, self.n_jobs)  # the checks execute() makes
        if kind is not None and kind not in EXECUTOR_TYPES:
            raise ValueError(f"a stage's executor_type must be one of {EXECUTOR_TYPES}, got {kind!r}")
        object.__setattr__(self, "executor_type", kind)
        object.__setattr__(self, "n_jobs", n_jobs)
        if self.name is None:
            object.__setattr__(self, "name", getattr(self.func, "__name__", type(self.func).__name__))

    @property
    def pinned(self) -> bool:
        return self.executor_type is not None or self.n_jobs is not None


class Fused:
    """The stages as one function (picklable when each stage is): an item's failure names
    its stage. While ``timed`` (optimize()'s sample, in the caller) each stage's wall and
    CPU seconds are added up."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.funcs = [s.func for s in stages]
        self.names = [str(s.name) for s in stages]
        self.timing = [False]  # read by the composed function: time this item stage by stage
        self.calls = 0
        self.wall = [0.0] * len(self.funcs)
        self.cpu = [0.0] * len(self.funcs)
        self.out_bytes: list[float | None] = [None] * len(self.funcs)  # a stage's output pickled (first timed item)
        self.chain = _compose(self)

    @property
    def timed(self) -> bool:
        return self.timing[0]

    @timed.setter
    def timed(self, on: bool) -> None:
        self.timing[0] = bool(on) and self.calls < TIMED_CALLS

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "chain"}
        state["timing"] = [False]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.chain = _compose(self)

    def __call__(self, item: Any) -> Any:
        return self.chain(item)

    def _timed(self, item: Any) -> Any:
        """One item, each stage's wall and CPU time added up (two clock reads a stage: 1 us
        and more an item, so only the sample's first TIMED_CALLS items are timed)."""
        for i, (func, name) in enumerate(zip(self.funcs, self.names)):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                item = func(item)
            except Exception as exc:
                annotate_stage(exc, name)
                raise
            self.wall[i] += time.perf_counter() - t0
            self.cpu[i] += time.thread_time() - c0
            if self.out_bytes[i] is None:
                self.out_bytes[i] = _pickled_size(item)
        self.calls += 1
        if self.calls >= TIMED_CALLS:
            self.timing[0] = False
        return item

    def measured(self) -> list[tuple[float, float]]:
        n = max(self.calls, 1)
        return [(w / n, c / n) for w, c in zip(self.wall, self.cpu)]


def _compose(fused: Fused) -> Callable[[Any], Any]:
    """The stages as one generated function, ``x = f0(x)``, ``x = f1(x)``, ...: an object's
    ``__call__`` and a loop over the stages cost tiny stages 60-70% more (50,000 items of
    three one-line stages: 4.6 ms composed, 7.9 ms through ``__call__``). A failure is
    annotated with its stage; while ``fused.timing[0]`` an item goes through ``_timed``.
    Process pools get it by cloudpickle (by value: it is not importable)."""
    ns: dict[str, Any] = {"timing": fused.timing, "timed": fused._timed, "annotate_stage": annotate_stage}
    lines = ["def pipeline(x):", "    if timing[0]:", "        return timed(x)"]
    for i, (func, name) in enumerate(zip(fused.funcs, fused.names)):
        ns[f"f{i}"], ns[f"n{i}"] = func, name
        lines += ["    try:", f"        x = f{i}(x)", "    except Exception as e:", f"        annotate_stage(e, n{i})", "        raise"]
    lines.append("    return x")
    exec("\n".join(lines), ns)  # noqa: S102 - the source is built here from stage indices only
    chain = ns["pipeline"]
    chain.__qualname__ = "pipeline(" + " -> ".join(fused.names) + ")"
    chain.fused = fused
    chain.key_funcs = tuple(fused.funcs)  # the tuning cache's key: the stages themselves
    return chain


def _pickled_size(value: Any) -> float:
    """Bytes ``value`` pickles to (inf where it does not pickle: no process stage after it)."""
    import pickle

    try:
        return float(len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
    except Exception:
        return float("inf")


# -- the staged machinery --------------------------------------------------------------------


class Stopped(Exception):
    """The run was stopped (an error, stop(), Ctrl-C): a blocked put or get gives up."""


class Handoff:
    """Items from one stage to the next: in input order (``ordered``) or as they come, at
    most ``capacity`` held (a put that would exceed it waits). ``close(count)`` says no item
    past ``count`` will come; get() then returns None once all have gone."""

    def __init__(self, capacity: int, ordered: bool, stop: threading.Event) -> None:
        self.capacity = max(1, capacity)
        self.ordered = ordered
        self.stop = stop
        self.cond = threading.Condition()
        self.held: dict[int, Any] = {}
        self.arrival: list[int] = []  # unordered: seqs in the order they came
        self.next = 0  # ordered: the next seq to hand out
        self.taken = 0
        self.count: int | None = None
        self.putters = 0  # threads waiting in put() for room

    def put(self, seq: int, value: Any, block: bool = True, timeout: float | None = None) -> float:
        """Hold ``value`` as item ``seq``; returns the seconds it waited for room (``block``
        False: queue.Full at once when there is none; ``timeout``: queue.Full after that many
        seconds). A stage's worker waits without a timeout: the next stage, or stop(), makes
        room."""
        waited = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self._full(seq):
                if self.stop.is_set():
                    raise Stopped
                left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if not block or left <= 0:
                    raise queue.Full
                t0 = time.perf_counter()
                self.putters += 1
                try:
                    self.cond.wait(left)
                finally:
                    self.putters -= 1
                waited += time.perf_counter() - t0
            self.held[seq] = value
            if not self.ordered:
                self.arrival.append(seq)
            self.cond.notify_all()
        return waited

    def _full(self, seq: int) -> bool:
        # Ordered: the item the consumer waits for always gets in, so no deadlock.
        if self.ordered:
            return seq - self.next >= self.capacity
        return len(self.held) >= self.capacity

    def close(self, count: int) -> None:
        with self.cond:
            self.count = count
            self.cond.notify_all()

    def get(self, timeout: float | None = None) -> tuple[tuple[int, Any] | None, float]:
        """((seq, value) or None at the end, the seconds it waited); queue.Empty when
        ``timeout`` seconds pass first."""
        waited = 0.0
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.ordered and self.next in self.held:
                    seq = self.next
                    self.next += 1
                    break
                if not self.ordered and self.arrival:
                    seq = self.arrival.pop(0)
                    break
                if self.count is not None and self.taken >= self.count:
                    return None, waited
                if self.stop.is_set():
                    raise Stopped
                left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
                if left <= 0:
                    raise queue.Empty
                t0 = time.perf_counter()
                self.cond.wait(left)
                waited += time.perf_counter() - t0
            value = self.held.pop(seq)
            self.taken += 1
            self.cond.notify_all()
            return (seq, value), waited


@dataclass
class StageMetrics:
    """What a stage did: items, seconds in the function (busy), CPU seconds, seconds its
    workers waited for input and for room to pass items on."""

    name: str
    executor_type: str
    n_jobs: int
    items: int = 0
    busy: float = 0.0
    cpu: float = 0.0
    wait_in: float = 0.0
    wait_out: float = 0.0
    failed: int = 0

    @property
    def mean_ms(self) -> float:
        return 1e3 * self.busy / self.items if self.items else 0.0

    def busy_share(self, elapsed: float) -> float:
        """The share of its workers' time spent in the function."""
        return self.busy / (self.n_jobs * elapsed) if elapsed > 0 else 0.0


class _Failed:
    """An item that failed in an earlier stage, passing the later ones untouched."""

    __slots__ = ("error",)

    def __init__(self, error: ItemFailed) -> None:
        self.error = error


class _StageRun:
    """One stage's workers: threads running the function, or driver threads sending items
    to the stage's process pool."""

    def __init__(self, run: "StagedRun", index: int, stage: Stage, kind: str, n_jobs: int, inq: Handoff, outq: Handoff) -> None:
        self.run, self.index, self.stage = run, index, stage
        self.kind, self.n_jobs = kind, n_jobs
        self.inq, self.outq = inq, outq
        self.metrics = StageMetrics(str(stage.name), kind, n_jobs)
        self.lock = threading.Lock()
        self.pool: Any = None
        self.blob: bytes | None = None
        self.key = f"stage-{id(self)}"
        drivers = 1 if kind == "serial" else n_jobs if kind == "thread" else 2 * n_jobs
        if kind == "process":
            from .backends.process import make_process_pool
            from .tune.system import default_start_method

            self.blob = _serialize.dumps(stage.func, _serialize.CLOUDPICKLE)
            self.pool = make_process_pool(n_jobs, run.start_method or default_start_method(), 1)
        self.left = drivers
        self.passed = 0  # items passed on (the count the next handoff is closed with)
        self.threads = [
            threading.Thread(target=self._work, name=f"autopar-stage-{index}-{i}", daemon=True) for i in range(drivers)
        ]
        self.grows = kind == "thread" and not stage.pinned  # the watcher may add workers

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def add_worker(self) -> bool:
        """One more worker thread (a waiting stage that holds the others back); False once
        the stage's last worker has ended (its output closed)."""
        with self.lock:
            if self.left == 0:
                return False
            self.left += 1
            self.n_jobs += 1
            self.metrics.n_jobs += 1
            t = threading.Thread(target=self._work, name=f"autopar-stage-{self.index}-{len(self.threads)}", daemon=True)
            self.threads.append(t)
        t.start()
        return True

    def _call(self, value: Any) -> tuple[Any, float]:
        """The stage's function on one item: (result, CPU seconds)."""
        if self.pool is None:
            c0 = time.thread_time()
            return self.stage.func(value), time.thread_time() - c0
        from .backends.worker import run_remote

        payload = _serialize.dumps([value], _serialize.PICKLE)
        values, _, failures, cpu = self.pool.submit(run_remote, self.key, self.blob, 0, payload, _serialize.PICKLE).result()
        if failures:
            raise failures[0][1]
        return values[0], cpu

    def _work(self) -> None:
        m = self.metrics
        try:
            while True:
                got, waited = self.inq.get()
                m.wait_in += waited
                if got is None:
                    break
                seq, value = got
                if not isinstance(value, _Failed):
                    t0 = time.perf_counter()
                    try:
                        value, cpu = self._call(value)
                    except Exception as exc:
                        value = self._failed(seq, exc)
                        cpu = 0.0
                    with self.lock:
                        m.items += 1
                        m.busy += time.perf_counter() - t0
                        m.cpu += cpu
                m.wait_out += self.outq.put(seq, value)
                with self.lock:
                    self.passed += 1
        except Stopped:
            pass
        except BaseException as exc:  # a broken pool, an error in the machinery itself
            if not self.run.stop.is_set():  # (a pool killed by stop() is no error)
                self.run.fail(exc)
        finally:
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                self.outq.close(self.passed)

    def _failed(self, seq: int, exc: Exception) -> _Failed:
        index = seq + self.run.offset
        annotate_stage(exc, str(self.stage.name))
        annotate(exc, index, f"pipeline stage {self.stage.name!r} ({self.kind})")
        self.metrics.failed += 1
        if not self.run.collect:
            self.run.fail(exc)
        return _Failed(ItemFailed(index, exc))

    def close(self, kill: bool) -> None:
        """Wait for the workers; ``kill``: the process pool's workers are killed first, so
        drivers waiting on them return at once."""
        if self.pool is not None and kill:
            from .backends.process import terminate

            terminate(self.pool)
        for t in self.threads:
            _join(t)
        if self.pool is not None and not kill:
            self.pool.shutdown(wait=True)


def _join(t: threading.Thread) -> None:
    """Wait for one of the run's threads (a few seconds at most): not the one closing the run
    (a dropped stream's finalizer may run on any thread the collector runs on)."""
    if t is not threading.current_thread():
        t.join(timeout=5)


class StagedRun:
    """A pipeline running staged: the stages' workers and the handoffs between them. Items go
    in by :meth:`put` (or a feeder thread over an iterable), results come out of :meth:`get`
    in order."""

    def __init__(
        self, stages: Sequence[Stage], config: Sequence[tuple[str, int]], queue_size: int, collect: bool, ordered: bool,
        start_method: str | None = None, offset: int = 0,
    ) -> None:
        self.stop = threading.Event()
        self.offset = offset  # the input index of the run's first item
        self.collect = collect
        self.start_method = start_method
        self.error: BaseException | None = None
        self.t0 = time.perf_counter()
        self.handoffs = [Handoff(queue_size, s.ordered, self.stop) for s in stages]
        self.handoffs.append(Handoff(queue_size, ordered, self.stop))
        self.stages: list[_StageRun] = []
        try:
            for i, (stage, (kind, n)) in enumerate(zip(stages, config)):
                self.stages.append(_StageRun(self, i, stage, kind, n, self.handoffs[i], self.handoffs[i + 1]))
        except BaseException:
            self.close(kill=True)
            raise
        for s in self.stages:
            s.start()
        self.submitted = 0
        self.feeder: threading.Thread | None = None
        self.grown: dict[str, int] = {}  # stage -> workers added while running
        self.watcher: threading.Thread | None = None
        if any(s.grows for s in self.stages):
            self.watcher = threading.Thread(target=self._watch, name="autopar-pipeline-watch", daemon=True)
            self.watcher.start()

    def _watch(self) -> None:
        """Correction while running: every WATCH seconds, a thread stage that was busy
        nearly all the time, mostly waiting (CPU under half its time: more threads overlap
        its waits; computing ones would only share the GIL) and with items queued for it gets
        one more worker, up to MAX_GROWN times its start."""
        last = {id(s): (s.metrics.busy, s.metrics.cpu) for s in self.stages}
        start = {id(s): s.n_jobs for s in self.stages}
        t_last = time.perf_counter()
        while not self.stop.wait(WATCH):
            now = time.perf_counter()
            if all(s.left == 0 for s in self.stages):
                return
            for s in self.stages:
                busy, cpu = s.metrics.busy, s.metrics.cpu
                d_busy, d_cpu = busy - last[id(s)][0], cpu - last[id(s)][1]
                last[id(s)] = (busy, cpu)
                if not s.grows or s.n_jobs >= MAX_GROWN * start[id(s)]:
                    continue
                share = d_busy / (s.n_jobs * (now - t_last)) if now > t_last else 0.0
                if share > 0.85 and d_busy > 0 and d_cpu / d_busy < 0.5 and len(s.inq.held) > 0 and s.add_worker():
                    self.grown[str(s.stage.name)] = self.grown.get(str(s.stage.name), 0) + 1
            t_last = now

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    def put(self, value: Any, block: bool = True, timeout: float | None = None) -> int:
        seq = self.submitted
        self.handoffs[0].put(seq, value, block, timeout)
        self.submitted += 1
        return seq

    def feed(self, items: Iterable[Any]) -> None:
        """Feed ``items`` from a thread of its own, then close the input."""

        def run() -> None:
            try:
                for x in items:
                    self.put(x)
            except Stopped:
                return
            except BaseException as exc:
                self.fail(exc)
                return
            self.handoffs[0].close(self.submitted)

        self.feeder = threading.Thread(target=run, name="autopar-pipeline-feeder", daemon=True)
        self.feeder.start()

    def end_input(self) -> None:
        self.handoffs[0].close(self.submitted)

    def get(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next result, (seq, value), or None at the end; raises the run's error
        (queue.Empty when ``timeout`` seconds pass first)."""
        try:
            got, _ = self.handoffs[-1].get(timeout)
        except Stopped:
            got = None
        if self.error is not None:
            raise self.error
        if got is None:
            return None
        seq, value = got
        return seq, value.error if isinstance(value, _Failed) else value

    def close(self, kill: bool = False) -> None:
        """Stop every stage and wait for its workers (a second or two at most)."""
        if kill:
            self.stop.set()
        if self.feeder is not None:
            _join(self.feeder)
        for s in self.stages:
            s.close(kill or self.stop.is_set())
        self.stop.set()  # the watcher's signal (the stages are done)
        if self.watcher is not None:
            _join(self.watcher)

    def metrics(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        stages = [
            {**vars(s.metrics), "mean_ms": s.metrics.mean_ms, "busy_share": s.metrics.busy_share(elapsed)}
            for s in self.stages
        ]
        bottleneck = max(stages, key=lambda d: d["busy_share"])["name"] if stages else None
        done = self.handoffs[-1].taken
        return {"elapsed": elapsed, "items": done, "items_per_s": done / elapsed if elapsed > 0 else 0.0,
                "stages": stages, "bottleneck": bottleneck, "grown": dict(self.grown)}


# -- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    name: str
    executor_type: str
    n_jobs: int
    chunksize: int
    item_time: float
    cpu_ratio: float
    pinned: bool


@dataclass(frozen=True)
class PipelinePlan:
    """How a pipeline will run: ``mode`` "fused" (every item through all stages on one pool,
    ``fused``: its optimize() result) or "staged" (each stage on its own pool), per stage
    the pool and its measured item time, and the predicted throughput."""

    mode: str
    stages: tuple[StagePlan, ...]
    predicted_throughput: float
    reasons: tuple[str, ...]
    fused: Any = None
    queue_size: int = 32
    data: Any = field(default=None, repr=False, compare=False)  # the items the sample came from
    sampled: tuple[Any, ...] = field(default=(), repr=False, compare=False)  # their first results
    source: "_Sampled | None" = field(default=None, repr=False, compare=False)  # what optimize() was given

    def explain(self) -> str:
        lines = [f"pipeline: {self.mode}, predicted {self.predicted_throughput:.3g} items/s"]
        for s in self.stages:
            how = "serial" if s.executor_type == "serial" else f"{s.executor_type} x{s.n_jobs}"
            lines.append(
                f"  {s.name:<20} {s.item_time * 1e3:9.3f} ms an item, CPU/wall {s.cpu_ratio:.2f}"
                + (f"  -> {how}" if self.mode == "staged" else "") + ("  (pinned)" if s.pinned else "")
            )
        if self.mode == "fused" and self.fused is not None:
            lines.append(f"  all stages as one function: {self.fused.label()}")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


class _Sampled:
    """What a plan's sample came from, to tell whether a run is given the same items again
    (then the sample's results are handed back instead of run again, once): the very object
    optimize() was given (held: an ``id`` alone passes to the next object), and for a list or
    tuple the items the sample took (the same objects: a list refilled in place since is not
    the same items). A range cannot change; a one-shot iterator was read to its end by
    optimize(), so its items are the plan's. Anything else is never taken for the same."""

    def __init__(self, items: Any, data: Sequence[Any], taken: int) -> None:
        self.items = items
        self.data = data  # the items as the plan holds them
        self.head = tuple(itertools.islice(data, taken)) if isinstance(items, (list, tuple)) else None
        self.known = self.head is not None or type(items) is range or isinstance(items, _IteratorABC)
        self.used = False
        self.lock = threading.Lock()

    def matches(self, items: Any) -> bool:
        return self.known and not self.used and items is self.items

    def claim(self, items: Any) -> Sequence[Any] | None:
        """The plan's items where ``items`` are the ones sampled, unchanged, and not yet run
        (once); else None: the run starts from scratch."""
        with self.lock:
            if not self.matches(items) or not self._unchanged():
                return None
            self.used = True
        return self.data

    def _unchanged(self) -> bool:
        if self.head is None:
            return True
        n = len(self.head)
        return len(self.items) >= n and all(map(operator.is_, self.head, itertools.islice(self.items, n)))


def _taken(stash: Any) -> int:
    """How many of the input's first items optimize()'s sample took (run, or read ahead)."""
    if stash is None:
        return 0
    return sum(map(len, stash.result_blocks)) + len(getattr(stash, "ahead", ()))


def _measure(
    stages: Sequence[Stage], items: list[Any], budget: float, collect: bool = False
) -> tuple[list[tuple[float, float]], list[Any], list[float]]:
    """Each stage's mean wall and CPU seconds an item, from running the first items through
    the stages in the caller (until ``budget`` seconds or the items run out); those items'
    results, kept so that no stage runs an item twice (a writer among them); and the bytes
    the first item pickles to before each stage and after the last."""
    wall = [0.0] * len(stages)
    cpu = [0.0] * len(stages)
    outputs: list[Any] = []
    sizes = [_pickled_size(items[0])] + [0.0] * len(stages) if items else [0.0] * (len(stages) + 1)
    t_start = time.perf_counter()
    for index, x in enumerate(items):
        for i, s in enumerate(stages):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                x = s.func(x)
            except Exception as exc:
                annotate_stage(exc, str(s.name))
                annotate(exc, index, "pipeline sample (serial)")
                if not collect:
                    raise
                x = ItemFailed(index, exc)
                break
            wall[i] += time.perf_counter() - t0
            cpu[i] += time.thread_time() - c0
            if index == 0:
                sizes[i + 1] = _pickled_size(x)
        outputs.append(x)
        if time.perf_counter() - t_start > budget and len(outputs) >= 2:
            break
    n = max(len(outputs), 1)
    return [(w / n, c / n) for w, c in zip(wall, cpu)], outputs, sizes


def _staged_config(
    stages: Sequence[Stage], measured: list[tuple[float, float]], cores: int, kinds: Sequence[str | None] | None = None
) -> list[tuple[str, int]]:
    """Per stage: its pool (pinned, or ``kinds``, or threads for work that waits or will not
    pickle, processes for computing) and workers in proportion to its share of the time, so
    that no stage starves the next."""
    total = sum(w for w, _ in measured) or 1e-9
    config = []
    for j, (s, (w, c)) in enumerate(zip(stages, measured)):
        ratio = c / w if w > 0 else 0.0
        kind = s.executor_type or (kinds[j] if kinds is not None else None)
        if kind is None:
            kind = "thread" if ratio < 0.5 or not _picklable(s.func) else "process"
        n = s.n_jobs
        if n is None:
            share = w / total
            n = max(1, round(cores * share)) if kind == "process" else max(1, math.ceil(cores * share / max(ratio, 0.05)))
        config.append((kind, 1 if kind == "serial" else n))
    return config


HANDOFF_COST = 5e-6  # seconds of the caller's GIL an item and stage costs the staged machinery (measured 3.25 us)
STAGED_MARGIN = 0.8  # staged must be predicted this much faster than fused to be chosen


def _staged_time(
    n_items: int, measured: list[tuple[float, float]], sizes: list[float], config: list[tuple[str, int]],
    cores: int, costs: Any, gil_free: bool,
) -> tuple[float, str]:
    """Predicted seconds for ``n_items`` staged, and the bound that sets the pace.

    Per item, the pipeline goes at the pace of its slowest part: a stage's time over its
    workers (a process stage's item also pays its task's round trip), the cores' share of all
    the CPU the stages spend (and the process stages' pickling), or the caller's GIL: thread
    and serial stages computing in Python, process stages' items pickled in and out by their
    driver threads, and the handoffs. ``sizes``: bytes each stage's input pickles to."""
    per_stage, gil, cpu = [], 0.0, 0.0
    for i, ((w, c), (kind, k)) in enumerate(zip(measured, config)):
        ship = (sizes[i] + sizes[i + 1]) * costs.process_seconds_per_byte if kind == "process" else 0.0
        if kind == "process":
            per_stage.append((w + ship + costs.process_task_overhead) / k)
            cpu += c + 2 * ship
            gil += ship
        else:
            per_stage.append(w / (k if kind == "thread" else 1))
            cpu += c
            gil += 0.0 if gil_free and kind == "thread" else c
        gil += HANDOFF_COST
    slowest = max(range(len(per_stage)), key=per_stage.__getitem__)
    bounds = {f"stage {slowest}": per_stage[slowest], "the GIL": gil, "the cores": cpu / max(cores, 1)}
    pace = max(bounds, key=bounds.__getitem__)
    start = sum(costs.process_start(k) if kind == "process" else costs.thread_start(k) for kind, k in config)
    fill = sum(w for w, _ in measured)
    return start + fill + n_items * bounds[pace], pace


def _best_config(
    stages: Sequence[Stage], measured: list[tuple[float, float]], sizes: list[float], cores: int, costs: Any,
    gil_free: bool, n_items: int,
) -> tuple[list[tuple[str, int]], float, str]:
    """The staged config predicted fastest over threads or processes for each stage not
    pinned (workers by the stages' shares); within 5%, the one with fewer process stages
    (each item of one costs the caller a round trip). (config, predicted seconds, pace)."""
    choices = [
        [s.executor_type] if s.executor_type else (["thread", "process"] if w > 0 and _picklable(s.func) else ["thread"])
        for s, (w, _) in zip(stages, measured)
    ]
    options = list(itertools.product(*choices)) if math.prod(map(len, choices)) <= 64 else [None]
    scored = []
    for kinds in options:
        config = _staged_config(stages, measured, cores, kinds)
        t, pace = _staged_time(n_items, measured, sizes, config, cores, costs, gil_free)
        scored.append((t, sum(k == "process" for k, _ in config), config, pace))
    fastest = min(t for t, *_ in scored)
    t, _, config, pace = min((x for x in scored if x[0] <= 1.05 * fastest), key=lambda x: (x[1], x[0]))
    return config, t, pace


def _stage_figures(fused: Any, fn: Fused, n: int) -> list[tuple[float, float]]:
    """Each stage's (wall, CPU) seconds an item: from the tuning cache on a hit (no item
    ran), else from the sample, then kept with the sample's entry for the next time."""
    from dataclasses import replace

    from .tune import wisdom

    p = fused.profile
    if fused.cache == "hit":
        fn.out_bytes = [float(b) for b in p.stage_bytes]
        return [(float(w), float(c)) for w, c in p.stage_times]
    measured = fn.measured()
    if fused.cache == "miss" and fused.cache_key and fn.calls and wisdom.worth_keeping(p):
        sizes = tuple(b if b is not None else float("inf") for b in fn.out_bytes)
        wisdom.store(fused.cache_key, wisdom.func_name(fn.chain), replace(p, stage_times=tuple(measured), stage_bytes=sizes))
    return measured


class _Gate:
    """A staged run's input, handed to its feeder until ``closed``: the items after
    ``index`` never went in."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items, self.index, self.closed = items, 0, False

    def __iter__(self) -> "_Gate":
        return self

    def __next__(self) -> Any:
        if self.closed or self.index >= len(self.items):
            raise StopIteration
        item = self.items[self.index]
        self.index += 1
        return item


class _Judge:
    """A staged run's delivery rate against the fused run's prediction (items a second);
    closes the run's gate when fused would finish the items left clearly sooner."""

    def __init__(self, fused: Any, gate: _Gate) -> None:
        left = max(fused.n_remaining or 0, 1)
        self.fused_rate = left / fused.predicted_time if fused.predicted_time > 0 else float("inf")
        self.fused_label = fused.label()
        self.gate = gate
        self.count = 0
        self.t_first = 0.0
        self.reason = ""

    def watching(self) -> bool:
        return not self.gate.closed

    def delivered(self) -> None:
        if self.count == 0:
            self.t_first = time.perf_counter()
        self.count += 1

    def judge(self) -> None:
        if self.count < 2:
            return
        span = time.perf_counter() - self.t_first
        if span < SWITCH_AFTER:
            return
        rate = (self.count - 1) / span  # past the first result: the pipeline is full
        left = len(self.gate.items) - self.gate.index
        # Worth it only where the items left take clearly longer staged than fused.
        if rate >= SWITCH_RATIO * self.fused_rate or left / rate - left / self.fused_rate < SWITCH_AFTER / 2:
            return
        self.reason = (
            f"staged delivered {rate:.3g} items/s, fused ({self.fused_label}) was predicted {self.fused_rate:.3g}: "
            f"the {left} items not yet started ran fused"
        )
        self.gate.closed = True


def _fused_rest(stages: Sequence[Stage], items: Sequence[Any], fused: Any, errors: str) -> Iterator[Any]:
    """The items a staged run did not take, through the composed stages on the pool the
    fused plan chose (no second sample)."""
    from .run.execute import execute_iter
    from .tune.costs import pool_costs
    from .tune.model import best_chunksize

    kind, n = fused.executor_type, fused.n_jobs
    if kind == "serial":
        return execute_iter(Fused(stages).chain, items, executor_type="serial", n_jobs=1, chunksize=1, errors=errors)
    cs = best_chunksize(kind, n, len(items), fused.profile, pool_costs(fused.start_method), fused.usable_cores).chunksize
    return execute_iter(Fused(stages).chain, items, executor_type=kind, n_jobs=n, chunksize=cs, errors=errors)


class PipelineRun(Iterator[Any]):
    """:meth:`Pipeline.execute_iter`'s results in input order. ``switched_at``: the input
    index from which a staged run went on fused (None: it did not), ``reason`` why;
    :meth:`report`: what the run did against what the plan predicted."""

    def __init__(self, plan: PipelinePlan) -> None:
        self.plan = plan
        self.switched_at: int | None = None
        self.reason = ""
        self.staged: StagedRun | None = None  # the staged run's stages, for their metrics
        self.execution: Any = None  # a fused run's ExecutionReport (also the rest after a switch)
        self._it: Iterator[Any] = iter(())
        self._t0 = time.perf_counter()
        self._t_end: float | None = None
        self._count = 0
        self.from_sample = 0  # results the plan's sample made (a staged run starts after them)

    def attach(self, it: Iterator[Any]) -> None:
        self._it = it
        self.execution = getattr(it, "report", self.execution)

    def __next__(self) -> Any:
        try:
            value = next(self._it)
        except StopIteration:
            if self._t_end is None:
                self._t_end = time.perf_counter()
            raise
        self._count += 1
        return value

    def to_list(self) -> list[Any]:
        """All the results: a fused run's by its blocks of results (tiny items pay no
        iterator step each), a staged run's one by one."""
        blocks = getattr(self._it, "blocks", None)
        if blocks is None:
            return list(self)
        out: list[Any] = []
        for block in blocks():
            if out:
                out.extend(block)
            else:
                out = block  # a fresh list nothing else holds
        self._count, self._t_end = len(out), time.perf_counter()
        return out

    def report(self) -> "PipelineReport":
        """Predicted against measured (so far, while it runs): the mode, items/s the plan
        predicted and the run delivered, per stage its measured ms an item (the plan's) and,
        staged, the run's metrics (items, mean ms, busy share, waits before and after, the
        bottleneck); a fused run's ExecutionReport as ``execution``; the switch, if any.
        ``explain()`` says it in words, ``to_dict()`` as plain data; ``report()["mode"]``
        reads it as the dict it was."""
        elapsed = (self._t_end or time.perf_counter()) - self._t0
        out: dict[str, Any] = {
            "mode": self.plan.mode,
            "items": self._count,
            "from_sample": self.from_sample,
            "seconds": elapsed,
            "predicted_items_per_s": self.plan.predicted_throughput,
            "items_per_s": self._count / elapsed if elapsed > 0 else 0.0,
            "stages": [{"name": s.name, "planned_ms": s.item_time * 1e3, "executor": s.executor_type,
                        "n_jobs": s.n_jobs} for s in self.plan.stages],
            "switched_at": self.switched_at,
            "reason": self.reason,
            "execution": self.execution,
        }
        if self.staged is not None:
            staged = self.staged.metrics()
            for planned, measured in zip(out["stages"], staged["stages"]):
                planned.update(measured)
            out["bottleneck"] = staged["bottleneck"]
            out["grown"] = staged["grown"]
        out["done"] = self._t_end is not None
        return PipelineReport(out)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class PipelineReport(Mapping[str, Any]):
    """What a pipeline run did against its plan (:meth:`PipelineRun.report`), in the words
    of ``result.explain()`` and ``report.explain()``: :meth:`explain` in words,
    :meth:`to_dict` as plain data (a fused run's ExecutionReport as its own dict). Read as a
    mapping it is what ``report()`` returned before: ``report["mode"]``, ``["stages"]``,
    ``["execution"]`` (the ExecutionReport itself)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        d = dict(self._data)
        d["stages"] = [dict(s) for s in d["stages"]]
        d["grown"] = dict(d.get("grown") or {})
        if d["execution"] is not None:
            d["execution"] = d["execution"].to_dict()
        return d

    def explain(self) -> str:
        """The run in words: items and time against the plan, each stage, the switch, and a
        fused run's own report."""
        from ._words import fmt_rate, fmt_time, plural

        d = self._data
        so_far = "" if d.get("done", True) else " so far"
        lines = [
            f"pipeline run ({d['mode']}): {plural(d['items'], 'item')} in {fmt_time(d['seconds'])}{so_far}, "
            f"{fmt_rate(d['items_per_s'])} against {fmt_rate(d['predicted_items_per_s'])} predicted"
        ]
        if d["from_sample"]:
            lines.append(f"  {plural(d['from_sample'], 'result')} came from the plan's sample")
        lines.append("stages:")
        lines.extend(_stage_line(s, d.get("bottleneck")) for s in d["stages"])
        if d["switched_at"] is not None:
            lines.append(f"from item {d['switched_at']} on, ran fused: {d['reason']}")
        grown = d.get("grown") or {}
        for name, n in grown.items():
            lines.append(f"{name}: {plural(n, 'worker')} added while running")
        if d["execution"] is not None:
            lines.append("fused run:" if d["switched_at"] is None else "the items run fused:")
            lines.extend("  " + line for line in d["execution"].explain().splitlines())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()

    def __repr__(self) -> str:
        return f"PipelineReport({self.to_dict()!r})"


def _stage_line(s: dict[str, Any], bottleneck: str | None) -> str:
    """One stage: its pool, and staged, what it did (items, time an item against the plan,
    busy share, waits); fused, the plan's time an item."""
    from ._words import fmt_time, plural, pool_words

    planned = fmt_time(s["planned_ms"] / 1e3)
    if "items" not in s:  # fused: every item through all stages on one pool
        return f"  {s['name']:<20} planned {planned} an item"
    how = pool_words(s.get("executor_type") or s["executor"], s["n_jobs"])
    text = (
        f"  {s['name']:<20} {how}: {plural(s['items'], 'item')}, {fmt_time(s['mean_ms'] / 1e3)} an item "
        f"(planned {planned}), busy {s['busy_share']:.0%}, waited {fmt_time(s['wait_in'])} for input "
        f"and {fmt_time(s['wait_out'])} to pass items on"
    )
    if s.get("failed"):
        text += f", {plural(s['failed'], 'item')} failed"
    return text + ("  <- bottleneck" if s["name"] == bottleneck else "")


def _then(done: Iterable[Any], rest: Iterator[Any], collect: bool = True) -> Iterator[Any]:
    """``done``, then ``rest``; closing it closes ``rest`` (and stops its stages). Not
    ``collect``: a failure in ``done`` (a sample that collected) raises in its place."""
    for value in done:
        if not collect and isinstance(value, ItemFailed):
            raise value.exception
        yield value
    yield from rest


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_run_args(items: Any = (), *, plan: Any = None, queue_size: Any = None, **options: Any) -> None:
    """The checks execute() makes (``options``: errors, sample_time, cache, progress, desc, as
    :class:`~autopar.options.Options` checks them), plus the items, the plan and the queues'
    bound: a wrong argument fails at once, with its name, not later in a stage."""
    try:
        iter(items)
    except TypeError:
        raise TypeError(f"items must be iterable, got {type(items).__name__}") from None
    if plan is not None and not isinstance(plan, PipelinePlan):
        raise TypeError(f"plan must be a PipelinePlan from Pipeline.optimize(), got {type(plan).__name__}")
    if queue_size is not None:
        _positive_int("queue_size", queue_size)
    Options(**options)


def _check_timeout(timeout: Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0 or timeout == float("inf"):
        raise ValueError(f"timeout must be a finite number of seconds >= 0 or None, got {timeout!r}")


def _picklable(func: Callable[[Any], Any]) -> bool:
    return _serialize.measure(func)[0] is not None  # pickle or cloudpickle can send it


class Pipeline:
    """Stages run one after another on each item: ``Pipeline([read, Stage(stretch), ...])``."""

    def __init__(self, stages: Sequence[Callable[[Any], Any] | Stage], *, start_method: str | None = None) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = tuple(s if isinstance(s, Stage) else Stage(s) for s in stages)
        self.start_method = start_method  # of the process stages' pools (default: autopar's)
        # The last optimize()'s plan: a run of the same items without a plan takes it.
        self._last: PipelinePlan | None = None
        self._last_lock = threading.Lock()

    def optimize(
        self, items: Iterable[Any], *, sample_time: float = 0.2, queue_size: int = 32, errors: str = "raise",
        cache: bool = True,
    ) -> PipelinePlan:
        """Measure each stage on the first items and choose fused or staged (``errors``:
        "collect" keeps a sample item's failure in its place, as execute() does). ``cache``:
        the tuning cache, as optimize()'s: a pipeline measured before on like items is
        decided from its kept figures (the stages' too) without a sample."""
        from .tune.optimize import optimize
        from .tune.system import usable_cores

        _check_run_args(items, errors=errors, queue_size=queue_size, sample_time=sample_time, cache=cache)
        data = items if isinstance(items, (list, tuple)) else list(items)
        cores = usable_cores()
        reasons = []
        pinned = [s.name for s in self.stages if s.pinned]
        fused = None
        sampled: list[Any] = []
        if pinned:
            # A serial sample runs its items at the pipeline's slowest pace: a short one (a
            # quarter of sample_time, at least two items) is enough for the stages' shares.
            measured, sampled, sizes = _measure(
                self.stages, list(itertools.islice(data, 64)), sample_time / 4, errors == "collect"
            )
        else:
            # Fused: optimize() samples the composed function (its results are kept for
            # execute()), which times each stage as it goes.
            fused_obj = Fused(self.stages)
            fn = fused_obj.chain  # what optimize() samples and execute() runs
            try:
                fused_obj.timed = True
                fused = optimize(fn, data, sample_time=sample_time, errors=errors, cache=cache)
                if fused.cache == "hit" and len(fused.profile.stage_times) != len(self.stages):
                    # An entry without its stages' figures (read between optimize()'s write
                    # and the one that adds them): measure.
                    fused = optimize(fn, data, sample_time=sample_time, errors=errors, cache=False)
            finally:
                fused_obj.timed = False
            measured = _stage_figures(fused, fused_obj, len(self.stages))
            if fused.cache == "hit":
                reasons.append("the stages' figures from the tuning cache (this pipeline ran on like items before): no sample")
        if pinned:
            from .tune.costs import pool_costs
            from .tune.system import default_start_method

            rest = max(len(data) - len(sampled), 1)
            costs = pool_costs(self.start_method or default_start_method())
            config, _, _ = _best_config(self.stages, measured, sizes, cores, costs, False, rest)
            mode = "staged"
            reasons.append(f"stages {', '.join(map(str, pinned))} are pinned: each stage runs on its own pool")
            paces = [w / (n if kind != "serial" else 1) for (kind, n), (w, _) in zip(config, measured)]
            throughput = 1.0 / max(paces) if max(paces) > 0 else float("inf")
        else:
            assert fused is not None
            mode, throughput, config = self._choose(fused, fused_obj, measured, cores, reasons)
            if mode == "staged":
                # The sample's items went through every stage: the staged run starts after them.
                stash = fused.stash
                if stash is not None:
                    sampled = [y for block in stash.result_blocks for y in block]
        plans = tuple(
            StagePlan(str(s.name), kind, n, 1, w, (c / w if w > 0 else 0.0), s.pinned)
            for s, (kind, n), (w, c) in zip(self.stages, config, measured)
        )
        taken = len(sampled) if fused is None else max(len(sampled), _taken(fused.stash))
        plan = PipelinePlan(mode, plans, throughput, tuple(reasons), fused, queue_size, data, tuple(sampled),
                            _Sampled(items, data, taken))
        with self._last_lock:
            self._last = plan
        return plan

    def _take_last(self, items: Any) -> PipelinePlan | None:
        """The last optimize()'s plan where it was made for ``items`` and not yet run
        (then forgotten: it holds the items and the sample's results)."""
        with self._last_lock:
            plan = self._last
            if plan is None or plan.source is None or not plan.source.matches(items):
                return None
            self._last = None
            return plan

    def _forget(self, plan: PipelinePlan) -> None:
        with self._last_lock:
            if self._last is plan:
                self._last = None

    def _choose(self, fused: Any, fn: Fused, measured: list[tuple[float, float]], cores: int,
                reasons: list[str]) -> tuple[str, float, list[tuple[str, int]]]:
        """Fused or staged, from the same measurements: fused's prediction is optimize()'s;
        staged's is :func:`_staged_time` for the best staged config. Staged only where
        clearly faster (STAGED_MARGIN): its model is the cruder of the two. Returns (mode,
        predicted items/s, the staged config)."""
        from .tune.costs import pool_costs

        if fused.n_remaining == 0:
            reasons.append("fused: optimize()'s sample ran every item, nothing is left to run")
            return "fused", float("inf"), _staged_config(self.stages, measured, cores)
        rest = fused.n_remaining
        p = fused.profile
        gil_free = bool(p.thread_scaling and p.probe_threads >= 2 and p.thread_scaling >= 0.8 * p.probe_threads)
        sizes = [p.item_bytes] + [b if b is not None else p.result_bytes for b in fn.out_bytes]
        config, t_staged, pace = _best_config(self.stages, measured, sizes, cores, pool_costs(fused.start_method), gil_free, rest)
        t_fused = fused.predicted_time
        how = " / ".join(k if k == "serial" else f"{k} x{n}" for k, n in config)
        if t_staged < STAGED_MARGIN * t_fused:
            reasons.append(
                f"staged ({how}) predicted {t_staged:.3f} s for the {rest} items left, fused "
                f"({fused.executor_type} x{fused.n_jobs}) {t_fused:.3f} s: each stage on its own pool, paced by {pace}"
            )
            return "staged", rest / t_staged if t_staged > 0 else float("inf"), config
        reasons.append(
            f"fused ({fused.executor_type} x{fused.n_jobs}) predicted {t_fused:.3f} s for the {rest} items left, staged "
            f"({how}) {t_staged:.3f} s, paced by {pace}: every item through all stages on one pool"
        )
        return "fused", rest / t_fused if t_fused > 0 else float("inf"), config

    def execute(self, items: Iterable[Any], *, plan: PipelinePlan | None = None, errors: str = "raise",
                queue_size: int | None = None, progress: Any = False, desc: str | None = None) -> list[Any]:
        """The same list as ``[last(...first(x)) for x in items]``, in input order.
        ``progress``/``desc``: a progress bar as execute()'s (fused runs; a staged run shows none)."""
        return self.execute_iter(items, plan=plan, errors=errors, queue_size=queue_size, progress=progress, desc=desc).to_list()

    def execute_iter(self, items: Iterable[Any], *, plan: PipelinePlan | None = None, errors: str = "raise",
                     queue_size: int | None = None, progress: Any = False, desc: str | None = None) -> Iterator[Any]:
        """The results one by one, in input order (a :class:`PipelineRun`). Without ``plan``:
        the plan of the last optimize() of these very items, unchanged since (its sample's
        items are not run again), else a new optimize()."""
        _check_run_args(items, plan=plan, errors=errors, queue_size=queue_size, progress=progress, desc=desc)
        if plan is None:
            plan = self._take_last(items)
            if plan is None:
                items = items if isinstance(items, (list, tuple)) else list(items)
                plan = self.optimize(items, errors=errors)
        # The sample's results are handed back only for the items they came from, once.
        same = plan.source.claim(items) if plan.source is not None else None
        self._forget(plan)
        if same is not None:
            items = same
        if plan.mode == "fused":
            from .run.execute import execute_iter

            # The plan's result holds the sample's results for plan.data and its function.
            stash = plan.fused.stash if plan.fused is not None else None
            fn = stash.func if stash is not None and same is not None else Fused(self.stages).chain
            fused_run = PipelineRun(plan)
            fused_run.attach(execute_iter(fn, items, result=plan.fused, errors=errors, progress=progress, desc=desc))
            return fused_run
        done: tuple[Any, ...] = ()
        if plan.sampled and same is not None:
            # The sample's items ran through every stage: their results are kept, the rest runs.
            done, items = plan.sampled, same[len(plan.sampled):]
        config = [(p.executor_type, p.n_jobs) for p in plan.stages]
        run = PipelineRun(plan)
        run.from_sample = len(done)
        # A staged run with a fused alternative (no stage pinned) is watched against it.
        fused = plan.fused if plan.fused is not None and isinstance(items, (list, tuple)) else None
        rest = self._staged(items, config, queue_size or plan.queue_size, errors, len(done), fused, run)
        run.attach(_then(done, rest, errors == "collect") if done else rest)
        return run

    def _staged(
        self, items: Iterable[Any], config: list[tuple[str, int]], queue_size: int, errors: str, offset: int = 0,
        fused: Any = None, info: "PipelineRun | None" = None,
    ) -> Iterator[Any]:
        """The staged run's results in order. With ``fused`` (optimize()'s result for the
        composed stages) the run is judged every WATCH seconds once it has delivered for
        SWITCH_AFTER: delivering under SWITCH_RATIO of fused's predicted rate, with enough
        items left for the switch to pay, it stops taking input, finishes the items it
        holds (each runs once) and the rest runs fused."""
        run = StagedRun(self.stages, config, queue_size, errors == "collect", ordered=True,
                        start_method=self.start_method, offset=offset)
        if info is not None:
            info.staged = run
        # Watched against fused (the caller passes ``fused`` only with a list of items).
        gate = _Gate(cast(Sequence[Any], items)) if fused is not None else None
        judge = _Judge(fused, gate) if gate is not None else None
        clean = False
        try:
            run.feed(gate if gate is not None else items)
            while True:
                watching = judge is not None and judge.watching()
                try:
                    got = run.get(timeout=WATCH if watching else None)
                except queue.Empty:
                    got = ()
                if got is None:
                    break
                if got:
                    if judge is not None:
                        judge.delivered()
                    yield got[1]
                if judge is not None and judge.watching():
                    judge.judge()
            clean = True
        finally:
            run.close(kill=not clean)
        if gate is not None and judge is not None and gate.closed and gate.index < len(gate.items):
            if info is not None:
                info.switched_at = offset + gate.index
                info.reason = judge.reason
            rest = _fused_rest(self.stages, gate.items[gate.index:], fused, errors)
            if info is not None:
                info.execution = getattr(rest, "report", None)
            yield from rest

    def stream(self, *, queue_size: int = 32, errors: str = "raise", ordered: bool = True,
               plan: PipelinePlan | None = None, config: Sequence[tuple[str, int]] | None = None) -> "Stream":
        """A pipeline kept running for items that arrive over time (see :class:`Stream`).
        ``config``: per stage (executor_type, n_jobs); else a staged ``plan``'s, else each
        stage's pin or one thread."""
        _check_run_args(plan=plan, errors=errors, queue_size=queue_size)
        if not isinstance(ordered, bool):
            raise ValueError(f"ordered must be True or False, got {ordered!r}")
        if config is None:
            if plan is not None and plan.mode == "staged":
                config = [(p.executor_type, p.n_jobs) for p in plan.stages]
            else:
                config = [(s.executor_type or "thread", s.n_jobs or 1) for s in self.stages]
        return Stream(self, self._checked_config(config), queue_size, errors == "collect", ordered)

    def _checked_config(self, config: Any) -> list[tuple[str, int]]:
        """``config`` as a list of (executor_type, n_jobs), one per stage, each a pool kind a
        stage runs on and a positive worker count; a pin it breaks is an error."""
        try:
            pairs = [tuple(c) for c in config]
        except TypeError:
            raise TypeError(f"config must be a list of (executor_type, n_jobs) pairs, got {config!r}") from None
        if len(pairs) != len(self.stages) or any(len(c) != 2 for c in pairs):
            raise ValueError(f"config must give (executor_type, n_jobs) for each of the {len(self.stages)} stages, got {config!r}")
        out = []
        for stage, (kind, n) in zip(self.stages, pairs):
            if kind not in EXECUTOR_TYPES:
                raise ValueError(f"config: stage {stage.name!r}'s executor_type must be one of {EXECUTOR_TYPES}, got {kind!r}")
            _positive_int(f"config: stage {stage.name!r}'s n_jobs", n)
            if stage.executor_type not in (None, kind) or stage.n_jobs not in (None, n):
                raise ValueError(f"config: stage {stage.name!r} is pinned to {stage.executor_type or 'any'} x{stage.n_jobs or 'any'}, got {kind} x{n}")
            out.append((kind, n))
        return out


STALL_GRACE = 5.0  # seconds submit() waits on a stream stalled for want of a reader before it says so


class StreamStalled(AutoparError, RuntimeError):
    """submit() on a stream whose results are full while no thread takes them: it would wait
    forever (the item did not go in; the stream goes on)."""


class Stream:
    """A running staged pipeline: ``submit(x)`` (blocks while the first queue is full:
    backpressure), ``get_result(timeout)`` (in submission order unless ``ordered=False``),
    ``results(count)``, ``process_batch(items)``, ``metrics()``, ``stop()``. A context
    manager: leaving it stops every stage; so does dropping it (a finalizer, as
    concurrent.futures' executors have). Results wait in the last queue until taken, so a
    consumer that does not take them holds the whole pipeline to its queues' bound: a
    submit() that would then wait forever raises :class:`StreamStalled` instead."""

    def __init__(self, pipe: Pipeline, config: list[tuple[str, int]], queue_size: int, collect: bool, ordered: bool) -> None:
        self.run = StagedRun(pipe.stages, config, queue_size, collect, ordered, start_method=pipe.start_method)
        # Dropped without stop(): the run is stopped all the same. The finalizer holds the
        # run only (nothing in the run refers to the stream).
        self._finalizer = weakref.finalize(self, self.run.close, True)
        self.closed = False
        self.queue_size = queue_size
        self.lock = threading.Lock()  # one submitter at a time (sequence numbers)
        self.readers_lock = threading.Lock()
        self.waiting = 0  # threads in get_result() now
        self.readers: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()  # threads that took results

    def submit(self, item: Any, block: bool = True, timeout: float | None = None) -> int:
        """Put an item in; its sequence number. While the first queue is full it waits for
        room (``block`` False: queue.Full at once; ``timeout``: TimeoutError after that many
        seconds). Where the results are full and no thread takes them (none waits in
        get_result(), and no other live thread ever took one) for STALL_GRACE seconds, room
        can only come from this thread: :class:`StreamStalled` (the stages are all held up,
        so the stream cannot move without a reader)."""
        _check_timeout(timeout)
        if self.closed:
            raise RuntimeError("the stream is stopped")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"submit(): another thread's submit() held the stream for {timeout} s")
        try:
            return self._put(item, block, deadline, timeout)
        except Stopped:
            raise self.run.error or RuntimeError("the stream is stopped") from None
        finally:
            self.lock.release()

    def _put(self, item: Any, block: bool, deadline: float | None, timeout: float | None) -> int:
        stalled: float | None = None  # since when nothing but a reader could make room
        while True:
            wait = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            try:
                return self.run.put(item, block and wait > 0, wait)
            except queue.Full:
                if not block:
                    raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                why = f" ({self._stall_text()})" if self._stalled() else ""
                raise TimeoutError(f"submit(): no room in the stream within {timeout} s{why}")
            if deadline is None and self._stalled():
                stalled = now if stalled is None else stalled
                if now - stalled >= STALL_GRACE:
                    raise StreamStalled(
                        f"submit() would wait forever: {self._stall_text()}. Take results as you go (get_result() "
                        "or results() between submits, or in another thread), pass a larger queue_size to "
                        "stream(), use process_batch(items), which takes results while it submits, or pass "
                        "submit(timeout=) to wait for a reader that comes later"
                    )
            else:
                stalled = None

    def _stalled(self) -> bool:
        """Only a reader can make room: the results are full and every stage's workers wait
        to pass their items on; and no thread takes results: none waits in get_result(), and
        no live thread but this one has ever taken one."""
        out = self.run.handoffs[-1]
        if len(out.held) < out.capacity or any(s.outq.putters < s.left for s in self.run.stages):
            return False
        me = threading.current_thread()
        with self.readers_lock:
            return not self.waiting and not any(t is not me and t.is_alive() for t in self.readers)

    def _stall_text(self) -> str:
        held = self.run.submitted - self.run.handoffs[-1].taken
        return (f"the stream's results are full (queue_size={self.queue_size}: its {held} items not taken fill every "
                "queue) and no thread is taking them")

    def get_result(self, timeout: float | None = None) -> Any:
        """The next result; TimeoutError after ``timeout`` seconds, EOFError after the end
        (end(), or stop()). With nothing in flight it waits for an item another thread
        submits, as a stream is for items that arrive over time: ``timeout`` bounds that."""
        _check_timeout(timeout)
        with self.readers_lock:
            self.waiting += 1
            self.readers.add(threading.current_thread())
        try:
            got = self.run.get(timeout)
        except queue.Empty:
            raise TimeoutError(f"no result within {timeout} s") from None
        finally:
            with self.readers_lock:
                self.waiting -= 1
        if got is None:
            raise EOFError("the stream has ended: no more results")
        return got[1]

    def results(self, count: int, timeout: float | None = None) -> Iterator[Any]:
        for _ in range(count):
            yield self.get_result(timeout)

    def process_batch(self, items: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """Submit ``items`` and return as many results, in order (results of items submitted
        before come first). Results are taken while submitting, so a batch larger than the
        queues never waits on itself."""
        _check_timeout(timeout)
        out: list[Any] = []
        n = 0
        for x in items:
            while True:
                try:
                    self.submit(x, block=False)
                    break
                except queue.Full:
                    out.append(self.get_result(timeout))  # room comes from taking a result
            n += 1
        while len(out) < n:
            out.append(self.get_result(timeout))
        return out

    def end(self) -> None:
        """No more items: results() and get_result() run to the end, then EOFError."""
        self.run.end_input()

    def metrics(self) -> dict[str, Any]:
        return self.run.metrics()

    def stop(self) -> None:
        """End every stage's workers now (items in flight are dropped)."""
        if not self.closed:
            self.closed = True
            self._finalizer()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
