"""The same work on a Dask cluster: a LocalCluster of two worker processes on 127.0.0.1.

    pip install ".[dask]" && python examples/dask_cluster.py

With a real cluster, pass its client (``pool=client``) or its address
(``scheduler="tcp://host:8786"``) instead.
"""

from __future__ import annotations

import tempfile
import zlib


def compressed_size(seed: int) -> int:
    """Compress 256 KB of repetitive bytes: zlib work, about a millisecond."""
    block = bytes((seed * 7 + i) % 251 for i in range(256)) * 1024
    return len(zlib.compress(block, 6))


if __name__ == "__main__":
    from dask.distributed import Client, LocalCluster

    import autopar

    data = list(range(2000))
    with tempfile.TemporaryDirectory(prefix="autopar-dask-") as scratch:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, local_directory=scratch
        ) as cluster, Client(cluster) as client:
            sizes, report = autopar.execute(compressed_size, data, pool=client, return_report=True)
    assert sizes == [compressed_size(x) for x in data]
    print(report.explain())
    print(f"\n{len(sizes)} blocks, {sum(sizes)} bytes compressed in all")
