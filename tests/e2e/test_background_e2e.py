"""
Both daemons in the background, as the README says: without C{-n}, twistd
forks, and everything with a thread (the store's) must start after that.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cluster import TWISTD, Cluster, poll

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def in_background(directory: Path, name: str, *args: str) -> int:
    """Start a daemon the way a user does without C{-n}; its pid, from its pidfile."""
    pidfile = directory / f"{name}.pid"
    launched = subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={directory / name}.log", *args],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert launched.returncode == 0, launched.stderr
    return int(poll(lambda: pidfile.exists() and pidfile.read_text().strip(), what=f"{pidfile}"))


def test_master_and_worker_run_in_the_background_and_stop_on_sigterm(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    pids: list[int] = []
    try:
        pids.append(
            in_background(
                tmp_path, "master", "pcci-master", "--local-worker",
                "--api", f"tcp:{c.api_port}:interface=127.0.0.1",
                "--listen", f"tcp:{c.worker_port}:interface=127.0.0.1",
                "--state-dir", str(c.state_dir),
            )
        )
        poll(c.up, what="the master's API")
        c.token = (c.state_dir / "api-token").read_text().split()[0]
        pids.append(
            in_background(
                tmp_path, "worker", "pcci-worker", "--name", "bg",
                # A new master admits workers by identity: the worker joins with a token.
                "--join", f"tls:127.0.0.1:{c.worker_port}", "--token", c.join_token("bg"),
                "--state-dir", str(tmp_path / "worker-state"),
            )
        )
        c.wait_for_workers("bg", socket.gethostname())
        # A new master's own worker needs nothing: a secret only that process holds.
        auth = {w["id"]: w["auth"] for w in c.request("GET", "/workers")[1]}
        assert auth == {"bg": "identity", socket.gethostname(): "local"}
        pool = c.run("echo from the background", ["bg"])
        assert pool["state"] == "ok" and pool["jobs"][0]["result"] == "from the background\n"
        code, page = c.request("GET", "/pools?limit=5", timeout=10)
        assert code == 200 and [p["id"] for p in page] == [pool["id"]]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        started = time.monotonic()
        poll(lambda: not any(alive(pid) for pid in pids), timeout=10, what="both daemons to stop")
        assert time.monotonic() - started < 10
        for log in ("master.log", "worker.log"):
            text = (tmp_path / log).read_text()
            assert "Server Shut Down" in text
            # A person reads this log: no factory noise, no object addresses.
            assert "Starting factory" not in text and " object at 0x" not in text, text
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
