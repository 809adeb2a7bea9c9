"""JobProcess's timers and its end, driven by a Clock (no process spawned)."""

from __future__ import annotations

import os
import signal

import pytest
from twisted.internet.defer import succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pcci.worker.process import BACKUP_TIMEOUT, Command, JobProcess, KillPolicy


class Recorder:
    """A job's reports, kept in one list: its output (unless told not to) and its end."""

    def __init__(self, kept: list, output: bool = True) -> None:
        self.kept = kept
        self.keep_output = output

    def started(self, pid: int) -> None:
        pass

    def output(self, text: str, stream: str) -> None:
        if self.keep_output:
            self.kept.append(("output", stream, text))

    def ended(self, status: int, reason: str | None) -> None:
        self.kept.append((status, reason))


def job(clock: Clock, leftovers: list[bool] | None = None) -> tuple[JobProcess, list]:
    ended: list = []
    left = leftovers if leftovers is not None else [False]
    process = JobProcess(
        clock, Command("sleep 100"), Recorder(ended),
        KillPolicy(
            kill_grace=5,
            list_processes=lambda leader, pgid, marker: succeed([]),
            has_leftovers=lambda pgid, marker: left.pop(0) if len(left) > 1 else left[0],
        ),
    )
    # As if spawned: our own group id is never signalled by killpg.
    process.started, process.pid = True, os.getpgrp()
    return process, ended


def test_a_killed_job_that_ends_leaves_no_timer_behind() -> None:
    clock = Clock()
    process, ended = job(clock)
    process.kill()
    assert clock.getDelayedCalls()  # the SIGKILL timer
    process.process_exited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    process.process_ended(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    assert ended == [(128 + signal.SIGTERM, "killed")]
    assert clock.getDelayedCalls() == []


def test_an_end_that_never_comes_is_given_up_after_sigkill() -> None:
    clock = Clock()
    process, ended = job(clock)
    process.kill()
    clock.advance(5)  # SIGKILL, and the backup timer
    assert ended == []
    clock.advance(BACKUP_TIMEOUT)
    assert ended == [(128 + signal.SIGKILL, "killed")]
    assert clock.getDelayedCalls() == []


def test_a_timeout_kills_the_job_which_ends_with_124() -> None:
    clock = Clock()
    process, ended = job(clock)
    process.timeout = 30
    process.start_timeout()
    clock.advance(29.9)
    assert ended == []
    clock.advance(0.1)
    # No output before it: the note is the first line, with no empty one above.
    assert ("output", "stderr", "pcci: timed out after 30 s: killing the job\n") in ended
    process.process_exited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    process.process_ended(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    assert ended[-1] == (124, "timed_out")
    assert clock.getDelayedCalls() == []


def test_leftovers_are_killed_and_the_job_ends_when_they_are_gone() -> None:
    clock = Clock()
    process, ended = job(clock, leftovers=[True, True, True, False])
    process.process_exited(Failure(ProcessDone(0)))
    process.process_ended(Failure(ProcessDone(0)))
    assert [e for e in ended if e[0] != "output"] == []
    clock.pump([0.05] * 5)
    assert ended[-1] == (0, None)  # the command's own status
    assert any("left running" in e[2] for e in ended if e[0] == "output")
    assert clock.getDelayedCalls() == []


def test_a_cancelled_job_never_starts() -> None:
    clock = Clock()
    ended: list = []
    process = JobProcess(clock, Command("true"), Recorder(ended, output=False))
    process.kill()
    assert ended == [(-1, "cancelled")] and process.ended


def test_a_killed_job_waits_for_its_leftovers_through_sigkill() -> None:
    clock = Clock()
    signals: list[int] = []
    ended: list = []
    process = JobProcess(
        clock, Command("sleep 100"), Recorder(ended, output=False),
        KillPolicy(
            kill_grace=5,
            list_processes=lambda leader, pgid, marker: succeed([]),
            # A leftover that ignores SIGTERM lives until SIGKILL.
            has_leftovers=lambda pgid, marker: signal.SIGKILL not in signals,
        ),
    )
    process.started, process.pid = True, os.getpgrp()
    process._signal_found = lambda found, signum: signals.append(signum)  # type: ignore[method-assign]
    process.kill()
    process.process_exited(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    process.process_ended(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    clock.pump([0.05] * 90)
    assert ended == [] and signals == [signal.SIGTERM]
    clock.pump([0.05] * 12)
    assert signals == [signal.SIGTERM, signal.SIGKILL]
    assert ended == [(128 + signal.SIGTERM, "killed")]
    assert clock.getDelayedCalls() == []



@pytest.mark.parametrize(
    "before, note",
    [
        (b"done\n", "pcci: timed out after 1 s: killing the job\n"),  # no empty line above
        (b"50%", "\npcci: timed out after 1 s: killing the job\n"),  # after a line cut short
    ],
)
def test_a_note_starts_its_own_line(before: bytes, note: str) -> None:
    clock = Clock()
    process, ended = job(clock)
    process.timeout = 1
    process.start_timeout()
    process.output_received(before, "stdout")
    clock.advance(1)
    assert ended[-1] == ("output", "stderr", note)
