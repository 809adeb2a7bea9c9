"""
End to end: nothing is left running, whatever a job or its worker does;
limits that let a whole lab join.  Real daemons, real process trees.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import time

import pytest
from cluster import DEADLINE, TWISTD, Cluster, poll, processes_with

from pcci.auth import proof, read_secret
from pcci.wire import PROTOCOL_VERSION, TERMINATOR, encode

pytestmark = pytest.mark.e2e


def only_job(pool: dict) -> dict:
    (job,) = pool["jobs"]
    return job


def gone(marker: str) -> bool:
    return not processes_with(f"sleep {marker}")


def test_kill_reaches_a_daemonised_descendant(cluster: Cluster, marker: str) -> None:
    pool_id = cluster.submit(f"sh -c '(setsid sleep {marker} &); exec sleep {marker}'", ["w1"])
    poll(lambda: len(processes_with(f"sleep {marker}")) == 2, what="both sleeps")
    cluster.request("PUT", f"/kill/{pool_id}")
    pool = cluster.wait_pool(pool_id)
    assert only_job(pool)["state"] == "killed"
    poll(lambda: gone(marker), what="the daemonised sleep to die")


def test_what_a_command_leaves_running_is_killed_when_it_ends(cluster: Cluster, marker: str) -> None:
    # Output redirected: the pipes close at once, the sleep lives on.
    pool = cluster.run(f"sh -c 'sleep {marker} >/dev/null 2>&1 & echo started'", ["w1"])
    job = only_job(pool)
    assert (job["status"], job["state"]) == (0, "ok")
    assert job["result"].startswith("started\n") and "left running" in job["result"]
    assert gone(marker)
    # Holding the pipes, escaped from the group: found by its marker.
    pool = cluster.run(f"sh -c '(setsid sleep {marker} &); echo done'", ["w2"])
    assert only_job(pool)["status"] == 0
    poll(lambda: gone(marker), what="the escaped sleep to die")


def test_a_job_reading_stdin_gets_end_of_file(cluster: Cluster) -> None:
    pool = cluster.run("cat", ["w1"], timeout=10)
    assert (only_job(pool)["status"], only_job(pool)["result"]) == (0, "")


def test_a_worker_killed_hard_cleans_up_at_its_next_start(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master()
    worker = own_cluster.start_worker("phoenix")
    own_cluster.submit(f"sh -c '(setsid sleep {marker} &); exec sleep {marker}'", ["phoenix"])
    poll(lambda: len(processes_with(f"sleep {marker}")) == 2, what="both sleeps")
    poll(lambda: (own_cluster.directory / "worker-state" / "worker-phoenix.jobs.json").exists())
    worker.signal(signal.SIGKILL)
    worker.process.wait()
    assert len(processes_with(f"sleep {marker}")) == 2  # orphaned, still running
    own_cluster.start_worker("phoenix")
    poll(lambda: gone(marker), what="the restarted worker to kill the leftovers")
    assert "left running by this worker's last run" in own_cluster.logs()


def test_sighup_stops_a_worker_like_sigterm(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master()
    worker = own_cluster.start_worker("hup", "--kill-grace", "1")
    pool_id = own_cluster.submit(f"sleep {marker}", ["hup"])
    poll(lambda: processes_with(f"sleep {marker}"), what="the job")
    worker.signal(signal.SIGHUP)
    assert worker.process.wait(timeout=15) == 0
    assert gone(marker)
    assert own_cluster.wait_pool(pool_id)["status"] == 1


def test_an_invalid_worker_name_is_refused_at_start(tmp_path) -> None:
    result = subprocess.run(
        [TWISTD, "-n", "pcci-worker", "--no-auth", "--name", "my worker",
         "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "invalid worker name 'my worker'" in result.stdout + result.stderr
    assert "letters, digits" in result.stdout + result.stderr


def join(cluster: Cluster, name: str) -> socket.socket:
    """A worker's handshake over a raw socket; returns the joined connection."""
    secret = read_secret(cluster.secret_file)
    sock = socket.create_connection(("127.0.0.1", cluster.worker_port), timeout=10)
    nonce = "w" * 32
    sock.sendall(encode({"code": "hello", "name": name, "version": PROTOCOL_VERSION,
                         "nonce": nonce, "heartbeat": 3600}))
    challenge = json.loads(read_frame(sock))
    sock.sendall(encode({"code": "auth", "proof": proof(
        secret, "worker", name, nonce, challenge["nonce"])}))
    assert json.loads(read_frame(sock))["code"] == "welcome"
    return sock


def read_frame(sock: socket.socket) -> bytes:
    data = b""
    while TERMINATOR not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return data[: data.index(TERMINATOR)]


def test_a_hundred_workers_join_from_one_address(own_cluster: Cluster) -> None:
    own_cluster.start_master("--max-connections", "8")
    sockets = [join(own_cluster, f"node{i:03d}") for i in range(100)]
    try:
        code, workers = own_cluster.request("GET", "/workers")
        assert code == 200 and len(workers) == 100
    finally:
        for sock in sockets:
            sock.close()


def test_idle_api_connections_cannot_lock_out_health_or_workers(own_cluster: Cluster) -> None:
    """
    1,152 idle connections, 64 from each of 18 addresses (inside the
    per-address limit), to a master that may open 1,024 files: the oldest
    idle ones are closed to make room, /health answers and a worker joins.
    """
    own_cluster.start_master(files=1024)
    idle = []
    try:
        # Dialled all at once: one at a time, those the master's backlog
        # cannot take yet would each wait for a SYN retry.
        for host in range(2, 20):
            for _ in range(64):
                sock = socket.socket()
                sock.setblocking(False)
                sock.bind((f"127.0.0.{host}", 0))
                sock.connect_ex(("127.0.0.1", own_cluster.api_port))
                idle.append(sock)
        with selectors.DefaultSelector() as selector:
            for sock in idle:
                selector.register(sock, selectors.EVENT_WRITE)
            connected = 0
            deadline = time.monotonic() + DEADLINE
            while connected < len(idle) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=1):
                    selector.unregister(key.fileobj)
                    connected += 1
        assert connected == len(idle) == 1152
        assert own_cluster.master.alive()
        assert own_cluster.request("GET", "/health", timeout=10) == (200, {"status": "ok"})
        own_cluster.start_worker("w1")
        pool = own_cluster.run("echo in", ["w1"])
        assert pool["jobs"][0]["result"] == "in\n"
    finally:
        for sock in idle:
            sock.close()
