"""
What mutual TLS costs, against plain TCP, measured in one run on one master
(`--worker-auth both`) with two workers: `tls`, joined with a token and
connected by its identity, and `plain`, holding the cluster secret.  Calls
alternate between them, so both see the same machine at the same moment:

- the latency of a one-job `true` pool (POST /job?wait), p50 and p95, and
  the ratio of the p50s;
- output throughput: `seq 1 N` to the pool's end, through each worker.

    python bench/tls.py --runs 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Client, percentile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500, help="latency samples per worker")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of output per throughput sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory), worker_auth="both")
        try:
            cluster.start_master()
            cluster.start_worker("plain")
            cluster._start("tls", "pcci-worker", "--join", f"tls:127.0.0.1:{cluster.worker_port}",
                           "--token", cluster.join_token("tls"), "--name", "tls",
                           "--state-dir", str(Path(directory) / "tls-state"))
            cluster.wait_for_workers("tls")
            auth = {w["id"]: w["auth"] for w in cluster.request("GET", "/workers")[1]}
            assert auth == {"plain": "secret", "tls": "identity"}, auth
            client = Client(cluster.api_port, cluster.token or "")
            took: dict[str, list[float]] = {"plain": [], "tls": []}
            for worker in ("plain", "tls"):  # warm up
                client.run_waiting("true", worker)
            for _ in range(args.runs):
                for worker in ("plain", "tls"):
                    started = time.perf_counter()
                    client.run_waiting("true", worker)
                    took[worker].append(time.perf_counter() - started)
            print(f"latency of a `true` pool on one worker, POST /job?wait ({args.runs} runs each, alternating):")
            for worker in ("plain", "tls"):
                print(f"  {worker:5}: p50 {statistics.median(took[worker]) * 1000:.2f} ms,"
                      f" p95 {percentile(took[worker], 0.95) * 1000:.2f} ms")
            ratio = statistics.median(took["tls"]) / statistics.median(took["plain"])
            print(f"  mutual TLS / plain TCP, p50: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
            size = sum(len(f"{n}\n") for n in range(1, args.lines + 1)) / 1e6
            speeds: dict[str, list[float]] = {"plain": [], "tls": []}
            for _ in range(3):
                for worker in ("plain", "tls"):
                    started = time.perf_counter()
                    pool = client.run_waiting(f"seq 1 {args.lines}", worker)
                    assert pool["state"] == "ok", pool
                    speeds[worker].append(size / (time.perf_counter() - started))
            print(f"output of seq 1 {args.lines} ({size:.1f} MB) to the pool's end, median of 3:")
            for worker in ("plain", "tls"):
                print(f"  {worker:5}: {statistics.median(speeds[worker]):.1f} MB/s")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
