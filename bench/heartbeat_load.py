"""
Master cost of many heartbeating workers.

Starts a real master, then simulates N workers from this one process over
the real wire protocol (pcci's own worker connection, handshake included,
with canned figures so the simulator's own psutil calls do not count), each
heartbeating every --interval seconds.  After a warm-up it measures, over a
window, the master's CPU (percent of one core) and its memory (RSS), and
checks that no simulated worker was declared lost.

    python bench/heartbeat_load.py --workers 200 --interval 1 --window 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
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


async def simulate(reactor, args: argparse.Namespace, cluster: Cluster) -> None:
    secret = read_secret(cluster.secret_file)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", cluster.worker_port)
    factories = []
    for i in range(args.workers):
        name = f"sim{i:04d}"
        factory = WorkerFactory(
            reactor, name, secret, JobTable(reactor, name, 5.0), heartbeat=args.interval,
            collect=lambda disk, jobs: defer.succeed(dict(FIGURES)),
        )
        factories.append(factory)
        connection = await endpoint.connect(factory)
        await connection.joined
    master = psutil.Process(cluster.master.pid)
    joined = len(cluster.request("GET", "/workers")[1])
    print(f"{joined} simulated workers joined; heartbeat every {args.interval:g} s")
    await task.deferLater(reactor, args.warmup, lambda: None)
    cpu_before, wall_before = master.cpu_times(), time.monotonic()
    peak_rss = 0
    for _ in range(int(args.window)):
        await task.deferLater(reactor, 1, lambda: None)
        peak_rss = max(peak_rss, master.memory_info().rss)
    cpu_after, wall_after = master.cpu_times(), time.monotonic()
    busy = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    online = len(cluster.request("GET", "/workers")[1])
    history = len(cluster.request("GET", "/workers/sim0000")[1]["history"]["time"])
    print(f"master CPU over {wall_after - wall_before:.0f} s: {100 * busy / (wall_after - wall_before):.1f}% of one core")
    print(f"master RSS: {peak_rss / 2**20:.0f} MiB at most in the window")
    print(f"workers still online: {online} of {args.workers}; history of one: {history} heartbeats")
    for factory in factories:
        if factory.connection is not None:
            factory.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory))
        try:
            cluster.start_master("--max-connections", str(args.workers + 10))
            task.react(lambda reactor: defer.ensureDeferred(simulate(reactor, args, cluster)))
        except SystemExit as e:
            if e.code:
                raise
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
