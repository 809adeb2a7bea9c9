"""
Simulated workers for the benchmarks: many from this one process, each
pcci's own worker connection (handshake included) over the real wire
protocol, with canned figures so the simulator's psutil calls do not count.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster  # noqa: E402  (the end-to-end tests' daemon harness)

from pcci.auth import read_secret  # noqa: E402
from pcci.worker.connection import WorkerFactory  # noqa: E402
from pcci.worker.jobs import JobTable  # noqa: E402

FIGURES = {
    "cpu_ratio": 0.12,
    "load_1m": 0.5,
    "load_5m": 0.4,
    "load_15m": 0.3,
    "memory_used_bytes": 1.5e9,
    "memory_total_bytes": 8e9,
    "disk_used_bytes": 2e10,
    "disk_total_bytes": 6.4e10,
    "temperature_celsius": 51.0,
    "uptime_seconds": 86400.0,
    "jobs_running": 0,
}


async def connect(
    reactor: Any, cluster: Cluster, names: list[str], heartbeat: float,
    jobs: type[JobTable] = JobTable,
) -> list[WorkerFactory]:
    """Workers C{names} joined to the cluster's master, one after the other."""
    secret = read_secret(cluster.secret_file)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", cluster.worker_port)
    factories = []
    for name in names:
        factory = WorkerFactory(
            reactor, name, secret, jobs(reactor, name, 5.0), heartbeat=heartbeat,
            collect=lambda disk, running: defer.succeed(dict(FIGURES)),
        )
        connection = await endpoint.connect(factory)
        await connection.joined
        factories.append(factory)
    return factories


def disconnect(factories: list[WorkerFactory]) -> None:
    for factory in factories:
        if factory.connection is not None:
            factory.connection.close()


def with_master(measure: Callable[[Any, Cluster], Awaitable[None]], *master_args: str) -> None:
    """Start a master with C{master_args}, run C{measure(reactor, cluster)} in a reactor, stop it."""
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory))
        try:
            cluster.start_master(*master_args)
            task.react(lambda reactor: defer.ensureDeferred(measure(reactor, cluster)))
        except SystemExit as e:
            if e.code:
                raise
        finally:
            cluster.stop()
