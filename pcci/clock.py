"""
Time for the daemons: a reactor on the monotonic clock, and noticing when
the reactor itself stood still.

Twisted's reactor schedules its timers on the wall clock, so an NTP step
(routine on a Raspberry Pi without a real-time clock, or a resumed VM)
fires every timer early or holds them all back.  Both daemons move their
reactor to C{time.monotonic} before anything is scheduled; timestamps shown
to people stay wall-clock (C{time.time}).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pcci.twisted_internals import rebase_timers

log = Logger()


def use_monotonic_clock(
    reactor: Any, monotonic: Callable[[], float] = time.monotonic
) -> None:
    """
    Make C{reactor} keep time with C{monotonic}, moving the timers already
    scheduled so each still fires after the delay it was given.
    """
    if getattr(reactor, "seconds", None) is not monotonic:
        rebase_timers(reactor, monotonic)


#: Seconds between the stall watch's ticks.
TICK = 0.5

#: A tick this late means the whole process stood still (SIGSTOP, swap).
STALL = 3.0


class StallWatch:
    """
    Notices when this process stopped running for a while, so that it does
    not blame a peer for a silence that was its own.

    After a stall the reactor runs every overdue timer before it reads a
    single byte of what the peers sent meanwhile: a liveness check asks
    L{quiet_since} and measures silence from the moment this process woke.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._last_tick = clock.seconds()
        self._woke_at = float("-inf")
        self._loop = LoopingCall(self._notice_stall)
        self._loop.clock = clock

    def start(self) -> None:
        self._last_tick = self.clock.seconds()
        if not self._loop.running:
            self._loop.start(TICK, now=False).addErrback(
                lambda f: log.failure("the stall watch stopped", f)
            )

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _notice_stall(self) -> None:
        now = self.clock.seconds()
        late = now - self._last_tick
        if late > STALL:
            log.warn(
                "this process stood still for {late:.1f} s: peers get a fresh"
                " interval before they are judged silent",
                late=late,
            )
            self._woke_at = now
        self._last_tick = now

    def quiet_since(self, last_heard: float) -> float:
        """
        When a peer last heard from at C{last_heard} counts as silent from:
        that moment, or the moment this process woke from a stall.
        """
        if self._loop.running:
            self._notice_stall()
        return max(last_heard, self._woke_at)
