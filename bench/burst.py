"""
A burst: N `true` pools to one worker from C concurrent clients, all
submitted as fast as the clients can, then awaited.  The worker runs at most
--max-jobs at once and queues the rest; it must keep heartbeating, so no job
may end `lost`.  Prints the time the burst took and the jobs' states.

    python bench/burst.py --pools 10000 --clients 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster

from bench import Client, at_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pools", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory))
        try:
            cluster.start_master("--max-pools", str(args.pools))
            cluster.start_worker("w1")
            ids: list[str] = []
            states: Counter[str] = Counter()
            lock = threading.Lock()
            per_client = args.pools // args.clients

            def submit(n: int) -> None:
                client = Client(cluster.api_port, cluster.token)
                mine = []
                for _ in range(per_client):
                    status, answer = client.call(
                        "POST", "/job", {"cmd": "true", "workers": ["w1"]}
                    )
                    assert status == 200, answer
                    mine.append(answer["pool_id"])
                for pool_id in mine:
                    while True:
                        status, pool = client.call("GET", f"/pools/{pool_id}?wait=60")
                        if pool["status"] is not None:
                            break
                    with lock:
                        states.update(job["state"] for job in pool["jobs"])
                with lock:
                    ids.extend(mine)

            elapsed = at_once(submit, args.clients)
            total = per_client * args.clients
            print(f"burst of {total} `true` pools to one worker from {args.clients} clients:")
            print(f"  done in {elapsed:.1f} s ({total / elapsed:.0f} pools/s)")
            print(f"  job states: {dict(states)}; lost: {states['lost']}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
