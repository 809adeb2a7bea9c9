"""Monotonic reactor time, and a process noticing its own stalls."""

from __future__ import annotations

from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock

from pcci.clock import STALL, StallWatch, use_monotonic_clock


class Ticking:
    """A settable time source."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_wall_clock_step_does_not_fire_timers_early() -> None:
    reactor = SelectReactor()
    try:
        wall, monotonic = Ticking(1_700_000_000.0), Ticking(500.0)
        reactor.seconds = wall
        fired: list[str] = []
        reactor.callLater(10, fired.append, "scheduled before")
        use_monotonic_clock(reactor, monotonic)
        reactor.callLater(10, fired.append, "scheduled after")
        wall.now += 30  # NTP steps the wall clock forward
        reactor.runUntilCurrent()
        assert fired == []
        monotonic.now += 9.9
        reactor.runUntilCurrent()
        assert fired == []
        monotonic.now += 0.1
        reactor.runUntilCurrent()
        assert sorted(fired) == ["scheduled after", "scheduled before"]
    finally:
        reactor.waker.connectionLost(None)


def test_a_stall_gives_peers_a_fresh_interval() -> None:
    clock = Clock()
    watch = StallWatch(clock)
    watch.start()
    clock.pump([0.5] * 10)
    heard = clock.seconds()
    assert watch.quiet_since(heard) == heard
    clock.advance(STALL + 20)  # SIGSTOP: every timer is overdue at once
    assert watch.quiet_since(heard) == clock.seconds()
    clock.pump([0.5] * 4)
    assert watch.quiet_since(heard) == clock.seconds() - 2.0


def test_a_stopped_watch_changes_nothing() -> None:
    clock = Clock()
    watch = StallWatch(clock)
    clock.advance(100)
    assert watch.quiet_since(3.0) == 3.0
