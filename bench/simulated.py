"""
Simulated workers for the benchmarks (tests/swarm.py, many from this one
process over the real wire protocol) joined to a master this starts.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import swarm
from cluster import Cluster

from pcci.auth import read_secret
from pcci.worker.connection import WorkerFactory
from pcci.worker.jobs import JobTable


async def connect(
    reactor: Any, cluster: Cluster, names: list[str], heartbeat: float,
    jobs: type[JobTable] = JobTable, facts: bool = True,
) -> list[WorkerFactory]:
    """
    Workers C{names} joined to the cluster's master: with the cluster
    secret, or (C{worker_auth} identity) each with its identity, got with a
    join token as a real worker gets it, over mutual TLS.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", cluster.worker_port)
    if cluster.worker_auth != "identity":
        return await swarm.connect(
            reactor, endpoint, read_secret(cluster.secret_file), names, heartbeat, jobs, facts=facts,
        )
    token = cluster.join_token("*", uses=len(names), ttl=3600)
    began = time.perf_counter()
    made = await swarm.identities(reactor, f"tls:127.0.0.1:{cluster.worker_port}", token, names)
    print(f"  {len(names)} identities joined in {time.perf_counter() - began:.1f} s")
    return await swarm.connect(reactor, endpoint, None, names, heartbeat, jobs, identities=made, facts=facts)


def with_master(
    measure: Callable[[Any, Cluster], Awaitable[None]], *master_args: str, worker_auth: str = "secret"
) -> None:
    """Start a master with C{master_args}, run C{measure(reactor, cluster)} in a reactor, stop it."""
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory), worker_auth=worker_auth)
        try:
            cluster.start_master(*master_args)
            task.react(lambda reactor: defer.ensureDeferred(measure(reactor, cluster)))
        except SystemExit as e:
            if e.code:
                raise
        finally:
            cluster.stop()
