"""End to end: heartbeats from real workers, lost nodes, metrics."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from cluster import Cluster, poll
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

BEAT = "0.5"


def metrics(cluster: Cluster) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.api_port}/metrics",
        headers={"Authorization": f"Bearer {cluster.token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_figures_reach_workers_and_metrics(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master()
        cluster.start_worker("w1", "--heartbeat", BEAT)
        worker = poll(lambda: next((w for w in cluster.request("GET", "/workers")[1]
                                    if w["health"]), None), what="a heartbeat")
        figures = worker["health"]
        assert figures["memory_total_bytes"] == psutil.virtual_memory().total
        assert 0 <= figures["cpu_ratio"] <= 1
        assert figures["disk_total_bytes"] == psutil.disk_usage("/").total
        assert figures["uptime_seconds"] > 0
        assert worker["online"] is True and worker["heartbeat_seconds"] == 0.5
        poll(lambda: len(cluster.request("GET", "/workers/w1")[1]["history"]["time"]) >= 3)
        samples = metrics(cluster)
        assert samples[("pcci_worker_up", (("worker", "w1"),))] == 1
        assert samples[("pcci_worker_memory_total_bytes", (("worker", "w1"),))] == figures["memory_total_bytes"]
        assert ("pcci_worker_info", (("address", worker["address"]), ("worker", "w1"))) in samples
        cluster.run("true", ["w1"])
        assert metrics(cluster)[("pcci_jobs_total", (("outcome", "success"),))] == 1
    finally:
        cluster.stop()


def test_stopped_worker_is_declared_lost_and_comes_back(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master()
        frozen = cluster.start_worker("frozen", "--heartbeat", BEAT)
        cluster.start_worker("alive", "--heartbeat", BEAT)
        pool_id = cluster.submit("sleep 30", ["frozen"])
        poll(lambda: cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"])
        frozen.signal(signal.SIGSTOP)  # connection open, process silent
        stopped = time.monotonic()
        try:
            poll(lambda: cluster.workers() == ["alive"], timeout=10, what="the loss")
            assert time.monotonic() - stopped < 3 * 0.5 + 1.5
            job = cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]
            assert job["status"] is None  # its worker may come back within the grace
            every = {w["id"]: w["online"] for w in cluster.request("GET", "/workers?all=true")[1]}
            assert every == {"frozen": False, "alive": True}
            assert metrics(cluster)[("pcci_worker_up", (("worker", "frozen"),))] == 0
            assert cluster.run("echo still here", ["alive"])["status"] == 0
        finally:
            frozen.signal(signal.SIGCONT)
        cluster.wait_for_workers("frozen", "alive")  # it notices and reconnects
        # ... and the master carries on with its job, which ran all along.
        cluster.request("PUT", f"/kill/{pool_id}")
        job = cluster.wait_pool(pool_id)["jobs"][0]
        assert job["state"] == "killed"
    finally:
        cluster.stop()


def test_worker_leaves_a_silent_master_and_returns(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master()
        worker = cluster.start_worker("w1", "--heartbeat", BEAT)
        cluster.master.signal(signal.SIGSTOP)
        try:
            poll(lambda: "master silent for" in worker.log_text(), timeout=10)
        finally:
            cluster.master.signal(signal.SIGCONT)
        cluster.wait_for_workers("w1")
        assert cluster.run("echo back", ["w1"])["status"] == 0
    finally:
        cluster.stop()


def running_children(pid: int) -> list[psutil.Process]:
    """The live descendants of C{pid} (one may end while they are listed)."""
    alive = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def test_a_job_runs_on_and_ends_ok_across_a_frozen_master(tmp_path: Path) -> None:
    """
    The master is frozen long enough for its worker to give up on it, and
    the job ends while it is: the worker keeps the job and its output, and
    the master, awake, carries on with them instead of calling them lost.
    """
    cluster = Cluster(tmp_path / "cluster")
    try:
        cluster.start_master()
        worker = cluster.start_worker("w1", "--heartbeat", BEAT)
        code, answer = cluster.request("POST", "/job", {
            "cmd": "sh -c 'echo before; while [ ! -e go ]; do sleep 0.05; done; echo after'",
            "workers": ["w1"],
            "cwd": str(tmp_path),
        })
        assert code == 200, answer
        pool_id = answer["pool_id"]
        poll(lambda: cluster.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["result"],
             what="the first line")
        cluster.master.signal(signal.SIGSTOP)
        try:
            poll(lambda: "master silent for" in worker.log_text(), timeout=10)
            (tmp_path / "go").touch()
            poll(lambda: not running_children(worker.pid),
                 what="the job to end while the master is frozen")
        finally:
            cluster.master.signal(signal.SIGCONT)
        job = cluster.wait_pool(pool_id)["jobs"][0]
        assert (job["state"], job["status"], job["result"]) == ("ok", 0, "before\nafter\n")
    finally:
        cluster.stop()
