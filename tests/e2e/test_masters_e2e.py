"""
Several masters on one PostgreSQL: every master shows and runs the whole
cluster, and a master killed loses nothing and runs nothing twice.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, open_events, poll, read_events
from test_cli_e2e import pcci

pytestmark = [pytest.mark.e2e, pytest.mark.long(60)]


def masters(tmp_path: Path, pg_url: str) -> tuple[Cluster, Cluster]:
    """Two masters, m1 and m2, on one database, with the same secret and tokens."""
    m1, m2 = Cluster(tmp_path / "m1"), Cluster(tmp_path / "m2")
    m1.start_master("--db", pg_url, "--name", "m1")
    shutil.copytree(m1.state_dir, m2.state_dir)
    m2.start_master("--db", pg_url, "--name", "m2")
    return m1, m2


@pytest.fixture
def two(tmp_path: Path, pg_url: str) -> Iterator[tuple[Cluster, Cluster]]:
    """m1 holding w1, m2 holding w2, and w3 listing both."""
    m1, m2 = masters(tmp_path, pg_url)
    try:
        m1.start_worker("w1", wait=False)
        m2.start_worker("w2", wait=False)
        m1.start_worker("w3", "--master", f"tcp:127.0.0.1:{m2.worker_port}", wait=False)
        for master in (m1, m2):
            master.wait_for_workers("w1", "w2", "w3")
        yield m1, m2
    finally:
        m2.stop()
        m1.stop()


def holders(cluster: Cluster) -> dict[str, str]:
    return {w["id"]: w["master"] for w in cluster.request("GET", "/workers")[1]}


def worker_on_both(m1: Cluster, m2: Cluster) -> tuple[Cluster, Cluster, str]:
    """Start w1 listing both masters (quick heartbeats): the master holding it, the other, the other's name."""
    m1.start_worker("w1", "--master", f"tcp:127.0.0.1:{m2.worker_port}", "--heartbeat", "0.5", wait=False)
    for master in (m1, m2):
        master.wait_for_workers("w1")
    return (m1, m2, "m2") if holders(m1)["w1"] == "m1" else (m2, m1, "m1")


def test_every_master_lists_every_worker_with_its_master(two: tuple[Cluster, Cluster]) -> None:
    m1, m2 = two
    seen = holders(m1)
    assert seen["w1"] == "m1" and seen["w2"] == "m2" and seen["w3"] in ("m1", "m2")
    assert holders(m2) == seen


def test_a_pool_runs_on_workers_of_both_masters_and_shows_on_both(
    two: tuple[Cluster, Cluster]
) -> None:
    m1, m2 = two
    pool = m1.run("echo hello", ["w1", "w2", "w3"])
    assert pool["counts"] == {"ok": 3}
    assert {job["worker_id"]: job["result"] for job in pool["jobs"]} == {
        "w1": "hello\n", "w2": "hello\n", "w3": "hello\n"
    }
    seen = poll(lambda: (p := m2.request("GET", f"/pools/{pool['id']}")[1])["state"] == "ok" and p,
                what="the pool ended on m2")
    assert [job["result"] for job in seen["jobs"]] == ["hello\n"] * 3
    listed = m2.request("GET", "/pools")[1]
    assert pool["id"] in [p["id"] for p in listed]


def test_the_other_master_streams_a_pool_live(two: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    m1, m2 = two
    go = tmp_path / "go"
    cmd = f"sh -c 'echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second'"
    pool_id = m1.submit(cmd, ["w1", "w2"])
    events = read_events(open_events(m2, pool_id))
    outputs = []
    for _, name, data in events:  # live: the command still waits
        if name == "output":
            outputs.append((data["worker"], data["data"]))
        if len(outputs) == 2:
            break
    assert sorted(outputs) == [("w1", "first\n"), ("w2", "first\n")]
    go.touch()
    rest = list(events)
    assert sorted((d["worker"], d["data"]) for _, n, d in rest if n == "output") == [
        ("w1", "second\n"), ("w2", "second\n")
    ]
    assert rest[-1][1] == "pool" and rest[-1][2]["state"] == "ok"


def test_a_kill_on_either_master_kills_everywhere(
    two: tuple[Cluster, Cluster], marker: str
) -> None:
    m1, m2 = two
    pool_id = m2.submit(f"sleep {marker}", ["w1", "w2"])
    poll(lambda: m2.request("GET", f"/pools/{pool_id}")[1]["counts"] == {"running": 2},
         what="both jobs running")
    code, answer = m1.request("PUT", f"/kill/{pool_id}")
    assert code == 200 and sorted(answer["workers"]) == ["w1", "w2"]
    pool = m2.wait_pool(pool_id)
    assert pool["counts"] == {"killed": 2}


def test_a_job_carries_on_when_its_master_is_killed(tmp_path: Path, pg_url: str) -> None:
    m1, m2 = masters(tmp_path, pg_url)
    try:
        holder, other, survivor = worker_on_both(m1, m2)
        go, runs = tmp_path / "go", tmp_path / "runs"
        pool_id = holder.submit(
            f"sh -c 'echo ran >> {runs}; echo a; while [ ! -e {go} ]; do sleep 0.05; done; echo b'",
            ["w1"],
        )
        events = read_events(open_events(other, pool_id))
        assert next(e for e in events if e[1] == "output")[2]["data"] == "a\n"
        assert holder.master is not None
        holder.master.signal(signal.SIGKILL)
        poll(lambda: holders(other).get("w1") == survivor, what="w1 on the survivor")
        go.touch()
        pool = other.wait_pool(pool_id, timeout=30)
        job = pool["jobs"][0]
        assert (job["state"], job["status"], job["result"]) == ("ok", 0, "a\nb\n")
        assert runs.read_text() == "ran\n"  # once
        # The stream opened on the survivor carried on to the end.
        rest = list(events)
        assert [d["data"] for _, n, d in rest if n == "output"] == ["b\n"]
        assert rest[-1][1] == "pool" and rest[-1][2]["state"] == "ok"
        assert "took over 1 pools of masters gone" in other.master.log_text()
    finally:
        m2.stop()
        m1.stop()


def test_a_pool_accepted_while_its_worker_s_master_dies_runs_once(tmp_path: Path, pg_url: str) -> None:
    """The run goes as mail to a master that is dying: the worker, come to the survivor, runs it once."""
    m1, m2 = masters(tmp_path, pg_url)
    try:
        # A worker that has remembered the jobs it was sent for an hour, not one just made.
        (m1.directory / "worker-state").mkdir(mode=0o700)
        (m1.directory / "worker-state" / "worker-w1.received").write_text(
            f"pcci received jobs 1 {time.time() - 3600:.3f}\n"
        )
        holder, other, survivor = worker_on_both(m1, m2)
        runs = tmp_path / "runs"
        assert holder.master is not None
        holder.master.signal(signal.SIGSTOP)  # it takes the mail, and never passes it on
        try:
            pool_ids = [other.submit(f"sh -c 'echo {n} >> {runs}; echo out{n}'", ["w1"]) for n in range(3)]
        finally:
            holder.master.signal(signal.SIGKILL)
            holder.master.signal(signal.SIGCONT)
        poll(lambda: holders(other).get("w1") == survivor, what="w1 on the survivor")
        for n, pool_id in enumerate(pool_ids):
            job = other.wait_pool(pool_id, timeout=30)["jobs"][0]
            assert (job["state"], job["result"]) == ("ok", f"out{n}\n"), job
        assert sorted(runs.read_text().split()) == ["0", "1", "2"]  # each once
    finally:
        m2.stop()
        m1.stop()


def test_no_output_is_dropped_or_doubled_across_a_take_over(tmp_path: Path, pg_url: str) -> None:
    """An event stream on the other master, opened once the first line is out (the owner was alone)."""
    m1, m2 = masters(tmp_path, pg_url)
    try:
        holder, other, survivor = worker_on_both(m1, m2)
        pool_id = holder.submit("sh -c 'for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.25; done'", ["w1"])
        poll(lambda: "line1" in holder.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["result"])
        events = read_events(open_events(other, pool_id))
        seen = []
        for _, name, data in events:
            if name == "output":
                seen.append(data["data"])
                if "line2" in "".join(seen):
                    break
        assert holder.master is not None
        holder.master.signal(signal.SIGKILL)
        pool = other.wait_pool(pool_id, timeout=30)
        job = pool["jobs"][0]
        assert job["state"] == "ok" and job["result"] == "".join(f"line{i}\n" for i in range(1, 9)), job
        rest = [d["data"] for _, n, d in events if n == "output"]
        assert "".join(seen + rest) == job["result"]  # the stream too: nothing lost, nothing twice
    finally:
        m2.stop()
        m1.stop()


def test_a_shell_on_another_master_s_worker_is_opened_there(two: tuple[Cluster, Cluster]) -> None:
    m1, m2 = two
    # Asked of m1, a shell on w2 (held by m2) says where it opens...
    poll(lambda: m1.request("GET", "/workers/w2/shell")[1].get("url"), what="m2's address, from its lease")
    code, answer = m1.request("GET", "/workers/w2/shell?cmd=true")
    assert (code, answer["master"]) == (409, "m2")
    assert answer["url"] == f"http://127.0.0.1:{m2.api_port}/workers/w2/shell?cmd=true"
    # ... and pcci shell goes there.
    done = pcci(m1, "shell", "w2", "--", "echo", "$PCCI_SHELL")
    assert done.returncode == 0, done.stderr
    (kept,) = m2.request("GET", "/shells")[1]
    assert done.stdout == f"{kept['id']}\n" and kept["worker"] == "w2"
