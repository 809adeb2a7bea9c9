"""
Rollouts that stop, with real daemons: a canary that fails stops its pool,
saying so; a pool paused by pause_every keeps its place across a master's
restart, and goes on when continued.
"""

from __future__ import annotations

import json

import pytest
from cluster import Cluster, poll
from test_cli_e2e import pcci

pytestmark = pytest.mark.e2e


def test_a_failed_canary_stops_the_pool_saying_why(own_cluster: Cluster) -> None:
    c = own_cluster
    c.start_master()
    for name in ("c1", "c2", "c3"):
        c.start_worker(name, "--state-dir", str(c.directory / name))
    done = pcci(c, "run", "-w", "c[1-3]", "--canary", "1", "--json", "--", "sh", "-c", "exit 3")
    pool = json.loads(done.stdout)
    assert pool["state"] == "failed" and pool["canary"] == 1
    assert pool["stopped"] == "its canary failed: 1 of 1 canary jobs did not end ok"
    assert sorted(j["state"] for j in pool["jobs"]) == ["cancelled", "cancelled", "failed"]


def test_a_paused_pool_keeps_its_place_across_a_restart_and_goes_on_when_continued(own_cluster: Cluster) -> None:
    c = own_cluster
    c.start_master()
    names = ["p1", "p2", "p3"]
    for name in names:
        c.start_worker(name, "--state-dir", str(c.directory / name))
    code, answer = c.request("POST", "/job", {"cmd": "true", "workers": names, "batch": 1, "pause_every": 1})
    assert code == 200, answer
    pool_id = answer["pool_id"]

    def state() -> str:
        return c.request("GET", f"/pools/{pool_id}")[1]["state"]

    poll(lambda: state() == "paused", what="the pause after one end")
    assert c.request("GET", f"/pools/{pool_id}")[1]["counts"] == {"ok": 1, "pending": 2}
    assert c.master is not None
    c.master.stop()
    c.start_master()
    c.wait_for_workers(*names)
    assert state() == "paused"  # its place kept: nothing started meanwhile
    assert c.request("GET", f"/pools/{pool_id}")[1]["counts"] == {"ok": 1, "pending": 2}
    done = pcci(c, "continue", pool_id)
    assert done.returncode == 0 and "continues: 1 jobs started" in done.stderr
    poll(lambda: state() == "paused", what="the next pause")
    code, answer = c.request("POST", f"/pools/{pool_id}/continue")
    assert code == 200
    assert c.wait_pool(pool_id)["state"] == "ok"
    code, answer = c.request("POST", f"/pools/{pool_id}/continue")
    assert (code, answer["message"]) == (409, f"pool {pool_id} is not paused")
