"""
Running jobs handed from one version of the worker to the next across an
upgrade's C{exec} (see L{pcci.worker.upgrade}), so that they run on.

The process keeps its pid through an C{exec}, so a job's process stays its
child; what it would lose is the pipes it reads the job's output from,
which it keeps open for the new image (inheritable) and names in the
upgrade's record, with the job's place: its pid, the seconds left of its
timeout and the bytes of a character cut between two reads.  The new
version reads the pipes again and reaps the child as Twisted would
(L{pcci.twisted_internals.AdoptedProcess}); its job table keeps the job's
output and numbering (L{pcci.worker.jobs.JobTable.adopt}), and the master
carries on with it as after any reconnection (C{attach}).

A job hands over only as it is: started, its input closed, not exited nor
being killed (those end first).
"""

from __future__ import annotations

import os
from typing import Any

import psutil
from twisted.internet.interfaces import IDelayedCall

from pcci.twisted_internals import AdoptedProcess, let_go


def my_child(pid: int) -> bool:
    """Whether C{pid} is this process's child: after an C{exec}, what it spawned before still is."""
    try:
        return psutil.Process(pid).ppid() == os.getpid()
    except psutil.Error:
        return False


class HandsOver:
    """What of a L{pcci.worker.process.JobProcess} goes to the worker's next version, and back in it."""

    _reactor: Any
    _transport: Any
    _output: Any
    _timeout_call: IDelayedCall | None
    _paused: bool
    started: bool
    exited: bool
    killing: bool
    ended: bool
    pid: int | None

    def _cancel_timers(self) -> None:
        raise NotImplementedError

    def _timed_out(self) -> None:
        raise NotImplementedError

    def process_protocol(self) -> Any:
        raise NotImplementedError

    def can_hand_over(self) -> bool:
        """Whether it runs on as it is: started, its input closed, not exited and not being killed."""
        process = self._transport
        return (
            self.started and not (self.exited or self.killing or self.ended)
            and process is not None and process.pid is not None and 0 not in process.pipes
        )

    def hand_over(self) -> dict[str, Any]:
        """
        Let the running process go, its output so far told: what the next
        version needs to carry on with it (L{adopt}).  Nothing more of it
        happens here.
        """
        assert self.can_hand_over()
        left = None
        if self._timeout_call is not None and self._timeout_call.active():
            left = max(0.0, self._timeout_call.getTime() - self._reactor.seconds())
        self._cancel_timers()  # what it printed is told
        self.ended = True
        return {"pid": self.pid, "pipes": let_go(self._transport), "timeout_left": left,
                "partial": self._output.partial()}

    def adopt(self, handed: dict[str, Any]) -> None:
        """Carry on with a job the version before this one ran (see L{hand_over})."""
        self.started = True
        self.pid = int(handed["pid"])
        self._output.carry_on(handed.get("partial") or {})
        if handed.get("timeout_left") is not None:
            self._timeout_call = self._reactor.callLater(float(handed["timeout_left"]), self._timed_out)
        pipes = {int(child): int(fd) for child, fd in handed["pipes"].items()}
        self._transport = AdoptedProcess(self._reactor, self.pid, pipes, self.process_protocol())
        if self._paused and not self.ended:
            self._transport.pauseProducing()
