"""
Reconnection after a master restart: N simulated workers, each with its
identity over mutual TLS (or the cluster secret over plain TCP) and the
real worker's dialer (backoff 0.5 s doubling to 30 s, with jitter), all
dropped at once when the master restarts; the time until every one is
back in GET /workers.

    python bench/reconnect.py --workers 10000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import treq
from twisted.internet import task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulated import Cluster, connect, with_master

from pcci.worker.dialer import MasterDialer
from pcci.worker.joining import IdentityEndpoint
from pcci.worker.service import RETRY_POLICY

#: Why the simulated workers' dials failed, and how often.
FAILED: Counter[str] = Counter()


class CountingDialer(MasterDialer):
    """The worker's dialer, counting why its dials fail (each failure backs it off)."""

    def _failed(self, failure: Any) -> None:
        FAILED[failure.getErrorMessage()[:80]] += 1
        super()._failed(failure)


async def online(cluster: Cluster) -> int:
    response = await treq.get(
        f"http://127.0.0.1:{cluster.api_port}/workers", headers={"Authorization": f"Bearer {cluster.token}"}
    )
    return len(await response.json())


async def measure(reactor: Any, args: argparse.Namespace, cluster: Cluster, master_args: tuple[str, ...]) -> None:
    names = [f"r-{i:05d}" for i in range(args.workers)]
    began = time.perf_counter()
    factories = await connect(reactor, cluster, names, heartbeat=30)
    print(f"{len(names)} simulated workers joined in {time.perf_counter() - began:.1f} s")
    # From now on each dials as a worker does: its own dialer, with backoff.
    plain = TCP4ClientEndpoint(reactor, "127.0.0.1", cluster.worker_port)
    for factory in factories:
        endpoint = plain if factory.identity is None else IdentityEndpoint(
            reactor, f"tcp:127.0.0.1:{cluster.worker_port}", lambda f=factory: f.identity
        )
        dialer = CountingDialer(reactor, [endpoint], factory, RETRY_POLICY)
        dialer.running = True  # connected already: it redials when the connection goes
    assert cluster.master is not None
    said: Counter[str] = Counter()  # what the simulated workers logged, warnings and up
    globalLogPublisher.addObserver(
        lambda event: said.update([formatEvent(event)[:90]]) if event["log_level"] >= LogLevel.warn else None
    )
    # Blocking calls, in a thread: the simulated workers go on meanwhile.
    stopping = time.perf_counter()
    await threads.deferToThread(cluster.master.stop)
    print(f"  the master stopped in {time.perf_counter() - stopping:.1f} s")
    began = time.perf_counter()
    await threads.deferToThread(cluster.start_master, *master_args)
    restarted = time.perf_counter() - began
    counts = []
    while True:
        count = await online(cluster)
        counts.append((time.perf_counter() - began, count))
        if count >= len(names) or time.perf_counter() - began > args.give_up:
            break
        await task.deferLater(reactor, 1.0, lambda: None)
    took = time.perf_counter() - began
    print(f"  master restarted in {restarted:.1f} s; {count} of {len(names)} workers back {took:.1f} s after"
          f" its start began (by {cluster.worker_auth})")
    for at, seen in counts[:: max(1, len(counts) // 8)]:
        print(f"    {at:5.1f} s: {seen}")
    log = cluster.master.log_text().splitlines()
    warned = Counter(line.split("] ", 1)[-1][:70] for line in log if "#warn]" in line or "#error]" in line)
    for what, count in warned.most_common(5):
        print(f"    the master warned {count} times: {what}")
    for why, count in FAILED.most_common(5):
        print(f"    dials failed {count} times: {why}")
    for what, count in said.most_common(5):
        print(f"    workers said {count} times: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--give-up", type=float, default=180.0, help="seconds")
    parser.add_argument("--worker-auth", choices=["identity", "secret"], default="identity")
    args = parser.parse_args()
    arguments = ("--max-connections", str(args.workers + 10), "--max-workers", str(args.workers))

    with_master(lambda reactor, cluster: measure(reactor, args, cluster, arguments), *arguments,
                worker_auth=args.worker_auth)


if __name__ == "__main__":
    main()
