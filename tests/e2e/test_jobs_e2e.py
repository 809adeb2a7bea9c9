"""
End to end, the ways a pool runs: targets and labels, timeouts, env, cwd and
stdin, rolling batches, and the live event stream, on real daemons.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cluster import Cluster, open_events, poll, processes_with, read_events

pytestmark = pytest.mark.e2e

WORKERS = ("w1", "w2", "w3")


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master with three workers; w3 carries the labels gpu and rack=2."""
    c = Cluster(tmp_path_factory.mktemp("trio"))
    try:
        c.start_master()
        c.start_worker("w1", "--kill-grace", "1")
        c.start_worker("w2", "--kill-grace", "1")
        c.start_worker("w3", "--kill-grace", "1", "--label", "gpu", "--label", "rack=2")
        yield c
    finally:
        c.stop()


def run(cluster: Cluster, body: dict, wait: float = 20) -> dict:
    code, answer = cluster.request("POST", f"/job?wait={wait}", body)
    assert code == 200, answer
    assert answer["pool"]["state"] != "running", answer
    return answer["pool"]


def jobs(pool: dict) -> dict[str, dict]:
    return {job["worker_id"]: job for job in pool["jobs"]}


def test_targets_by_range_glob_label_and_exclude(trio: Cluster) -> None:
    assert sorted(jobs(run(trio, {"cmd": "true", "workers": ["w[1-3]"]}))) == list(WORKERS)
    assert sorted(jobs(run(trio, {"cmd": "true", "workers": ["w*"], "exclude": ["w2"]}))) == [
        "w1", "w3",
    ]
    assert list(jobs(run(trio, {"cmd": "true", "labels": ["gpu", "rack=2"]}))) == ["w3"]
    code, answer = trio.request("POST", "/job", {"cmd": "true", "workers": ["w[1-4]"]})
    assert code == 400 and answer["message"] == "unknown or disconnected workers: w4"
    code, workers = trio.request("GET", "/workers")
    labels = {w["id"]: w["labels"] for w in workers}
    assert labels["w3"]["gpu"] == "" and labels["w3"]["rack"] == "2"
    assert labels["w1"]["os"] == "linux" and labels["w1"]["arch"]


def test_a_timeout_kills_the_whole_tree(trio: Cluster, marker: str) -> None:
    pool = run(trio, {"cmd": f"sh -c 'sleep {marker} & sleep {marker}'", "workers": ["w1"], "timeout": 1})
    job = jobs(pool)["w1"]
    assert (job["status"], job["state"]) == (124, "timed_out")
    assert "timed out after 1 s" in job["result"]
    assert 1000 <= job["time_to_calc"] < 10_000
    poll(lambda: not processes_with(f"sleep {marker}"), what="the tree to be gone")


def test_env_cwd_and_stdin_reach_the_job(trio: Cluster, tmp_path: Path) -> None:
    pool = run(trio, {
        "cmd": "sh -c 'echo \"$GREETING\"; pwd; tr a-z A-Z'",
        "workers": ["w1", "w2"],
        "env": {"GREETING": "hello there"},
        "cwd": str(tmp_path),
        "stdin": "from stdin\n",
    })
    for job in pool["jobs"]:
        assert job["result"] == f"hello there\n{tmp_path}\nFROM STDIN\n"
    pool = run(trio, {"cmd": "sh -c 'cat; echo done'", "workers": ["w1"]})
    assert jobs(pool)["w1"]["result"] == "done\n"  # no stdin: at end of file at once
    pool = run(trio, {"cmd": "pwd", "workers": ["w1"], "cwd": str(tmp_path / "nowhere")})
    job = jobs(pool)["w1"]
    assert (job["status"], job["state"]) == (127, "not_started")
    assert "no such directory" in job["result"]


def test_a_batch_of_one_never_overlaps(trio: Cluster) -> None:
    pool = run(trio, {
        "cmd": "python3 -c 'import time; print(time.time()); time.sleep(0.3); print(time.time())'",
        "workers": list(WORKERS),
        "batch": 1,
    })
    spans = sorted(tuple(map(float, job["result"].split())) for job in pool["jobs"])
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start


def test_max_failures_cancels_the_rest(trio: Cluster) -> None:
    pool = run(trio, {"cmd": "false", "workers": list(WORKERS), "batch": 1, "max_failures": 1})
    assert pool["counts"] == {"failed": 1, "cancelled": 2}


def test_the_event_stream_carries_both_streams_live_and_resumes(trio: Cluster, tmp_path: Path) -> None:
    go = tmp_path / "go"
    cmd = f"sh -c 'echo out; echo err >&2; while [ ! -e {go} ]; do sleep 0.05; done; echo last'"
    code, answer = trio.request("POST", "/job", {"cmd": cmd, "workers": ["w1"]})
    response = open_events(trio, answer["pool_id"])
    events = read_events(response)
    seen = [next(events) for _ in range(3)]  # live: the command still waits
    assert [(name, data.get("stream")) for _, name, data in seen] == [
        ("started", None), ("output", "stdout"), ("output", "stderr"),
    ]
    assert [data["data"] for _, _, data in seen[1:]] == ["out\n", "err\n"]
    response.close()  # the client goes away mid-stream
    go.touch()
    resumed = list(read_events(open_events(trio, answer["pool_id"], last=seen[-1][0])))
    assert [name for _, name, _ in resumed] == ["output", "ended", "pool"]
    assert resumed[0][0] == seen[-1][0] + 1 and resumed[0][2]["data"] == "last\n"
    assert resumed[1][2]["state"] == "ok"
    assert resumed[2][2]["jobs"][0]["result"] == "out\nerr\nlast\n"


def test_a_reader_that_stops_reading_does_not_grow_the_master(trio: Cluster) -> None:
    master = psutil.Process(trio.master.pid)
    before = master.memory_info().rss
    cmd = "sh -c 'head -c 100000000 /dev/zero | tr \"\\\\0\" x'"
    code, answer = trio.request("POST", "/job", {"cmd": cmd, "workers": ["w2"]})
    assert code == 200
    stalled = socket.create_connection(("127.0.0.1", trio.api_port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(
        f"GET /pools/{answer['pool_id']}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {trio.token}\r\n\r\n".encode()
    )
    assert stalled.recv(100).startswith(b"HTTP/1.1 200")  # then it never reads again
    try:
        started = time.monotonic()
        pool = trio.wait_pool(answer["pool_id"], timeout=120)
        assert jobs(pool)["w2"]["state"] == "ok"
        assert "bytes of output dropped" in jobs(pool)["w2"]["result"]
        grown = master.memory_info().rss - before
        assert grown < 64 * 1024 * 1024, f"master grew {grown} bytes in {time.monotonic() - started:.1f} s"
        assert trio.request("GET", "/health")[0] == 200
    finally:
        stalled.close()
