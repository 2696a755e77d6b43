"""Chunks on a Dask distributed cluster: the same runner, the cluster as the pool.

A run on Dask is a run on a process pool whose workers live elsewhere: each chunk is one
task (``run_remote``, items pickled here, the function sent as cloudpickle bytes and kept
per worker under a key), submitted through Dask's own ``concurrent.futures`` adapter
(``client.get_executor()``), so look-ahead, in-order release, failures named by item and
collect mode are the runner's as for local pools. Dask itself runs a task again when the
worker that held it dies (up to ``distributed.scheduler.allowed-failures``); past that the
task's ``KilledWorker`` is raised with the chunk's items named.

``distributed`` is optional (``pip install "autopar[dask]"``); nothing here imports it
until a cluster is asked for.
"""

from __future__ import annotations

import socket
from concurrent.futures import Executor, Future
from typing import Any, Callable

__all__ = ["DaskExecutor", "connect", "is_client", "require_distributed"]

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

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

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
