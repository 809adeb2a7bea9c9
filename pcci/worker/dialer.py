"""
Dialing a master, for as long as the worker runs: one of several, moving to
the next when the one it holds goes.

Like Twisted's C{ClientService}, but a connection counts as made only once
the master has welcomed the worker, and a connection that closes during the
handshake is an ordinary failed attempt: it backs off like a failed connect
and is logged once, by the connection itself.  (C{ClientService} with a
C{prepareConnection} raises on such a close.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.worker.connection import JoinFailed, MasterConnection, WorkerFactory

log = Logger()

#: Seconds a connection must have lasted for its replacement not to count
#: as one more in a row.
HELD_LONG = 300.0


class MasterDialer(Service):
    """
    Keeps one connection to one of C{endpoints} (its masters).  It starts at
    a random one, so that workers spread over the masters, and moves to the
    next whenever a dial fails or the connection goes (closed, or silent for
    three heartbeats).  Every master is tried once before backing off: the
    delay is C{retry(rounds)} after C{rounds} whole rounds of failures.
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[IStreamClientEndpoint],
        factory: WorkerFactory,
        retry: Callable[[int], float],
        choose: Callable[[int], int] = lambda count: random.randrange(count),
    ) -> None:
        if not endpoints:
            raise ValueError("a worker needs at least one master")
        self.reactor = reactor
        self.endpoints = list(endpoints)
        self.factory = factory
        self.retry = retry
        #: The master dialed, or held: its index in C{endpoints}.
        self.current = choose(len(self.endpoints))
        self._failures = 0
        self._joined_at = 0.0
        self._dialing: Deferred[Any] | None = None
        self._next: IDelayedCall | None = None
        factory.on_lost = self._lost

    def startService(self) -> None:
        super().startService()
        self._dial()

    def stopService(self) -> None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._dialing is not None:
            self._dialing.cancel()

    def _dial(self) -> None:
        self._next = None
        if not self.running:
            return
        d: Deferred[Any] = self.endpoints[self.current].connect(self.factory)
        self._dialing = d
        d.addCallback(lambda connection: connection.joined)
        d.addCallbacks(self._joined, self._failed)

    def _joined(self, connection: MasterConnection) -> None:
        self._dialing = None
        self._failures = 0
        self._joined_at = self.reactor.seconds()

    def _failed(self, failure: Failure) -> None:
        self._dialing = None
        if not self.running:
            return
        # A handshake that failed was logged by its connection already.
        if self._failures == 0 and not failure.check(JoinFailed):
            log.info("cannot reach the master: {why}", why=failure.getErrorMessage())
        self._schedule()

    def _lost(self, connection: MasterConnection) -> None:
        """A welcomed connection closed: dial again (a handshake's own end is a failure)."""
        if connection.welcomed and self.running and self._dialing is None:
            self._schedule()

    def _schedule(self) -> None:
        """Dial the next master: quickly while a round lasts, then with backoff."""
        if self._next is not None and self._next.active():
            return
        count = len(self.endpoints)
        if count > 1:
            self.current = (self.current + 1) % count
        delay = self.retry(self._failures // count)
        replaced = self.factory.replacements
        if replaced:
            if self.reactor.seconds() - self._joined_at > HELD_LONG:
                self.factory.replacements = replaced = 1  # held long: a fresh start
            delay = max(delay, self.retry(replaced))
        self._failures += 1
        self._next = self.reactor.callLater(delay, self._dial)
