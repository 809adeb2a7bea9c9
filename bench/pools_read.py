"""
The master under heavy reads: 25 pools of 2 jobs, each job at the 4 MiB
output cap, then 20 clients reading `GET /pools` (with every output) at
once; first 20 that read as fast as they can, then 20 that send the
request and never read the answer.

Meanwhile a probe asks `GET /health` every 50 ms: its answer time is the
reactor's lag, seen from outside. Printed, from one run:

- the time each full read took, and the bytes it got;
- the probe's p50, p99 and worst answer time during each phase;
- the master's RSS before the reads and at its peak during each phase;
- whether any worker was declared lost (none may be).

Run it from the repository with pcci installed:  python bench/pools_read.py
"""

from __future__ import annotations

import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster

from bench import at_once

POOLS = 25
READERS = 20
#: About 5.6 MB of base64 a job: over the 4 MiB cap, so each job holds 4 MiB.
CMD = "sh -c 'head -c 4200000 /dev/urandom | base64'"
MiB = 1024 * 1024


class Probe(threading.Thread):
    """Asks /health every 50 ms and keeps each answer's time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.times: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            connection.request("GET", "/health")
            connection.getresponse().read()
            connection.close()
            self.times.append(time.monotonic() - started)
            self.done.wait(0.05)


class PeakMemory(threading.Thread):
    """Samples a process's RSS every 20 ms and keeps the highest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.done.wait(0.02)


def measure(cluster: Cluster, phase: str, work) -> None:
    probe = Probe(cluster.api_port)
    memory = PeakMemory(cluster.master.pid)
    probe.start()
    memory.start()
    try:
        work()
    finally:
        probe.done.set()
        memory.done.set()
        probe.join()
        memory.join()
    lag = sorted(probe.times)
    print(
        f"{phase}: /health p50 {statistics.median(lag) * 1000:.1f} ms,"
        f" p99 {lag[int(0.99 * (len(lag) - 1))] * 1000:.1f} ms, worst {lag[-1] * 1000:.0f} ms"
        f" ({len(lag)} probes); master RSS peak {memory.peak / MiB:.0f} MiB"
    )


def full_reads(cluster: Cluster) -> None:
    took: list[float] = []
    sizes: list[int] = []

    def read(_: int) -> None:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", cluster.api_port, timeout=300)
        connection.request("GET", "/pools?limit=100", headers={"Authorization": f"Bearer {cluster.token}"})
        response = connection.getresponse()
        size = 0
        while chunk := response.read(MiB):
            size += len(chunk)
        connection.close()
        took.append(time.monotonic() - started)
        sizes.append(size)

    at_once(read, READERS)
    print(
        f"{READERS} full reads at once: each {statistics.median(sizes) / MiB:.0f} MiB,"
        f" median {statistics.median(took):.2f} s, slowest {max(took):.2f} s"
    )


def unread(cluster: Cluster) -> None:
    """Twenty requests whose answers are never read, held 5 s."""
    sockets = []
    request = (
        f"GET /pools?limit=100 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {cluster.token}\r\n\r\n"
    ).encode()
    for _ in range(READERS):
        sock = socket.create_connection(("127.0.0.1", cluster.api_port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
        sockets.append(sock)
    time.sleep(5)  # a benchmark's hold, not a test's wait
    for sock in sockets:
        sock.close()
    print(f"{READERS} unread answers held 5 s")


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory))
        try:
            cluster.start_master()
            cluster.start_worker("w1")
            cluster.start_worker("w2")
            started = time.monotonic()
            for _ in range(POOLS):
                pool = cluster.run(CMD, ["w1", "w2"], timeout=120)
                assert pool["status"] == 0, pool
            print(f"{POOLS} pools of 2 jobs at the 4 MiB cap made in {time.monotonic() - started:.1f} s")
            rss = psutil.Process(cluster.master.pid).memory_info().rss
            print(f"master RSS before the reads: {rss / MiB:.0f} MiB")
            measure(cluster, "full reads", lambda: full_reads(cluster))
            measure(cluster, "unread answers", lambda: unread(cluster))
            code, workers = cluster.request("GET", "/workers?all=true")
            lost = [w["id"] for w in workers if not w["online"]]
            print(f"workers lost: {len(lost)} {lost or ''}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
