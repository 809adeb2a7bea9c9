"""The worker's redialing, with a Clock and endpoints that fail."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from pcci.worker.connection import JoinFailed, WorkerFactory
from pcci.worker.dialer import HELD_LONG, MasterDialer
from pcci.worker.jobs import JobTable
from pcci.worker.settings import WorkerSettings


class Endpoint:
    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def connect(self, factory):
        self.calls += 1
        return self.outcomes.pop(0)() if self.outcomes else fail(ConnectionRefusedError())


class Joining:
    """A connection whose handshake ends as told."""

    def __init__(self) -> None:
        self.joined: Deferred = Deferred()
        self.welcomed = False


def test_failed_attempts_back_off_and_a_welcome_resets_them() -> None:
    clock = Clock()
    joining = Joining()
    endpoint = Endpoint([
        lambda: fail(ConnectionRefusedError()),
        lambda: fail(ConnectionRefusedError()),
        lambda: _fired(joining),
    ])
    factory = WorkerFactory(clock, WorkerSettings("pi1"), JobTable(clock, WorkerSettings("pi1")))
    delays = []
    dialer = MasterDialer(clock, [endpoint], factory, lambda n: delays.append(n) or 2.0 ** n)
    dialer.startService()
    assert endpoint.calls == 1 and delays == [0]
    clock.advance(1)
    assert endpoint.calls == 2 and delays == [0, 1]
    clock.advance(2)
    assert endpoint.calls == 3
    joining.welcomed = True
    joining.joined.callback(joining)
    factory.on_lost(joining)  # the master went away: redial soon, from the start
    assert delays == [0, 1, 0]
    dialer.stopService()
    assert clock.getDelayedCalls() == []


def test_a_handshake_that_fails_is_a_failed_attempt() -> None:
    clock = Clock()
    joining = Joining()
    factory = WorkerFactory(clock, WorkerSettings("pi1"), JobTable(clock, WorkerSettings("pi1")))
    dialer = MasterDialer(clock, [Endpoint([lambda: _fired(joining)])], factory, lambda n: 5.0)
    dialer.startService()
    factory.on_lost(joining)  # closed before the welcome: not a redial of its own
    joining.joined.errback(JoinFailed("wrong secret"))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5.0]
    dialer.stopService()


def test_several_masters_start_anywhere_and_move_on_when_one_goes() -> None:
    clock = Clock()
    first, second = Joining(), Joining()
    m1 = Endpoint([lambda: _fired(first), lambda: fail(ConnectionRefusedError())])
    m2 = Endpoint([lambda: fail(ConnectionRefusedError()), lambda: _fired(second)])
    factory = WorkerFactory(clock, WorkerSettings("pi1"), JobTable(clock, WorkerSettings("pi1")))
    delays = []
    dialer = MasterDialer(
        clock, [m1, m2], factory, lambda n: delays.append(n) or 1.0, choose=lambda count: 1
    )
    dialer.startService()
    assert (m1.calls, m2.calls) == (0, 1)  # started where it was told: m2, which refuses
    clock.advance(1)
    assert (m1.calls, m2.calls) == (1, 1)  # then the next one, with no backoff yet
    first.welcomed = True
    first.joined.callback(first)
    factory.on_lost(first)  # m1 goes: over to m2
    clock.advance(1)
    assert (m1.calls, m2.calls) == (1, 2) and dialer.current == 1
    second.welcomed = True
    second.joined.callback(second)
    assert delays == [0, 0]  # a failure within a round, then a loss: the least delay each time
    dialer.stopService()


def test_a_whole_round_of_failures_backs_off() -> None:
    clock = Clock()
    masters = [Endpoint([]), Endpoint([]), Endpoint([])]  # all refuse
    factory = WorkerFactory(clock, WorkerSettings("pi1"), JobTable(clock, WorkerSettings("pi1")))
    delays = []
    dialer = MasterDialer(clock, masters, factory, lambda n: delays.append(n) or 1.0, choose=lambda count: 0)
    dialer.startService()
    clock.advance(1)
    clock.advance(1)
    clock.advance(1)
    assert [m.calls for m in masters] == [2, 1, 1]
    assert delays == [0, 0, 0, 1]  # the second round waits longer
    dialer.stopService()


def _fired(value):
    d = Deferred()
    d.callback(value)
    return d


def test_a_replaced_connection_redials_with_backoff_that_grows_in_a_row() -> None:
    clock = Clock()
    factory = WorkerFactory(clock, WorkerSettings("pi1"), JobTable(clock, WorkerSettings("pi1")))
    joinings = [Joining() for _ in range(4)]
    endpoint = Endpoint([lambda j=j: _fired(j) for j in joinings])
    dialer = MasterDialer(clock, [endpoint], factory, lambda n: 2.0 ** n)
    dialer.startService()
    waits = []
    for joining in joinings[:3]:
        joining.welcomed = True
        joining.joined.callback(joining)
        factory.replacements += 1  # the master said another took the name
        factory.on_lost(joining)
        (call,) = clock.getDelayedCalls()
        waits.append(call.getTime() - clock.seconds())
        clock.advance(waits[-1])
    assert waits == [2.0, 4.0, 8.0]
    # Held for long, a replacement starts the count again.
    joinings[3].welcomed = True
    joinings[3].joined.callback(joinings[3])
    clock.advance(HELD_LONG + 1)
    factory.replacements += 1
    factory.on_lost(joinings[3])
    (call,) = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 2.0
    dialer.stopService()
