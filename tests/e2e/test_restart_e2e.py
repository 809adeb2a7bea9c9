"""
Nothing forgotten, end to end: pools across master restarts (even SIGKILL),
workers that vanish or restart during the grace, history pages, bad stores.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from cluster import TWISTD, Cluster, free_port, poll

pytestmark = [pytest.mark.e2e, pytest.mark.long(45)]


def restart_master(cluster: Cluster, *args: str, kill: bool = False) -> None:
    assert cluster.master is not None
    if kill:
        cluster.master.signal(signal.SIGKILL)
        cluster.master.process.wait()
    else:
        cluster.master.stop()
    cluster.start_master(*args)


def test_a_pool_that_ended_before_a_restart_is_there_after_it(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1")
    pool = own_cluster.run("echo kept", ["w1"])
    restart_master(own_cluster)
    code, again = own_cluster.request("GET", f"/pools/{pool['id']}")
    assert code == 200 and again == pool
    assert again["submitted_by"] == "admin"
    code, listed = own_cluster.request("GET", "/pools")
    assert [p["id"] for p in listed] == [pool["id"]]


def test_a_job_running_across_a_master_sigkill_ends_whole(own_cluster: Cluster, tmp_path: Path) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1", "--heartbeat", "0.5")
    go = tmp_path / "go"
    pool_id = own_cluster.submit(f"sh -c 'echo a; while [ ! -e {go} ]; do sleep 0.05; done; echo b'", ["w1"])
    poll(lambda: own_cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["result"] == "a\n",
         what="the first line")
    restart_master(own_cluster, kill=True)
    go.touch()  # the job goes on while no master listens
    own_cluster.wait_for_workers("w1")
    pool = own_cluster.wait_pool(pool_id, timeout=30)
    job = pool["jobs"][0]
    assert (job["state"], job["status"], job["result"]) == ("ok", 0, "a\nb\n")


def test_a_worker_killed_with_sigkill_loses_its_jobs_after_the_grace(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master("--reconnect-grace", "2")
    worker = own_cluster.start_worker("w1")
    pool_id = own_cluster.submit(f"sleep {marker}", ["w1"])
    poll(lambda: own_cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"])
    worker.signal(signal.SIGKILL)
    poll(lambda: own_cluster.workers() == [], what="the worker to leave")
    assert own_cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["state"] == "running"
    pool = own_cluster.wait_pool(pool_id, timeout=10)
    assert pool["jobs"][0]["state"] == "lost"


def test_a_worker_restarted_within_the_grace_loses_its_jobs_at_once(own_cluster: Cluster, marker: str) -> None:
    own_cluster.start_master("--reconnect-grace", "60")
    worker = own_cluster.start_worker("w1")
    pool_id = own_cluster.submit(f"sleep {marker}", ["w1"])
    poll(lambda: own_cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"])
    worker.signal(signal.SIGKILL)
    poll(lambda: own_cluster.workers() == [], what="the worker to leave")
    own_cluster.start_worker("w1")  # a new process: it holds no job
    pool = own_cluster.wait_pool(pool_id, timeout=10)  # well within the 60 s grace
    assert pool["jobs"][0]["state"] == "lost"
    # Asked again, it says it had the job before it restarted (killing it then).
    assert "had it before it restarted" in pool["jobs"][0]["result"]


def test_paging_and_filters_over_1000_pools(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1")
    own_cluster.start_worker("w2")
    ids = []
    for i in range(1000):
        code, answer = own_cluster.request(
            "POST", "/job", {"cmd": f"sh -c 'exit {1 if i % 10 == 0 else 0}'", "workers": ["w1" if i % 2 else "w2"]}
        )
        ids.append(answer["pool_id"])
    poll(lambda: own_cluster.request("GET", "/pools?state=running&limit=1&results=false")[1] == [],
         timeout=60, what="every pool to end")
    seen, before = [], None
    while True:
        path = "/pools?limit=400&results=false" + (f"&before={before}" if before else "")
        code, page = own_cluster.request("GET", path)
        assert code == 200
        seen += [p["id"] for p in page]
        if len(page) < 400:
            break
        before = page[-1]["id"]
    assert seen == ids[::-1]
    code, failed = own_cluster.request("GET", "/pools?state=failed&limit=1000&results=false")
    assert [p["id"] for p in failed] == ids[990::-10]
    code, on_w1 = own_cluster.request("GET", "/pools?worker=w1&limit=400&results=false")
    assert len(on_w1) == 400 and all(p["jobs"][0]["worker_id"] == "w1" for p in on_w1)
    code, found = own_cluster.request("GET", "/pools?cmd=exit%201&limit=1000&results=false")
    assert len(found) == 100


def test_a_read_only_state_dir_is_a_clear_start_up_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "pcci.db").write_bytes(b"not a database" * 1000)
    done = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={tmp_path / 'm.log'}", "pcci-master",
         "--api", f"tcp:{free_port()}:interface=127.0.0.1",
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "cannot use the database" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    done = subprocess.run(
        [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={tmp_path / 'm.log'}", "pcci-master",
         "--db", "/proc/pcci/pcci.db", "--no-auth"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1 and "--db /proc/pcci/pcci.db" in done.stdout + done.stderr
