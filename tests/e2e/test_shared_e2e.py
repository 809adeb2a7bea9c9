"""
A shared cluster, end to end with real daemons: scoped tokens (from the
tokens file and made through the API, on one master or two), retries of
what failed, and jobs that wait for workers that are off.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, poll
from test_cli_e2e import pcci
from test_restart_e2e import restart_master

pytestmark = pytest.mark.e2e

ADMIN = "admin-token-0123456789"
ALICE = "alice-token-0123456789"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Workers w1 to w3; alice may use w1 and w2 (by glob) and run echo or uptime."""
    directory = tmp_path_factory.mktemp("lab")
    tokens = directory / "tokens"
    tokens.write_text(
        f"{ADMIN} name=admin\n"
        f"{ALICE} name=alice workers='w[1-2]' commands='echo *' commands=uptime\n"
    )
    c = Cluster(directory)
    try:
        c.start_master("--api-token-file", str(tokens))
        c.token = ADMIN
        for name in ("w1", "w2", "w3"):
            c.start_worker(name, wait=False)
        c.wait_for_workers("w1", "w2", "w3")
        yield c
    finally:
        c.stop()


def test_a_scoped_token_is_refused_outside_its_workers_and_commands(lab: Cluster) -> None:
    code, body = lab.request("POST", "/job", {"cmd": "echo hi", "workers": ["w3"]}, token=ALICE)
    assert (code, body["message"]) == (403, "outside this token's scope: w3")
    code, body = lab.request("POST", "/job", {"cmd": "id", "workers": ["w1"]}, token=ALICE)
    assert code == 403 and body["message"].startswith("this token may not run 'id'")
    code, body = lab.request("POST", "/job", {"cmd": "echo hi; id", "workers": ["w1"]}, token=ALICE)
    assert code == 403
    log = lab.master.log_text()  # type: ignore[union-attr]
    assert "refused alice POST /job: outside this token's scope: w3" in log
    assert "refused alice POST /job: this token may not run 'id'" in log


def test_its_globs_stay_in_its_scope_and_it_sees_only_its_own(lab: Cluster) -> None:
    theirs = lab.run("echo admin", ["w3"])["id"]
    run = pcci(lab, "run", "-w", "w*", "--", "echo", "hi", PCCI_TOKEN=ALICE)
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == ["w1: hi", "w2: hi"]
    code, workers = lab.request("GET", "/workers", token=ALICE)
    assert sorted(w["id"] for w in workers) == ["w1", "w2"]
    code, pools = lab.request("GET", "/pools", token=ALICE)
    assert {p["submitted_by"] for p in pools} == {"alice"} and theirs not in {p["id"] for p in pools}
    assert lab.request("GET", f"/pools/{theirs}", token=ALICE)[0] == 404
    assert lab.request("PUT", f"/kill/{theirs}", token=ALICE)[0] == 404


def test_a_made_token_works_at_once_and_is_refused_once_revoked(lab: Cluster) -> None:
    made = pcci(lab, "token", "create", "ci", "-w", "w2", "-c", "uptime")
    assert made.returncode == 0, made.stderr
    ci = made.stdout.strip()
    assert "only time it is shown" in made.stderr
    listed = pcci(lab, "token", "ls", "--json")
    tokens = {t["name"]: t for t in json.loads(listed.stdout)}
    assert tokens["ci"]["scope"] == {"workers": ["w2"], "labels": [], "commands": ["uptime"]}
    assert ci not in listed.stdout
    pool = lab.request("POST", "/job?wait=30", {"cmd": "uptime", "workers": ["w*"]}, token=ci)[1]["pool"]
    assert [j["worker_id"] for j in pool["jobs"]] == ["w2"] and pool["state"] == "ok"
    assert lab.request("POST", "/tokens", {"name": "x"}, token=ci)[0] == 403
    revoked = pcci(lab, "token", "revoke", "ci")
    assert revoked.returncode == 0, revoked.stderr
    assert lab.request("GET", "/workers", token=ci)[0] == 401


def test_the_tokens_file_is_read_again_on_sighup(lab: Cluster) -> None:
    tokens = lab.directory / "tokens"
    before = tokens.read_text()
    late = "late-token-0123456789"
    try:
        tokens.write_text(before + f"{late} read name=late\n")
        lab.master.signal(signal.SIGHUP)  # type: ignore[union-attr]
        poll(lambda: lab.request("GET", "/whoami", token=late)[0] == 200, what="the new token")
        assert lab.request("GET", "/whoami", token=late)[1]["name"] == "late"
        assert lab.up()  # SIGHUP did not stop the master
    finally:
        tokens.write_text(before)
        lab.master.signal(signal.SIGHUP)  # type: ignore[union-attr]
    poll(lambda: lab.request("GET", "/whoami", token=late)[0] == 401, what="the token to go")


def test_a_retry_runs_only_the_failed_and_the_lost(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master("--reconnect-grace", "1")
    own_cluster.start_worker("w1", env={"EXIT": "0"})
    own_cluster.start_worker("w2", env={"EXIT": "3"})
    w3 = own_cluster.start_worker("w3", env={"EXIT": "0", "HANG": "1"})
    cmd = f"sh -c 'if [ -n \"$HANG\" ]; then sleep {marker}; fi; exit $EXIT'"
    first = own_cluster.submit(cmd, ["w1", "w2", "w3"])
    poll(lambda: own_cluster.request("GET", f"/pools/{first}")[1]["jobs"][2]["pid"], what="w3's job")
    w3.signal(signal.SIGKILL)
    pool = own_cluster.wait_pool(first, timeout=20)
    assert [j["state"] for j in pool["jobs"]] == ["ok", "failed", "lost"]
    own_cluster.start_worker("w3", env={"EXIT": "0"})  # back, without HANG
    retry = pcci(own_cluster, "retry", "--last", "--json")
    again = json.loads(retry.stdout)
    assert again["retry_of"] == first
    assert {j["worker_id"]: j["state"] for j in again["jobs"]} == {"w2": "failed", "w3": "ok"}
    assert retry.returncode == 3
    code, body = own_cluster.request("POST", f"/pools/{again['id']}/retry", {"states": ["lost"]})
    assert code == 409 and body["message"].startswith("nothing to retry")


def test_a_job_waits_for_its_worker_across_a_master_restart(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1").stop()  # known, and now off
    poll(lambda: own_cluster.workers() == [], what="w1 to leave")
    code, body = own_cluster.request(
        "POST", "/job?wait=0", {"cmd": "echo back", "workers": ["w*"], "wait_offline": 120}
    )
    assert code == 200, body
    assert body["pool"]["counts"] == {"waiting": 1}
    pool_id = body["pool_id"]
    restart_master(own_cluster)
    assert own_cluster.request("GET", f"/pools/{pool_id}")[1]["counts"] == {"waiting": 1}
    own_cluster.start_worker("w1")
    pool = own_cluster.wait_pool(pool_id, timeout=30)
    assert pool["state"] == "ok" and pool["jobs"][0]["result"] == "back\n"


def test_a_worker_that_never_returns_ends_not_started_in_time(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1").stop()
    poll(lambda: own_cluster.workers() == [], what="w1 to leave")
    code, body = own_cluster.request("POST", "/job", {"cmd": "true", "workers": ["w1"], "wait_offline": 1.5})
    pool = own_cluster.wait_pool(body["pool_id"], timeout=10)
    job = pool["jobs"][0]
    assert job["state"] == "not_started"
    assert "did not connect within 1.5 s" in job["result"]


def test_a_token_made_on_one_master_is_known_to_the_other(tmp_path: Path, pg_url: str) -> None:
    m1, m2 = Cluster(tmp_path / "m1"), Cluster(tmp_path / "m2")
    try:
        m1.start_master("--db", pg_url, "--name", "m1")
        shutil.copytree(m1.state_dir, m2.state_dir)
        m2.start_master("--db", pg_url, "--name", "m2")
        code, made = m1.request("POST", "/tokens", {"name": "bob", "read_only": True})
        assert code == 201, made
        poll(lambda: m2.request("GET", "/whoami", token=made["token"])[0] == 200, what="bob on m2")
        assert m2.request("GET", "/whoami", token=made["token"])[1]["name"] == "bob"
        assert m1.request("DELETE", "/tokens/bob")[0] == 200
        poll(lambda: m2.request("GET", "/whoami", token=made["token"])[0] == 401, what="bob refused on m2")
    finally:
        m2.stop()
        m1.stop()


def test_a_scoped_token_schedules_only_within_its_scope(lab: Cluster) -> None:
    hourly = {"cron": "@hourly", "workers": ["w*"]}
    code, body = lab.request("POST", "/schedules", {"name": "a1", "cmd": "id", **hourly}, token=ALICE)
    assert code == 403 and body["message"].startswith("this token may not run 'id'")
    code, body = lab.request("POST", "/schedules", {"name": "a2", "cmd": "uptime", "cron": "@hourly",
                                                     "workers": ["w3"]}, token=ALICE)
    assert (code, body["message"]) == (403, "outside this token's scope: w3")
    code, body = lab.request("POST", "/schedules", {"name": "a3", "cmd": "uptime", **hourly}, token=ALICE)
    # A scoped token's names are its own: under its name, never another's.
    assert code == 201 and body["created_by"] == "alice" and body["name"] == "alice:a3"
    assert lab.request("POST", "/schedules", {"name": "adm", "cmd": "true", **hourly})[0] == 201
    assert [s["name"] for s in lab.request("GET", "/schedules", token=ALICE)[1]] == ["alice:a3"]
    assert lab.request("DELETE", "/schedules/adm", token=ALICE)[0] == 404
    # The administrator's "adm" is none of its business: its own "adm" is made, and says nothing of the other.
    code, body = lab.request("POST", "/schedules", {"name": "adm", "cmd": "uptime", **hourly}, token=ALICE)
    assert code == 201 and body["name"] == "alice:adm", body
    code, body = lab.request("POST", "/schedules?dry_run=true", {"name": "adm", "cmd": "uptime", **hourly}, token=ALICE)
    assert code == 200 and body["name"] == "alice:adm"
    code, body = lab.request("POST", "/schedules", {"name": "adm", "cmd": "uptime", **hourly}, token=ALICE)
    assert code == 409 and body["message"] == "a schedule named alice:adm exists already"
    assert lab.request("PATCH", "/schedules/a3", {"paused": True}, token=ALICE)[1]["paused"] is True
    assert lab.request("GET", "/schedules/alice:a3", token=ALICE)[1]["paused"] is True
    assert {s["name"] for s in lab.request("GET", "/schedules")[1]} == {"alice:a3", "alice:adm", "adm"}
    assert lab.request("DELETE", "/schedules/adm", token=ALICE)[0] == 200  # its own
    for name in ("alice:a3", "adm"):
        assert lab.request("DELETE", f"/schedules/{name}")[0] == 200
