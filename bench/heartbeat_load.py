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
import time
from pathlib import Path

import psutil
from twisted.internet import task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulated import Cluster, connect, with_master
from swarm import disconnect


async def simulate(reactor, args: argparse.Namespace, cluster: Cluster) -> None:
    names = [f"sim{i:04d}" for i in range(args.workers)]
    factories = await connect(reactor, cluster, names, heartbeat=args.interval)
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
    print(
        f"master CPU over {wall_after - wall_before:.0f} s: {100 * busy / (wall_after - wall_before):.1f}% of one core"
    )
    print(f"master RSS: {peak_rss / 2**20:.0f} MiB at most in the window")
    print(f"workers still online: {online} of {args.workers}; history of one: {history} heartbeats")
    disconnect(factories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    with_master(lambda reactor, cluster: simulate(reactor, args, cluster), "--max-connections", str(args.workers + 10))


if __name__ == "__main__":
    main()
