"""
Measure pcci on this machine: start a master and two workers on loopback
and print, from one run:

- the latency of a one-job `true` pool, in one round trip (POST /job?wait,
  on a kept-alive connection and on a new one each time, as curl does) and
  in two (POST, then GET ?wait), as p50/p95 and as ratios to a local
  `subprocess.run(["true"])` measured alongside;
- pools per second with 20 concurrent clients, checking none is lost, with
  pools stored on disk (the default) and again with `--db :memory:`;
- output throughput of `seq 1 2000000` through worker and master, to the
  pool's end and to its kept output fetched by the client;
- the master's memory (RSS) after all that.

Run it from the repository with pcci installed:  python bench/bench.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster


class Client:
    """One keep-alive HTTP connection to the master."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body)
        self.connection.request(method, path, data, self.headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def run_waiting(self, cmd: str, worker: str) -> dict:
        """One round trip: POST /job?wait answers with the ended pool."""
        status, answer = self.call("POST", "/job?wait=60", {"cmd": cmd, "workers": [worker]})
        assert status == 200, answer
        return answer["pool"]

    def run(self, cmd: str, worker: str) -> dict:
        status, answer = self.call("POST", "/job", {"cmd": cmd, "workers": [worker]})
        assert status == 200, answer
        while True:
            status, pool = self.call("GET", f"/pools/{answer['pool_id']}?wait=60")
            assert status == 200, pool
            if pool["status"] is not None:
                return pool


def at_once(work: Callable[[int], None], count: int) -> float:
    """Run C{work(0)} to C{work(count - 1)}, each in its own thread, all at
    once; the seconds until the last one finished."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency(client: Client, count: int, port: int, token: str) -> None:
    def new_connection() -> int:
        fresh = Client(port, token)
        try:
            return fresh.run_waiting("true", "w1")["status"]
        finally:
            fresh.connection.close()

    for _ in range(20):  # warm up both sides
        client.run("true", "w1")
        client.run_waiting("true", "w1")
        subprocess.run(["true"])
    times: dict[str, list[float]] = {"local": [], "one": [], "new": [], "two": []}
    ways = {
        "local": lambda: subprocess.run(["true"]).returncode,
        "one": lambda: client.run_waiting("true", "w1")["status"],
        "new": new_connection,
        "two": lambda: client.run("true", "w1")["status"],
    }
    for _ in range(count):  # interleaved, so noise falls on all three alike
        for name, way in ways.items():
            started = time.perf_counter()
            assert way() == 0
            times[name].append(time.perf_counter() - started)
    local = statistics.median(times["local"])
    print(f"latency of a `true` pool on one worker ({count} runs each):")
    print(f"  local subprocess.run(['true']) p50 {local * 1000:.2f} ms")
    for name, label in (
        ("one", "POST /job?wait"),
        ("new", "POST /job?wait, a new connection each"),
        ("two", "POST, then GET ?wait"),
    ):
        p50, p95 = statistics.median(times[name]), percentile(times[name], 0.95)
        print(f"  {label}: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms,"
              f" p50 / local p50 {p50 / local:.2f}x")


def throughput_of_pools(port: int, token: str, clients: int, per_client: int, label: str = "") -> float:
    ids: list[str] = []
    failures: list[object] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        client = Client(port, token)
        for i in range(per_client):
            pool = client.run("true", "w1" if (n + i) % 2 else "w2")
            with lock:
                ids.append(pool["id"])
                if pool["status"] != 0:
                    failures.append(pool)

    elapsed = at_once(work, clients)
    total = clients * per_client
    print(f"pools with {clients} concurrent clients ({total} pools, POST + wait each){label}:")
    print(f"  {total / elapsed:.0f} pools/s; {len(set(ids))} unique ids of {total};"
          f" {len(failures)} failed")
    return total / elapsed


def throughput_of_output(client: Client, lines: int, runs: int = 5) -> None:
    """
    Median of C{runs} pools of C{seq 1 LINES}: to the pool's end (all its
    output through worker and master, GET ?wait answered without it), and
    to its kept output fetched and parsed by the client as JSON.
    """
    expected = sum(len(f"{i}\n") for i in range(1, lines + 1)) / 1e6
    to_end, to_fetched = [], []
    for _ in range(runs):
        started = time.perf_counter()
        status, answer = client.call("POST", "/job", {"cmd": f"seq 1 {lines}", "workers": ["w1"]})
        assert status == 200, answer
        pool: dict = {"status": None}
        while pool["status"] is None:
            status, pool = client.call("GET", f"/pools/{answer['pool_id']}?wait=60&results=false")
            assert status == 200, pool
        to_end.append(time.perf_counter() - started)
        status, pool = client.call("GET", f"/pools/{answer['pool_id']}")
        to_fetched.append(time.perf_counter() - started)
        kept = len(pool["jobs"][0]["result"]) / 1e6
    print(f"output of `seq 1 {lines}` ({expected:.1f} MB) through worker and master, median of {runs}:")
    print(f"  {expected / statistics.median(to_end):.1f} MB/s to the pool's end;"
          f" {expected / statistics.median(to_fetched):.1f} MB/s with its kept {kept:.1f} MB"
          " fetched and parsed as JSON (the rest is dropped by --max-output)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="latency samples")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pools", type=int, default=1000, help="pools for the pools/s figure")
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--master", nargs="*", default=[], help="more options for the first master")
    parser.add_argument("--postgres", action="store_true",
                        help="also pools/s with PostgreSQL as the store (a throwaway server)")
    parser.add_argument("--worker-auth", choices=["identity", "secret"], default="identity",
                        help="workers over mutual TLS with identities (the default), or plain TCP with the secret")
    args = parser.parse_args()
    print(f"workers by {args.worker_auth}")
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory), worker_auth=args.worker_auth)
        try:
            cluster.start_master("--retention", "5", *args.master)
            cluster.start_worker("w1")
            cluster.start_worker("w2")
            master = psutil.Process(cluster.master.pid)
            client = Client(cluster.api_port, cluster.token)
            latency(client, args.runs, cluster.api_port, cluster.token)
            stored = throughput_of_pools(
                cluster.api_port, cluster.token, args.clients, args.pools // args.clients,
                ", stored in SQLite",
            )
            throughput_of_output(client, args.lines)
            print(f"master RSS at the end: {master.memory_info().rss / 2**20:.0f} MiB")
        finally:
            cluster.stop()
        in_memory = pools_per_second(Path(directory) / "memory", ":memory:", args)
        print(f"stored / in memory: {stored / in_memory:.2f}")
        if args.postgres:
            from postgres import Postgres  # the tests' throwaway server

            server = Postgres()
            try:
                in_postgres = pools_per_second(Path(directory) / "pg", server.url, args)
            finally:
                server.destroy()
            print(f"PostgreSQL / SQLite: {in_postgres / stored:.2f}")


def pools_per_second(directory: Path, db: str, args: argparse.Namespace) -> float:
    """Pools/s of a master with --db DB and two workers."""
    cluster = Cluster(directory)
    try:
        cluster.start_master("--retention", "5", "--db", db)
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        label = ", in PostgreSQL" if db.startswith("postgres") else f", --db {db}"
        return throughput_of_pools(
            cluster.api_port, cluster.token, args.clients, args.pools // args.clients, label
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
