"""The worker's job journal, driven by a Clock."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from pcci.worker.journal import WRITE_DELAY, JobJournal


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
