"""What a worker remembers of the jobs it was sent, and how it answers a job asked again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from pcci.worker.jobs import SENT_MARGIN, JobTable
from pcci.worker.received import HEADER, ReceivedJobs
from pcci.worker.settings import WorkerSettings


class Wall:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Link:
    paused = False

    def __init__(self) -> None:
        self.reports: list[tuple[str, str, dict[str, Any]]] = []

    def report(self, code: str, pool: str, **fields: Any) -> None:
        self.reports.append((code, pool, fields))


def test_jobs_received_are_remembered_across_restarts(tmp_path: Path) -> None:
    path, wall = tmp_path / "w.received", Wall()
    first = ReceivedJobs(path, wall)
    first.load()
    assert first.since == 1000.0 and path.read_text() == f"{HEADER} 1000.000\n"
    wall.now = 1005.0
    first.add("pool-a")
    first.add("pool-b")  # written at once, as a line: a SIGKILL now keeps them
    again = ReceivedJobs(path, Wall(2000.0))
    again.load()
    assert again.had("pool-a") and again.had("pool-b") and not again.had("pool-c")
    assert again.since == 1000.0  # whole since the file was made


def test_memory_is_bounded_and_says_since_when_it_is_whole(tmp_path: Path) -> None:
    path, wall = tmp_path / "w.received", Wall()
    memory = ReceivedJobs(path, wall, keep=3)
    memory.load()
    for n in range(10):
        wall.now = 1000.0 + n
        memory.add(f"p{n}")
    assert list(memory.ids) == ["p7", "p8", "p9"] and memory.since == 1006.0
    assert len(path.read_text().splitlines()) <= 1 + 2 * 3 + 1  # compacted as it grows
    again = ReceivedJobs(path, wall, keep=3)
    again.load()
    assert list(again.ids) == ["p7", "p8", "p9"] and again.since == 1006.0


def test_an_unreadable_file_is_a_memory_that_begins_now(tmp_path: Path) -> None:
    path = tmp_path / "w.received"
    path.write_text(json.dumps({"not": "ours"}))
    memory = ReceivedJobs(path, Wall(5000.0))
    memory.load()
    assert memory.ids == {} and memory.since == 5000.0
    assert path.read_text().startswith(HEADER)


def table(memory: ReceivedJobs | None) -> tuple[JobTable, Link, list[str]]:
    jobs = JobTable(Clock(), WorkerSettings("pi1"), received=memory)
    link = Link()
    jobs.connected(link)
    started: list[str] = []
    jobs.enqueue = lambda process: started.append(process.cmd)  # type: ignore[method-assign]
    return jobs, link, started


def test_a_job_asked_again_runs_only_if_the_worker_surely_never_had_it(tmp_path: Path) -> None:
    wall = Wall(1000.0)
    memory = ReceivedJobs(tmp_path / "w.received", wall)
    memory.load()
    wall.now = 1100.0
    jobs, link, started = table(memory)
    jobs.run("had", "echo had", {})
    del jobs.held["had"]  # as after a restart: the memory stays, the job is gone
    jobs.run("had", "echo had", {}, sent_ago=50.0)
    jobs.run("new", "echo new", {}, sent_ago=50.0)
    jobs.run("new", "echo new", {}, sent_ago=50.0)  # held: not twice
    jobs.run("too-old", "echo old", {}, sent_ago=100.0 + SENT_MARGIN - 1)  # before the memory begins
    assert started == ["echo had", "echo new"]
    ends = {pool: fields for code, pool, fields in link.reports if code == "ended"}
    assert ends == {"had": {"status": -1, "reason": "lost"}, "too-old": {"status": -1, "reason": "lost"}}
    notes = {pool: fields["data"] for code, pool, fields in link.reports if code == "output"}
    assert "had it before it restarted" in notes["had"]
    assert "without a memory of the jobs it was sent going back to it" in notes["too-old"]
    assert memory.had("new")


def test_a_worker_without_a_memory_says_so_and_an_old_style_run_still_runs() -> None:
    jobs, link, started = table(None)
    jobs.run("p", "true", {}, sent_ago=1.0)
    jobs.run("q", "true", {})
    assert started == ["true"]
    assert ("ended", "p", {"status": -1, "reason": "lost"}) in link.reports
