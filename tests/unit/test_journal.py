"""The worker's job journal, driven by a Clock, and what a worker's start kills of it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from pcci.worker.journal import WRITE_DELAY, JobJournal, kill_leftovers, start_ticks, start_time


def test_the_job_journal_writes_only_what_outlives_its_delay(tmp_path: Path) -> None:
    clock = Clock()
    writes: list[str] = []
    journal = JobJournal(
        tmp_path / "j.json", clock, write=lambda path, text: succeed(writes.append(text))
    )
    journal.add(os.getpid(), "m/1")
    journal.remove(os.getpid())
    clock.advance(WRITE_DELAY)
    assert writes == []  # a job that came and went costs no write
    journal.add(os.getpid(), "m/2")
    clock.advance(WRITE_DELAY)
    assert len(writes) == 1 and '"m/2"' in writes[0]
    journal.remove(os.getpid())
    clock.advance(WRITE_DELAY)
    assert writes[-1] == '{"jobs": []}'


@pytest.mark.parametrize("when", ["ticks", "started", "stranger"])
def test_what_a_dead_worker_left_is_killed_unless_its_pid_went_to_a_stranger(tmp_path: Path, when: str) -> None:
    """At start, a worker kills the process groups its journal lists, when
    each leader's start time says the pid is still that job's (older
    journals kept psutil's start time)."""
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        entry = {"pgid": leader.pid, "marker": "nobody"}
        if when == "ticks":
            entry["ticks"] = start_ticks(leader.pid)
            assert isinstance(entry["ticks"], int)
        elif when == "started":
            entry["started"] = start_time(leader.pid)
        else:
            entry["ticks"] = start_ticks(leader.pid) + 1  # type: ignore[operator]
        journal = tmp_path / "jobs.json"
        journal.write_text(json.dumps({"jobs": [entry]}))
        signalled = kill_leftovers(journal, "pcci-test-", grace=5)
        if when == "stranger":
            assert signalled == 0 and leader.poll() is None
        else:
            assert signalled == 1 and not psutil.pid_exists(leader.pid)  # and reaped
    finally:
        leader.kill()
        leader.wait()
