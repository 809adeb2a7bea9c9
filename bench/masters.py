"""
Several masters on one PostgreSQL (a throwaway server, as the tests start):
print, from one run,

- pools/s with --clients clients on one master, stored in SQLite and in
  PostgreSQL, and the ratio;
- the same load spread over two masters on PostgreSQL (half the clients
  on each), as pools started on one master for workers the other holds too;
- failover: --workers simulated workers (pcci's own worker connection and
  dialer, in one process, listing both masters) spread over two masters;
  SIGKILL the master holding more of them, and time how long each takes
  to be online on the survivor (p50, p95, the last).

    python bench/masters.py --workers 100
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Cluster, poll
from postgres import Postgres

from bench import Client, at_once


def pools_per_second(masters: list[Cluster], clients: int, pools: int, label: str) -> float:
    """Pools/s of C{clients} spread over C{masters}, each pool on w1 or w2 (POST, then wait)."""
    per_client = pools // clients
    failures: list[object] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        master = masters[n % len(masters)]
        client = Client(master.api_port, master.token or "")
        for i in range(per_client):
            pool = client.run("true", "w1" if (n + i) % 2 else "w2")
            if pool["status"] != 0:
                with lock:
                    failures.append(pool)

    elapsed = at_once(work, clients)
    rate = clients * per_client / elapsed
    print(f"  {rate:.0f} pools/s, {label} ({clients * per_client} pools, {len(failures)} failed)")
    return rate


def start_masters(directory: Path, db: str, count: int) -> list[Cluster]:
    masters = [Cluster(directory / f"m{i + 1}") for i in range(count)]
    for i, master in enumerate(masters):
        if i:
            shutil.copytree(masters[0].state_dir, master.state_dir)
        master.start_master("--retention", "5", "--db", db, "--name", f"m{i + 1}",
                            "--max-connections", "1000")
    return masters


def stop(masters: list[Cluster]) -> None:
    for master in reversed(masters):
        master.stop()


def load(directory: Path, server: Postgres, args: argparse.Namespace) -> None:
    print(f"pools/s with {args.clients} concurrent clients:")

    def one_master(name: str, db: str, label: str) -> float:
        one = start_masters(directory / name, db, 1)
        try:
            one[0].start_worker("w1")
            one[0].start_worker("w2")
            return pools_per_second(one, args.clients, args.pools, label)
        finally:
            stop(one)

    sqlite = one_master("sqlite", str(directory / "pcci.db"), "one master, SQLite")
    postgres = one_master("pg1", server.url, "one master, PostgreSQL")
    two = start_masters(directory / "pg2", server.url, 2)
    try:
        two[0].start_worker("w1")
        two[1].start_worker("w2")
        for master in two:
            master.wait_for_workers("w1", "w2")
        spread = pools_per_second(
            two, args.clients, args.pools, "two masters, PostgreSQL, w1 on m1 and w2 on m2"
        )
    finally:
        stop(two)
    print(f"  PostgreSQL / SQLite: {postgres / sqlite:.2f}; two masters / one: {spread / postgres:.2f}")


def failover(directory: Path, server: Postgres, args: argparse.Namespace) -> None:
    masters = start_masters(directory / "failover", server.url, 2)
    simulator = subprocess.Popen(
        [sys.executable, __file__, "--simulate", str(args.workers),
         "--secret-file", str(masters[0].secret_file),
         *(f"tcp:127.0.0.1:{m.worker_port}" for m in masters)],
    )
    try:
        names = {f"sim{i:04d}" for i in range(args.workers)}

        def held() -> dict[str, str]:
            return {w["id"]: w["master"] for w in masters[1].request("GET", "/workers")[1]
                    if w["online"]}

        poll(lambda: set(held()) >= names, timeout=60, what="every simulated worker")
        before = held()
        counts = {m: list(before.values()).count(m) for m in ("m1", "m2")}
        victim = 0 if counts["m1"] >= counts["m2"] else 1
        survivor = masters[1 - victim]
        moving = {name for name, master in before.items() if master == f"m{victim + 1}"}
        print(f"failover of {args.workers} simulated workers ({counts['m1']} on m1,"
              f" {counts['m2']} on m2): SIGKILL m{victim + 1}")
        assert masters[victim].master is not None
        killed = time.monotonic()
        masters[victim].master.signal(signal.SIGKILL)
        moved: dict[str, float] = {}
        deadline = killed + 60
        while len(moved) < len(moving) and time.monotonic() < deadline:
            now = time.monotonic()
            for w in survivor.request("GET", "/workers")[1]:
                if w["id"] in moving and w["online"] and w["master"] == f"m{2 - victim}":
                    moved.setdefault(w["id"], now - killed)
            time.sleep(0.05)
        times = sorted(moved.values())
        print(f"  online on the survivor: {len(moved)} of {len(moving)};"
              f" p50 {statistics.median(times):.2f} s,"
              f" p95 {times[int(len(times) * 0.95) - 1]:.2f} s, last {times[-1]:.2f} s")
    finally:
        simulator.terminate()
        simulator.wait()
        stop(masters)


def simulate(count: int, secret_file: str, endpoints: list[str]) -> None:
    """Run C{count} workers' connections in this process, each listing every master."""
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import clientFromString

    from pcci.auth import read_secret
    from pcci.worker.connection import WorkerFactory
    from pcci.worker.dialer import MasterDialer
    from pcci.worker.jobs import JobTable
    from pcci.worker.service import RETRY_POLICY
    from pcci.worker.settings import WorkerSettings

    secret = read_secret(Path(secret_file))
    dials = [clientFromString(reactor, endpoint) for endpoint in endpoints]
    figures = {"cpu_ratio": 0.1, "load_1m": 0.5}
    for i in range(count):
        name = f"sim{i:04d}"
        settings = WorkerSettings(name, secret, heartbeat=0.5)
        factory = WorkerFactory(
            reactor, settings, JobTable(reactor, settings), collect=lambda disk, jobs: defer.succeed(dict(figures)),
        )
        MasterDialer(reactor, dials, factory, RETRY_POLICY).startService()
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=100, help="simulated workers to fail over")
    parser.add_argument("--simulate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    parser.add_argument("endpoints", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        simulate(args.simulate, args.secret_file, args.endpoints)
        return
    server = Postgres()
    try:
        with tempfile.TemporaryDirectory() as directory:
            load(Path(directory), server, args)
            failover(Path(directory), server, args)
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
