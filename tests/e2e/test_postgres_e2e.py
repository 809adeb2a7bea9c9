"""A master on PostgreSQL, end to end: pools kept across a restart, and the database going away for a while."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cluster import Cluster, poll

pytestmark = pytest.mark.e2e


def test_pools_are_kept_in_postgresql_across_a_restart(own_cluster: Cluster, pg_url: str) -> None:
    c = own_cluster
    c.start_master("--db", pg_url)
    c.start_worker("w1")
    pool = c.run("echo kept in postgres", ["w1"])
    assert c.master is not None
    c.master.stop()
    c.start_master("--db", pg_url)
    code, again = c.request("GET", f"/pools/{pool['id']}")
    assert code == 200 and again == pool
    code, listed = c.request("GET", "/pools?worker=w1")
    assert [p["id"] for p in listed] == [pool["id"]]


def test_postgresql_stopped_under_running_masters(
    own_cluster: Cluster, pg_url: str, postgres, tmp_path: Path
) -> None:
    c = own_cluster
    c.start_master("--db", pg_url, "--name", "m1")
    other = Cluster(tmp_path / "m2")
    shutil.copytree(c.state_dir, other.state_dir)
    try:
        other.start_master("--db", pg_url, "--name", "m2")
        c.start_worker("w1")
        other.start_worker("w2", wait=False)
        c.wait_for_workers("w1", "w2")
        before = c.run("echo before", ["w1", "w2"])
        postgres.stop()
        try:
            def refused() -> dict | None:
                # A pool asked before the master noticed runs, and its answer is a
                # 503 after 10 s; once noticed, new pools are refused at once.
                code, body = c.request("POST", "/job", {"cmd": "true", "workers": ["w1"]})
                assert code in (200, 503), body
                return body if "store does not answer" in body.get("message", "") else None

            poll(refused, timeout=30, what="new pools refused while the database is away")
            # What the master holds, it still serves.
            assert c.request("GET", f"/pools/{before['id']}")[0] == 200
            assert c.request("GET", "/workers")[0] == 200
        finally:
            postgres.start()
        pool_id = poll(
            lambda: (lambda r: r[0] == 200 and r[1]["pool_id"])(
                c.request("POST", "/job", {"cmd": "echo after", "workers": ["w1", "w2"]})
            ),
            what="new pools once the database is back",
        )
        # Across both masters again: mail and notifications flow once more.
        assert [j["result"] for j in c.wait_pool(pool_id)["jobs"]] == ["after\n", "after\n"]
        assert other.wait_pool(pool_id)["state"] == "ok"
        assert c.master is not None and c.master.alive()
        assert other.master is not None and other.master.alive()
    finally:
        other.stop()
