"""Chunks on a Dask distributed cluster: a run on a process pool whose workers live elsewhere,
each chunk one task through Dask's own ``concurrent.futures`` adapter
(``client.get_executor()``). ``distributed`` is optional, imported only when a cluster is
asked for.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass
from typing import Any, Callable

from .base import CAPABILITIES
from .process import ProcessBackend
from .worker import running_chunks

__all__ = ["ClusterCosts", "DaskBackend", "DaskExecutor", "cluster_costs", "connect", "is_client", "require_distributed"]

INSTALL_HINT = 'Dask support needs the "distributed" package: pip install "autopar[dask]"'


def require_distributed() -> Any:
    """The ``distributed`` module, or an ImportError that says how to get it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return distributed


def is_client(obj: Any) -> bool:
    """Whether ``obj`` is a ``distributed.Client`` (checked without importing distributed)."""
    return any(c.__module__.startswith("distributed") and c.__name__ == "Client" for c in type(obj).__mro__)


SCATTER_BYTES = 1 << 20  # an argument this large goes to the workers by scatter, not in the task


class DaskExecutor(Executor):
    """A ``concurrent.futures`` executor over a Dask client: its size is the cluster's worker
    threads. ``owned``: the client was made for this executor and closes with it. A bytes
    argument of ``SCATTER_BYTES`` or more goes to the workers by scatter (:meth:`share`: once)."""

    def __init__(self, client: Any, owned: bool = False) -> None:
        self.client, self.owned = client, owned
        self.address = str(client.scheduler.address)
        self._ex = client.get_executor(pure=False)
        self.n_workers = max(1, sum(client.nthreads().values()))  # the pool's size: worker threads
        self.stuck_workers: set[str] = set()
        self._shared: list[Any] = []  # futures of shared data, released at shutdown
        self.scattered = 0  # arguments scattered

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if any(_large(a) for a in args):
            args = tuple(self._scatter(a) if _large(a) else a for a in args)
        return self._ex.submit(fn, *args, **kwargs)

    def share(self, data: Any) -> Any:
        """What to pass to every task in place of ``data``: its future when it is large (it
        goes to the cluster once), else ``data``."""
        if not _large(data):
            return data
        future = self._scatter(data)
        self._shared.append(future)
        return future

    def _scatter(self, data: Any) -> Any:
        [future] = self.client.scatter([data], hash=False)
        self.scattered += 1
        return future

    def running(self, key: str) -> dict[int, tuple[float, str]]:
        """The chunks of the run ``key`` running on a worker now, as the workers say: chunk start
        -> (seconds running, worker address)."""
        replies = self.client.run(running_chunks, key, on_error="ignore")
        return {
            start: (t, worker)
            for worker, reply in replies.items()
            if isinstance(reply, dict)
            for start, t in reply.items()
        }

    def avoid(self, worker: str) -> None:
        """Send no more tasks to ``worker`` (a thread there is stuck in a call that goes on),
        as long as another worker is left."""
        self.stuck_workers.add(worker)
        others = [w for w in self.client.nthreads() if w not in self.stuck_workers]
        self._ex = self.client.get_executor(pure=False, **({"workers": others} if others else {}))

    def gone(self) -> str | None:
        """Why the cluster can no longer run this executor's tasks (None: it can)."""
        status = self.client.status
        if status in ("running", "newly-created"):
            return None
        return f"the Dask scheduler at {self.address} went away (the client is {status})"

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shared.clear()  # the data is released on the cluster with its futures
        try:
            self._ex.shutdown(wait=wait and not cancel_futures)
        finally:
            if self.owned:
                self._close_client()

    def _close_client(self) -> None:
        """Close the client made for the run; with its scheduler gone, without the ERROR Dask
        logs (the run has raised a ConnectionError saying so already)."""
        if self.gone() is None:
            self.client.close()
            return
        import logging

        log = logging.getLogger("distributed.client")
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            self.client.close(timeout=5)
        finally:
            log.setLevel(level)


class DaskBackend(ProcessBackend):
    """Chunks to a Dask cluster (a :class:`~.base.Backend`): a process backend whose pool is a
    :class:`DaskExecutor` the caller gave."""

    kind = "dask"
    caps = CAPABILITIES["dask"]
    ex: DaskExecutor

    def running(self) -> dict[int, tuple[float, str]]:
        """The run's chunks the workers run now: chunk start -> (seconds, worker address)."""
        return self.ex.running(self.key)

    def stop(self, where: Any) -> bool:
        """``where``: (the chunk's future, the worker address that runs it): its task cancelled,
        its worker given no more of the run's tasks (a thread there cannot be stopped)."""
        future, worker = where
        future.cancel()
        self.ex.avoid(worker)
        return True

    def gone(self) -> str | None:
        """Why the cluster can no longer run the chunks (None: it can)."""
        return self.ex.gone()

    @staticmethod
    def how_it_ended() -> str:
        return "a Dask worker died"


def _large(arg: Any) -> bool:
    return isinstance(arg, (bytes, bytearray)) and len(arg) >= SCATTER_BYTES


def connect(scheduler: str, timeout: float = 10.0) -> DaskExecutor:
    """A client to the scheduler at ``scheduler`` (``tcp://host:port``), owned by the run;
    a scheduler that cannot be reached is a clear error within ``timeout`` seconds."""
    distributed = require_distributed()
    _reachable(scheduler, timeout)
    try:
        client = distributed.Client(scheduler, timeout=timeout, set_as_default=False)
    except OSError as exc:
        raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s: {exc}") from exc
    return DaskExecutor(client, owned=True)


def _reachable(scheduler: str, timeout: float) -> None:
    """A TCP address nobody listens on fails here, at once (a Client that fails to connect
    leaves its event loop's thread running)."""
    scheme, _, rest = scheduler.rpartition("://")
    if scheme not in ("", "tcp") or ":" not in rest:
        return
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc


@dataclass(frozen=True)
class ClusterCosts:
    """A Dask cluster as measured from this client: workers, threads and memory, a no-op task's
    round trip (the median of ``ROUND_TRIPS``), a task's share with ``QUEUED_TASKS`` queued,
    and bytes per second to and from the workers (a ``BANDWIDTH_BYTES`` scatter and gather)."""

    address: str
    workers: int
    threads: int
    memory: int
    task_seconds: float
    task_share_seconds: float
    bytes_per_second_to: float
    bytes_per_second_from: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ROUND_TRIPS = 9
QUEUED_TASKS = 200
BANDWIDTH_BYTES = 8 << 20
_measured: dict[str, ClusterCosts] = {}  # per scheduler address, for this process
_measured_lock = threading.Lock()


def _noop(x: int) -> int:
    return x


def cluster_costs(client: Any, refresh: bool = False) -> ClusterCosts:
    """What a task and a byte cost on ``client``'s cluster, measured once per scheduler
    address in this process (``refresh``: again)."""
    address = str(client.scheduler.address)
    with _measured_lock:
        if not refresh and address in _measured:
            return _measured[address]
        info = client.scheduler_info()["workers"]
        trips = []
        for i in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            client.submit(_noop, i, pure=False).result()
            trips.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(QUEUED_TASKS), pure=False))
        queued = (time.perf_counter() - t0) / QUEUED_TASKS
        payload = bytes(BANDWIDTH_BYTES)
        t0 = time.perf_counter()
        [fut] = client.scatter([payload], hash=False)
        t1 = time.perf_counter()
        client.gather(fut)
        t2 = time.perf_counter()
        del fut
        costs = ClusterCosts(
            address=address,
            workers=len(info),
            threads=sum(int(w.get("nthreads", 1)) for w in info.values()),
            memory=sum(int(w.get("memory_limit", 0) or 0) for w in info.values()),
            task_seconds=statistics.median(trips),
            task_share_seconds=queued,
            bytes_per_second_to=BANDWIDTH_BYTES / max(t1 - t0, 1e-9),
            bytes_per_second_from=BANDWIDTH_BYTES / max(t2 - t1, 1e-9),
        )
        _measured[address] = costs
        return costs
