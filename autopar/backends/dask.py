"""Chunks on a Dask distributed cluster: the same runner, the cluster as the pool.

A run on Dask is a run on a process pool whose workers live elsewhere: each chunk is one
task (``run_remote``, items pickled here, the function sent as cloudpickle bytes and kept
per worker under a key), submitted through Dask's own ``concurrent.futures`` adapter
(``client.get_executor()``), so look-ahead, in-order release, failures named by item and
collect mode are the runner's as for local pools. Dask itself runs a task again when the
worker that held it dies (up to ``distributed.scheduler.allowed-failures``); past that the
task's ``KilledWorker`` becomes a ``WorkerDied`` naming the chunk's items.

``distributed`` is optional (``pip install "autopar[dask]"``); nothing here imports it
until a cluster is asked for.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass
from typing import Any, Callable

__all__ = ["ClusterCosts", "DaskExecutor", "cluster_costs", "connect", "is_client", "require_distributed"]

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


class DaskExecutor(Executor):
    """A ``concurrent.futures`` executor over a Dask client: its size is the cluster's
    worker threads. ``owned``: the client was made for this executor and closes with it."""

    def __init__(self, client: Any, owned: bool = False) -> None:
        self.client, self.owned = client, owned
        self._ex = client.get_executor(pure=False)
        self._max_workers = max(1, sum(client.nthreads().values()))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        try:
            self._ex.shutdown(wait=wait and not cancel_futures)
        finally:
            if self.owned:
                self.client.close()


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
    """A TCP address nobody listens on fails here, at once: a Client that fails to connect
    leaves its event loop's thread running."""
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
    """A Dask cluster as measured from this client: workers, threads and memory, a no-op
    task's round trip (median of ``ROUND_TRIPS`` one after another: the latency of a task),
    what a task costs with many queued (``QUEUED_TASKS`` no-ops at once, over their count:
    the scheduler's and this client's share, the limit on tasks a second) and bytes per
    second to and from the workers (a ``BANDWIDTH_BYTES`` scatter, then its gather)."""

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
