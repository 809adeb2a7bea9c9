"""
End to end: real master and worker daemons on loopback, real commands, real
process trees.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from cluster import Cluster, poll, processes_with

from pcci.wire import MAX_FRAME, TERMINATOR

pytestmark = [pytest.mark.e2e, pytest.mark.long(45)]


def only_job(pool: dict) -> dict:
    (job,) = pool["jobs"]
    return job


def test_pool_on_two_workers(cluster: Cluster) -> None:
    pool = cluster.run("echo hello", ["w1", "w2"])
    assert pool["status"] == 0
    assert sorted(job["worker_id"] for job in pool["jobs"]) == ["w1", "w2"]
    for job in pool["jobs"]:
        assert job["result"] == "hello\n"
        assert job["status"] == 0 and isinstance(job["pid"], int)
        assert job["started_at"] <= job["ended_at"]
        assert job["time_to_calc"] >= 0
    code, listed = cluster.request("GET", f"/pool/{pool['id']}")
    assert code == 200 and listed == [pool]


def test_exit_codes_and_pool_status(cluster: Cluster) -> None:
    pool = cluster.run("sh -c 'exit 3'", ["w1"])
    assert (pool["status"], only_job(pool)["status"]) == (1, 3)
    pool = cluster.run("false", ["w1", "w2"])
    assert pool["status"] == 1
    pool = cluster.run("sh -c 'kill -9 $$'", ["w2"])
    assert only_job(pool)["status"] == 128 + 9


def test_stdout_and_stderr_in_arrival_order(cluster: Cluster) -> None:
    pool = cluster.run("sh -c 'echo out; sleep 0.1; echo err >&2; sleep 0.1; echo out2'", ["w1"])
    assert only_job(pool)["result"] == "out\nerr\nout2\n"


def test_terminator_in_command_and_output(cluster: Cluster) -> None:
    pool = cluster.run("printf 'EOM%sEOMEOM\\nEO' M", ["w1"])
    assert only_job(pool)["result"] == "EOMMEOMEOM\nEO"
    assert pool["cmd"] == "printf 'EOM%sEOMEOM\\nEO' M"
    # The worker survived: it still runs jobs.
    assert cluster.run("echo EOM", ["w1"])["status"] == 0


def test_output_over_one_megabyte_arrives_intact(cluster: Cluster) -> None:
    pool = cluster.run("seq 1 300000", ["w1", "w2"])
    expected = "".join(f"{i}\n" for i in range(1, 300001))
    assert len(expected) > 1_900_000
    for job in pool["jobs"]:
        assert job["result"] == expected


def test_job_leads_its_own_process_group_with_default_signals(cluster: Cluster) -> None:
    pool = cluster.run(
        f"{sys.executable} -c 'import os; print(os.getpid() == os.getpgid(0) != os.getpgid(os.getppid()))'",
        ["w1"],
    )
    assert only_job(pool)["result"] == "True\n"
    # SIGPIPE is back to its default in jobs: `yes` dies quietly of it.
    pool = cluster.run("sh -c 'yes | head -n 1'", ["w1"])
    assert only_job(pool)["result"] == "y\n"


def test_invalid_utf8_is_replaced_not_fatal(cluster: Cluster) -> None:
    pool = cluster.run("printf 'a\\377b\\303'", ["w1"])
    assert only_job(pool)["result"] == "a\ufffdb\ufffd"


def test_command_not_found(cluster: Cluster) -> None:
    pool = cluster.run("no-such-command-pcci --x", ["w1"])
    job = only_job(pool)
    assert job["status"] == 127
    assert "no-such-command-pcci: command not found" in job["result"]
    assert pool["status"] == 1


def test_kill_a_process_tree(cluster: Cluster, marker: str) -> None:
    """Children, grandchildren and one that left the group all die."""
    cmd = (
        f"sh -c 'sleep {marker} & setsid sleep {marker} & "
        f"sh -c \"sleep {marker}; true\" & echo started; wait'"
    )
    pool_id = cluster.submit(cmd, ["w1"])
    poll(lambda: len(processes_with(f"sleep {marker}")) >= 3, what="the tree")
    poll(lambda: "started" in only_job(cluster.request("GET", f"/pools/{pool_id}")[1])["result"])
    code, body = cluster.request("PUT", f"/kill/{pool_id}", {"workers": ["w1"]})
    assert code == 200 and body["workers"] == ["w1"]
    pool = cluster.wait_pool(pool_id)
    assert only_job(pool)["status"] == 128 + signal.SIGTERM
    poll(lambda: not processes_with(f"sleep {marker}"), what="the tree to die")


def test_kill_before_any_output(cluster: Cluster, marker: str) -> None:
    pool_id = cluster.submit(f"sleep {marker}", ["w1", "w2"])
    poll(lambda: all(j["pid"] for j in cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"]))
    assert cluster.request("PUT", f"/kill/{pool_id}")[0] == 200
    pool = cluster.wait_pool(pool_id)
    assert [j["status"] for j in pool["jobs"]] == [143, 143]
    assert pool["status"] == 1
    assert not processes_with(f"sleep {marker}")


def test_kill_escalates_to_sigkill(cluster: Cluster, marker: str) -> None:
    pool_id = cluster.submit(f"sh -c 'trap \"\" TERM; sleep {marker}; true'", ["w2"])
    poll(lambda: processes_with(f"sleep {marker}"))
    started = time.monotonic()
    cluster.request("PUT", f"/kill/{pool_id}")
    pool = cluster.wait_pool(pool_id)
    assert only_job(pool)["status"] == 128 + signal.SIGKILL
    assert time.monotonic() - started >= 0.9  # --kill-grace 1
    poll(lambda: not processes_with(f"sleep {marker}"))


def test_background_grandchild_holding_the_pipes(cluster: Cluster, marker: str) -> None:
    """The shell exits at once; its child keeps stdout open, yet the job ends."""
    pool = cluster.run(f"sh -c 'sleep {marker} & echo bye'", ["w1"])
    job = only_job(pool)
    assert job["status"] == 0
    assert job["result"].startswith("bye\n")
    assert "still holds its output" in job["result"]


def test_bad_rest_bodies(cluster: Cluster) -> None:
    cases = [
        (b"{not json", 400),
        (b'{"cmd": "true"}', 400),
        (b'{"cmd": "true", "workers": ["nobody"]}', 400),
        (b'{"cmd": "", "workers": ["w1"]}', 400),
    ]
    before = cluster.request("GET", "/pools")[1]
    for raw, status in cases:
        code, body = cluster.request("POST", "/job", raw=raw)
        assert code == status and isinstance(body["message"], str)
    code, body = cluster.request("POST", "/job", raw=b"cmd=true", headers={"Content-Type": "text/plain"})
    assert code == 415
    assert cluster.request("GET", "/pools")[1] == before
    assert cluster.request("GET", "/pool/nope")[0] == 404
    assert cluster.request("POST", "/pools", raw=b"{}")[0] == 405


def test_garbage_and_oversized_frames_drop_only_that_connection(cluster: Cluster) -> None:
    for payload in [b"\x00\xffgarbage" + TERMINATOR, b"{" * (MAX_FRAME + 100)]:
        with socket.create_connection(("127.0.0.1", cluster.worker_port), timeout=10) as s:
            try:
                s.sendall(payload)
            except OSError:
                pass  # the master may close before all of it is sent
            s.settimeout(10)
            try:
                assert s.recv(100) == b""  # closed by the master
            except ConnectionResetError:
                pass
    assert sorted(cluster.workers()) == ["w1", "w2"]
    assert cluster.run("true", ["w1", "w2"])["status"] == 0


def test_300_pools_from_20_concurrent_clients(cluster: Cluster) -> None:
    def submit(i: int) -> str:
        return cluster.submit(f"echo {i}", ["w1" if i % 2 else "w2"])

    with ThreadPoolExecutor(20) as executor:
        ids = list(executor.map(submit, range(300)))
        pools = list(executor.map(cluster.wait_pool, ids))
    assert len(set(ids)) == 300
    for i, pool in enumerate(pools):
        assert pool["status"] == 0 and only_job(pool)["result"] == f"{i}\n"
    listed = {p["id"] for p in cluster.request("GET", "/pools?limit=1000&results=false")[1]}
    assert set(ids) <= listed


def test_long_poll_answers_as_soon_as_the_pool_ends(cluster: Cluster) -> None:
    pool_id = cluster.submit("sleep 0.5", ["w1"])
    started = time.monotonic()
    code, pool = cluster.request("GET", f"/pools/{pool_id}?wait=30")
    assert code == 200 and pool["status"] == 0
    assert time.monotonic() - started < 10


def test_workers_route(cluster: Cluster) -> None:
    code, workers = cluster.request("GET", "/workers")
    assert code == 200
    for worker in workers:
        assert {"id", "address", "connected_at", "jobs_running", "online", "health"} <= set(worker)
        assert worker["address"].startswith("127.0.0.1:")


def test_retention(own_cluster: Cluster) -> None:
    own_cluster.start_master("--retention", "1")
    own_cluster.start_worker("w1")
    pool = own_cluster.run("true", ["w1"])
    assert own_cluster.request("GET", f"/pool/{pool['id']}")[0] == 200
    poll(lambda: own_cluster.request("GET", f"/pool/{pool['id']}")[0] == 404, timeout=10)
    assert own_cluster.request("GET", "/pools")[1] == []


def test_worker_killed_mid_job(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master("--reconnect-grace", "1")
    doomed = own_cluster.start_worker("doomed")
    own_cluster.start_worker("survivor")
    pool_id = own_cluster.submit(f"sleep {marker}", ["doomed", "survivor"])
    poll(lambda: len(processes_with(f"sleep {marker}")) == 2)
    doomed.signal(signal.SIGKILL)
    poll(lambda: own_cluster.workers() == ["survivor"], what="the doomed worker to leave")

    def jobs() -> dict:
        return {j["worker_id"]: j for j in own_cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"]}

    assert jobs()["doomed"]["status"] is None  # it may come back within the grace
    job = poll(lambda: jobs()["doomed"]["status"] is not None and jobs(), what="the grace to end")
    assert job["doomed"]["status"] == -1 and job["doomed"]["state"] == "lost"
    assert "worker disconnected" in job["doomed"]["result"]
    assert job["survivor"]["status"] is None
    own_cluster.request("PUT", f"/kill/{pool_id}")
    pool = own_cluster.wait_pool(pool_id)
    assert pool["status"] == 1


def test_master_restart_workers_reconnect(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1")
    own_cluster.start_worker("w2")
    own_cluster.master.stop()
    assert not own_cluster.up()
    own_cluster.start_master()
    own_cluster.wait_for_workers("w1", "w2")
    assert own_cluster.run("echo back", ["w1", "w2"])["status"] == 0


def test_duplicate_name_replaces_the_old_worker_which_comes_back_later(own_cluster: Cluster) -> None:
    """Not retired for good: an impostor with the secret must not stop the real worker (see the audit log)."""
    own_cluster.start_master()
    first = own_cluster.start_worker("twin")
    address = own_cluster.request("GET", "/workers")[1][0]["address"]
    second = own_cluster.start_worker("twin", wait=False)
    poll(lambda: own_cluster.request("GET", "/workers")[1][0]["address"] != address)
    poll(lambda: "another worker connected as 'twin'" in first.log_text(), what="the first told why")
    assert "will not reconnect" not in first.log_text()
    assert first.alive() and second.alive()
    assert own_cluster.workers() == ["twin"]


def test_worker_shutdown_kills_its_jobs(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master()
    worker = own_cluster.start_worker("w1")
    pool_id = own_cluster.submit(f"sh -c 'sleep {marker}; true'", ["w1"])
    poll(lambda: processes_with(f"sleep {marker}"))
    worker.stop()
    # twistd ends by re-raising the signal it was stopped with, after a clean shutdown.
    assert worker.process.returncode in (0, -signal.SIGTERM)
    assert "killing 1 running jobs" in worker.log_text()
    assert "Server Shut Down" in worker.log_text()
    assert not processes_with(f"sleep {marker}")
    assert own_cluster.wait_pool(pool_id)["status"] == 1


def test_local_worker(own_cluster: Cluster) -> None:
    own_cluster.start_master("--local-worker")
    own_cluster.wait_for_workers(socket.gethostname())
    pool = own_cluster.run("echo local", [socket.gethostname()])
    assert only_job(pool)["result"] == "local\n"
    # The local worker's jobs are children of the master process.
    master = psutil.Process(own_cluster.master.pid)
    assert master.is_running()


def test_plugins_are_discovered() -> None:
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    names = {plugin.tapname for plugin in getPlugins(IServiceMaker)}
    assert {"pcci-master", "pcci-worker"} <= names


def test_master_exits_with_an_error_when_its_port_is_taken(own_cluster: Cluster) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", own_cluster.api_port))
        squatter.listen()
        master = own_cluster._start(
            "master", "pcci-master", "--no-auth",
            "--api", f"tcp:{own_cluster.api_port}:interface=127.0.0.1",
            "--listen", f"tcp:{own_cluster.worker_port}:interface=127.0.0.1",
        )
        assert master.process.wait(20) == 1
    assert "cannot listen for the REST API" in master.log_text()
