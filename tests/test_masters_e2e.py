"""Several masters on one PostgreSQL: a worker that lists both moves when its master dies, and its job carries on."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from cluster import Cluster, poll

pytestmark = pytest.mark.e2e


def test_a_job_carries_on_when_its_master_is_killed(tmp_path: Path, pg_url: str) -> None:
    m1, m2 = Cluster(tmp_path / "m1"), Cluster(tmp_path / "m2")
    try:
        m1.start_master("--db", pg_url)
        shutil.copytree(m1.state_dir, m2.state_dir)  # the same secret and tokens on both
        m1.start_worker("w1", "--master", f"tcp:127.0.0.1:{m2.worker_port}", "--heartbeat", "0.5")
        m2.start_master("--db", pg_url)
        go, runs = tmp_path / "go", tmp_path / "runs"
        pool_id = m1.submit(
            f"sh -c 'echo ran >> {runs}; echo a; while [ ! -e {go} ]; do sleep 0.05; done; echo b'",
            ["w1"],
        )
        poll(lambda: m1.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["result"] == "a\n",
             what="the first line")
        # The other master shows it, as last stored; acting on it is its master's.
        code, seen = m2.request("GET", f"/pools/{pool_id}")
        assert code == 200 and seen["state"] == "running" and seen["cmd"].startswith("sh -c")
        code, refused = m2.request("PUT", f"/kill/{pool_id}")
        assert code == 409 and "another master" in refused["message"]
        assert m1.master is not None
        m1.master.signal(signal.SIGKILL)
        m2.wait_for_workers("w1")
        go.touch()
        pool = m2.wait_pool(pool_id, timeout=30)
        job = pool["jobs"][0]
        assert (job["state"], job["status"], job["result"]) == ("ok", 0, "a\nb\n")
        assert runs.read_text() == "ran\n"  # once
        assert "started by another master" in m2.master.log_text()
    finally:
        m2.stop()
        m1.stop()
