"""
Fan-out: one `true` pool on N simulated workers, from POST /job?wait to
its answer, for each N given.

A real master; the workers are simulated in this one process over the real
wire protocol (pcci's own worker connection and handshake), with jobs that
end at once with status 0, so the figure is the master's and the wire's,
not 10,000 processes'.  Each size is timed --runs times; the median and
the worst are printed.  The workers connect as a new master wants them:
each with its identity (joined with a token), over mutual TLS;
--worker-auth secret measures plain TCP and the cluster secret instead.

    python bench/fanout.py --workers 1000 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import treq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulated import Cluster, connect, with_master
from swarm import InstantJobs, disconnect


async def fan_out(reactor: Any, cluster: Cluster, prefix: str, count: int) -> float:
    headers = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"}
    body = json.dumps({"cmd": "true", "workers": [f"{prefix}*"]}).encode()
    started = time.perf_counter()
    response = await treq.post(
        f"http://127.0.0.1:{cluster.api_port}/job?wait=60&results=false", body, headers=headers,
    )
    answer = await response.json()
    took = time.perf_counter() - started
    assert "pool" in answer, answer
    pool = answer["pool"]
    assert response.code == 200 and pool["counts"] == {"ok": count}, (response.code, pool.get("counts"))
    return took


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def measure(reactor: Any, args: argparse.Namespace, cluster: Cluster) -> None:
    assert cluster.master is not None
    master = psutil.Process(cluster.master.pid)
    connected = 0
    for count in sorted(args.workers):
        prefix = f"s{count}-"
        began = time.perf_counter()
        names = [f"{prefix}{i:05d}" for i in range(count)]
        factories = await connect(reactor, cluster, names, heartbeat=60, jobs=InstantJobs)
        connected += count
        print(f"{count} simulated workers joined in {time.perf_counter() - began:.1f} s")
        await fan_out(reactor, cluster, prefix, count)  # warm up
        master_before, here_before = cpu_seconds(master), time.process_time()
        times = [await fan_out(reactor, cluster, prefix, count) for _ in range(args.runs)]
        master_cpu = (cpu_seconds(master) - master_before) / args.runs
        here_cpu = (time.process_time() - here_before) / args.runs
        print(f"  one `true` pool on {count} workers, POST /job?wait to the answer:"
              f" median {statistics.median(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms"
              f" ({args.runs} runs); CPU per pool: master {master_cpu * 1000:.0f} ms,"
              f" simulated workers and client {here_cpu * 1000:.0f} ms")
        disconnect(factories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--worker-auth", choices=["identity", "secret"], default="identity",
                        help="workers over mutual TLS with identities (the default), or plain TCP with the secret")
    args = parser.parse_args()
    print(f"workers by {args.worker_auth}")
    with_master(lambda reactor, cluster: measure(reactor, args, cluster),
                "--max-connections", str(sum(args.workers) + 10), "--max-workers", str(max(args.workers)),
                worker_auth=args.worker_auth)

if __name__ == "__main__":
    main()
