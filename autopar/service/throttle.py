"""How loaded the machine is (``Throttle``), and how many calls the manager admits (``Gate``).

``Throttle`` samples the CPU in use (against the cgroup's quota where there is one), the share
of it that is the manager's own process tree, and memory in use. Over ``cpu_threshold`` with
others using the cores, the admission factor drops to the share the others leave; over
``memory_threshold`` it is halved; when the load goes, it is 1 again. ``Gate``: a FIFO of
calls waiting for a slot (holding no thread), a limit of ``base x factor`` (at least 1).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from ..tune import system

__all__ = ["Gate", "Load", "Throttle"]

INTERVAL = 0.25  # seconds between samples
WINDOW = 2  # samples averaged: a decision on the last 0.5 s


def _threshold(value: float | None, env: str, default: float) -> float:
    if value is None:
        text = os.environ.get(env)
        try:
            value = float(text) if text else default
        except ValueError:
            raise ValueError(f"{env}={text!r} is not a number") from None
    if not 0 < value <= 100:
        raise ValueError(f"a threshold is a percentage in (0, 100], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Load:
    """One sample: percentages of the CPU capacity (cores, or the cgroup quota) and memory."""

    cpu: float  # all of it in use
    others: float  # in use by processes other than the manager's
    memory: float


def _cgroup_usage() -> float | None:
    """CPU seconds the cgroup has used, or None without a readable cgroup."""
    try:
        with open("/sys/fs/cgroup/cpu.stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"usage_usec"):
                    return int(line.split()[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/cpuacct/cpuacct.usage", "rb") as fh:
            return int(fh.read()) / 1e9
    except (OSError, ValueError):
        return None


class _Sampler:
    def __init__(self, workers: Callable[[], list[int]]) -> None:
        self.me = psutil.Process()
        self.workers = workers
        self._procs: dict[int, psutil.Process] = {}
        self.quota = system._cgroup_cpu_quota()
        self.capacity = self.quota or float(psutil.cpu_count() or 1)
        self.last = self._read()

    def _read(self) -> tuple[float, float, float]:
        now = time.monotonic()
        used = _cgroup_usage() if self.quota else None
        if used is None:
            t = psutil.cpu_times()
            used = t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return now, used, self._own_cpu()

    def _own_cpu(self) -> float:
        """CPU seconds of this process and the manager's worker processes (not of every child)."""
        total = sum(self.me.cpu_times()[:2])
        pids = set(self.workers())
        for pid in pids - self._procs.keys():
            try:
                self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
        for pid in list(self._procs):
            try:
                total += sum(self._procs[pid].cpu_times()[:2])
            except psutil.Error:
                del self._procs[pid]  # its time goes with it: the next sample's delta reads low once
        return total

    def sample(self) -> Load:
        now, used, own = self._read()
        t0, used0, own0 = self.last
        self.last = (now, used, own)
        span = max(now - t0, 1e-3) * self.capacity
        cpu = min(max((used - used0) / span, 0.0), 1.0) * 100
        mine = min(max((own - own0) / span, 0.0), 1.0) * 100
        return Load(cpu=cpu, others=max(cpu - mine, 0.0), memory=_memory_percent())


def _memory_percent() -> float:
    """Memory in use: against the cgroup's limit where there is one, else the machine's."""
    limit = system._cgroup_memory_limit()
    if limit:
        try:
            with open("/sys/fs/cgroup/memory.current", "rb") as fh:
                return 100.0 * int(fh.read()) / limit
        except (OSError, ValueError):
            pass
    return psutil.virtual_memory().percent


class Throttle:
    """The admission factor (0..1] and why. ``listener(factor)`` hears every change."""

    def __init__(
        self, cpu_threshold: float | None = None, memory_threshold: float | None = None, *, interval: float = INTERVAL,
        listener: Callable[[float], None] | None = None, workers: Callable[[], list[int]] = list,
    ) -> None:
        self.cpu_threshold = _threshold(cpu_threshold, "AUTOPAR_CPU_THRESHOLD", 85.0)
        self.memory_threshold = _threshold(memory_threshold, "AUTOPAR_MEMORY_THRESHOLD", 80.0)
        self.interval = interval
        self.listener, self.workers = listener, workers
        self.factor = 1.0
        self.reason = "not loaded"
        self.load: Load | None = None
        self._window: deque[Load] = deque(maxlen=WINDOW)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._sampler = _Sampler(self.workers)
            self._thread = threading.Thread(target=self._loop, name="autopar-throttle", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.update(self._sampler.sample())
            except psutil.Error:  # pragma: no cover - a process vanished between two reads
                continue

    def update(self, load: Load) -> float:
        """Take one sample into account; the new factor."""
        self._window.append(load)
        n = len(self._window)
        cpu = sum(s.cpu for s in self._window) / n
        others = sum(s.others for s in self._window) / n
        memory = sum(s.memory for s in self._window) / n
        self.load = Load(cpu, others, memory)
        factor, reason = 1.0, f"cpu {cpu:.0f}%, memory {memory:.0f}%: not loaded"
        if cpu >= self.cpu_threshold and others >= 100.0 - self.cpu_threshold:
            factor = max(1.0 - others / 100.0, 0.0)
            reason = f"cpu {cpu:.0f}% >= {self.cpu_threshold:g}% ({others:.0f}% by other processes)"
        if memory >= self.memory_threshold:
            factor = min(factor, 0.5)
            reason = f"memory {memory:.0f}% >= {self.memory_threshold:g}%" + ("; " + reason if factor < 0.5 else "")
        changed = factor != self.factor
        self.factor, self.reason = factor, reason
        if changed and self.listener is not None:
            self.listener(factor)
        return factor

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"Throttle(factor={self.factor:.2f}, {self.reason})"


class Gate:
    """At most ``limit`` calls running; the rest wait in order. Thread-safe."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.factor = 1.0
        self.running = 0
        self.max_running = 0
        self._pending: deque[Any] = deque()
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return max(1, int(self.base * self.factor))

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def offer(self, call: Any) -> bool:
        """True: ``call`` may start now (its slot taken); False: it waits its turn."""
        with self._lock:
            if self.running < self.limit and not self._pending:
                self._take()
                return True
            self._pending.append(call)
            return False

    def _take(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def done(self) -> list[Any]:
        """A call gave its slot back: the calls that may start now."""
        with self._lock:
            self.running -= 1
            return self._admit()

    def set_factor(self, factor: float) -> list[Any]:
        with self._lock:
            self.factor = factor
            return self._admit()

    def _admit(self) -> list[Any]:
        out = []
        while self._pending and self.running < self.limit:
            call = self._pending.popleft()
            if call.done():  # cancelled while waiting
                continue
            self._take()
            out.append(call)
        return out

    def remove(self, call: Any) -> bool:
        with self._lock:
            try:
                self._pending.remove(call)
                return True
            except ValueError:
                return False

    def drain(self) -> list[Any]:
        """Every waiting call, taken out (shutdown)."""
        with self._lock:
            out = list(self._pending)
            self._pending.clear()
            return out
