"""A pipeline running staged (:class:`StagedRun`): each stage's workers, the handoffs between
them, what each stage did (:class:`StageMetrics`), and a close that leaves nothing running."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .. import _serialize
from ..backends.pools import make_backend
from ..backends.process import ProcessBackend, Unsendable, forks_first
from ..errors import ItemFailed, add_note, annotate, annotate_stage
from ..tune.system import default_start_method
from .compose import Stage
from .handoff import Handoff, Stopped

WATCH = 0.2  # seconds between the staged run's looks at its stages' busy shares
MAX_GROWN = 4  # a stage grows to at most this many times its starting workers


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
    """One stage's workers: threads running the function, or driver threads sending items to
    the stage's process backend (made, replaced and asked how it ended in ``backends/``)."""

    def __init__(self, run: "StagedRun", index: int, stage: Stage, kind: str, n_jobs: int, inq: Handoff, outq: Handoff) -> None:
        self.run, self.index, self.stage = run, index, stage
        self.kind, self.n_jobs = kind, n_jobs
        self.inq, self.outq = inq, outq
        self.metrics = StageMetrics(str(stage.name), kind, n_jobs)
        self.lock = threading.Lock()
        self.backend: ProcessBackend | None = None
        self.closed = False
        self.broken: Any = None  # the last pool that broke,
        self.ended = ""  # ... and how its workers ended
        drivers = 1 if kind == "serial" else n_jobs if kind == "thread" else 2 * n_jobs
        if kind == "process":
            method = run.start_method or default_start_method()
            self.backend = make_backend(  # type: ignore[assignment]
                "process", stage.func, n_jobs, start_method=method, transport=_serialize.PICKLE, blas_threads=1, one_run=False
            )
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

    def _call(self, seq: int, value: Any) -> tuple[Any, float]:
        """The stage's function on one item: (result, CPU seconds)."""
        backend = self.backend
        if backend is None:
            c0 = time.thread_time()
            return self.stage.func(value), time.thread_time() - c0
        try:
            values, _, failures, cpu = backend.submit(seq + self.run.offset, [value]).result()
        except Unsendable as exc:  # the item's own pickling error, as it was raised
            raise (exc.error.__cause__ or exc.error) from None
        except Exception as exc:
            if backend.is_broken(exc):
                self._broke(exc)
            raise
        if failures:
            raise failures[0][1]
        return backend.decode(values)[0], cpu

    def _broke(self, exc: BaseException) -> None:
        """A worker died under the item: the item fails, saying how the worker ended; collecting,
        the stage goes on with a fresh pool (once per broken pool; none once it closes)."""
        backend = self.backend
        assert backend is not None
        with self.lock:
            if backend.pool_broken() and self.broken is not backend.ex:
                self.broken, self.ended = backend.ex, backend.how_it_ended()
                if self.run.collect and not self.closed and not self.run.stop.is_set():
                    backend.replace()
                    if self.closed:  # closed meanwhile: the fresh pool goes too
                        backend.close(clean=False)
        note = f"autopar: {self.ended or backend.how_it_ended()}"
        if note not in getattr(exc, "__notes__", ()):  # (one exception for every item the break took)
            add_note(exc, note)

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
                        value, cpu = self._call(seq, value)
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
        backend = self.backend
        self.closed = True  # (no lock: a finalizer may close the run on a thread that holds it)
        if backend is not None and kill:
            backend.close(clean=False)
        for t in self.threads:
            _join(t)
        if backend is not None and not kill:
            backend.close(clean=True)


def _join(t: threading.Thread) -> None:
    """Wait for one of the run's threads (a few seconds at most), unless it is this one (a dropped
    stream's finalizer may run on any thread)."""
    if t is not threading.current_thread() and t.ident is not None:  # (not started: a run that failed to start)
        t.join(timeout=5)


class StagedRun:
    """The stages' workers and the handoffs between them: items in by :meth:`put` (or
    :meth:`feed`), results out of :meth:`get` in order."""

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
        self.feeder: threading.Thread | None = None
        self.watcher: threading.Thread | None = None
        try:
            with forks_first():  # every process stage's workers before any thread of the run
                for i, (stage, (kind, n)) in enumerate(zip(stages, config)):
                    try:
                        self.stages.append(_StageRun(self, i, stage, kind, n, self.handoffs[i], self.handoffs[i + 1]))
                    except Exception as exc:
                        annotate_stage(exc, str(stage.name))
                        raise
        except BaseException:
            self.close(kill=True)
            raise
        for s in self.stages:
            s.start()
        self.submitted = 0
        self.grown: dict[str, int] = {}  # stage -> workers added while running
        if any(s.grows for s in self.stages):
            self.watcher = threading.Thread(target=self._watch, name="autopar-pipeline-watch", daemon=True)
            self.watcher.start()

    def _watch(self) -> None:
        """Every WATCH seconds, a thread stage busy nearly all the time, mostly waiting (CPU under
        half its time) and with items queued gets one more worker, up to MAX_GROWN times its start."""
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
                self.end_input()
            except Stopped:
                pass
            except BaseException as exc:
                self.fail(exc)

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

