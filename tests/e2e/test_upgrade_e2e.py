"""
Upgrades in any order: a worker of an earlier commit of this repository
(the previous protocol) joins a master of this commit and runs, kills and
carries on with jobs; one two protocols back is refused, and told so.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cluster import Cluster, checkout, poll

from pcci.identity import EXIT_NAME

pytestmark = pytest.mark.e2e

#: A released state speaking protocol 3, two before this.
PROTOCOL_3 = "e8c0c12a6dda7b072020a73b097b9d4f65f3babb"
#: The last landing speaking protocol 4, the one before this (5 brought shells).
PROTOCOL_4 = "75609aa28bb55ae3ec4fa4d981cdc914269659da"
#: The landing before identities: every worker held the cluster secret.
BEFORE_IDENTITIES = "eb8d179e4348abd84e813fabd7daa5eae5158246"


def old_worker(cluster: Cluster, commit: str, tmp_path: Path, name: str) -> None:
    tree = checkout(commit, tmp_path / commit[:7])
    # PYTHONPATH comes before the installed pcci: twistd runs the old one.
    cluster.start_worker(name, "--heartbeat", "0.5", env={"PYTHONPATH": str(tree)})


def kill_a_job(cluster: Cluster, worker: str, marker: str) -> None:
    """A running job of C{worker} killed through the master ends killed."""
    pool_id = cluster.submit(f"sleep {marker}", [worker])
    poll(lambda: cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"], what="the start")
    assert cluster.request("PUT", f"/kill/{pool_id}")[0] == 200
    assert cluster.wait_pool(pool_id)["jobs"][0]["state"] == "killed"


def test_a_worker_of_the_previous_protocol_runs_kills_and_carries_on(
    own_cluster: Cluster, tmp_path: Path, marker: str
) -> None:
    c = own_cluster
    c.worker_auth = "both"  # identities, and the secret of before
    c.start_master()
    old_worker(c, PROTOCOL_4, tmp_path, "old")
    assert "worker old speaks protocol 4, one version back" in c.master.log_text()
    pool = c.run("sh -c 'echo out; echo err >&2; exit 3'", ["old"])
    job = pool["jobs"][0]
    assert (job["state"], job["status"], job["result"]) == ("failed", 3, "out\nerr\n")
    kill_a_job(c, "old", marker)
    # Files go to it; a shell on it is refused, saying why: it never sees a frame it does not know.
    code, answer = c.request(
        "POST", f"/files?workers=old&dest={tmp_path}/&wait=20", raw=tar_of("x", b"x"),
        headers={"Content-Type": "application/x-tar"},
    )
    assert code == 200 and answer["pool"]["state"] == "ok" and (tmp_path / "x").read_bytes() == b"x"
    code, answer = c.request("GET", "/workers/old/shell")
    assert (code, answer["message"]) == (409, "worker old's pcci is too old for shells; upgrade it")
    # Carried on across a master restart: the new master attaches the old worker's job.
    go = tmp_path / "go"
    pool_id = c.submit(f"sh -c 'echo a; while [ ! -e {go} ]; do sleep 0.05; done; echo b'", ["old"])
    poll(lambda: c.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["result"] == "a\n",
         what="the first line")
    assert c.master is not None
    c.master.stop()
    c.start_master()
    c.wait_for_workers("old")
    go.touch()
    job = c.wait_pool(pool_id, timeout=30)["jobs"][0]
    assert (job["state"], job["status"], job["result"]) == ("ok", 0, "a\nb\n")


def test_a_worker_two_protocols_back_is_refused(own_cluster: Cluster, tmp_path: Path) -> None:
    c = own_cluster
    c.start_master()
    tree = checkout(PROTOCOL_3, tmp_path / PROTOCOL_3[:7])
    c.start_worker("older", env={"PYTHONPATH": str(tree)}, wait=False)
    poll(lambda: "speaks protocol 3: refused" in c.master.log_text(), what="the refusal")
    assert "older" not in c.workers()


def tar_of(name: str, data: bytes) -> bytes:
    """A tar holding one file."""
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as archive:
        member = tarfile.TarInfo(name)
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return body.getvalue()


def test_an_upgraded_master_admits_both_kinds_and_a_worker_moves_over_with_enroll(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    """The previous landing's master and worker; the master upgraded (both kinds); the worker enrolls."""
    c = own_cluster
    before = {"PYTHONPATH": str(checkout(BEFORE_IDENTITIES, tmp_path / "before"))}
    c.worker_auth = "identity"  # no --worker-auth: the old master has none, the new one chooses
    old_master = c.start_master(env=before)
    c.worker_auth = "secret"  # the workers hold the secret the old master made
    old_worker = c.start_worker("w1", "--heartbeat", "0.5", env=before)
    assert c.run("echo before", ["w1"])["state"] == "ok"
    old_master.stop()
    c.worker_auth = "identity"
    c.start_master()
    log = c.master.log_text()
    assert "workers also join with" in log and "pcci join-token create" in log  # both kinds
    c.wait_for_workers("w1")  # the old worker came back by the secret: no worker stopped
    assert {w["id"]: w["auth"] for w in c.request("GET", "/workers")[1]} == {"w1": "secret"}
    assert c.run("echo after", ["w1"])["jobs"][0]["result"] == "after\n"
    # Upgraded, the worker asks once for its identity, then connects with it.
    old_worker.stop()
    c.worker_auth = "secret"
    c.start_worker("w1", "--heartbeat", "0.5", "--enroll", wait=False)
    poll(lambda: {w["id"]: w["auth"] for w in c.request("GET", "/workers")[1]}.get("w1") == "identity",
         what="w1 back by its identity")
    (identity,) = c.request("GET", "/identities")[1]
    assert (identity["name"], identity["how"], identity["state"]) == ("w1", "enroll", "approved")
    # Its name is its identity's now: the secret alone no longer takes it.
    impostor = c._start(
        "impostor", "pcci-worker", "--master", f"tcp:127.0.0.1:{c.worker_port}", "--name", "w1",
        "--secret-file", str(c.secret_file), "--state-dir", str(tmp_path / "impostor"),
    )
    assert impostor.process.wait(30) == EXIT_NAME
    assert "holding the cluster secret asked for w1, which an identity owns" in c.master.log_text()
    assert c.run("echo still me", ["w1"])["jobs"][0]["result"] == "still me\n"
