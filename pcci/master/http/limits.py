"""
Limits on the master's connections, so no crowd of clients can take the
ports away from the workers and the people who need them.

- Per address: connections that have proven nothing yet (API clients, and
  workers until their handshake is done) are limited per peer address, so
  a lab of workers behind one NAT address is never turned away.
- Overall: both ports share a budget below the process's open-file limit,
  with room kept for workers.  The API at its share closes its longest-idle
  connection (one with no request under way) for a new one.
- In time: an HTTP request must arrive whole within a deadline that starts
  when the connection is accepted, or when its previous answer was sent:
  trickling bytes does not extend it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocolFactory, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from pcci.master.http.guards import refuse

log = Logger()

#: Open files kept out of the connection budget: logs, pipes, the store.
FILE_MARGIN = 128


class ConnectionBudget:
    """Open connections of both ports, against one total."""

    def __init__(self, total: int, workers_reserve: int) -> None:
        self.total = max(2, total)
        self.workers_reserve = min(workers_reserve, self.total // 2)
        self.open = {"api": 0, "workers": 0}

    @classmethod
    def for_file_limit(cls, files: int) -> ConnectionBudget:
        """A budget under C{files} open files; a quarter of it kept for workers."""
        total = max(16, files - FILE_MARGIN)
        return cls(total, total // 4)

    def room(self, kind: str) -> bool:
        used = sum(self.open.values())
        if used >= self.total:
            return False
        if kind == "api":
            return self.open["api"] < self.total - self.workers_reserve
        return True


class GuardedConnection(ProtocolWrapper):
    """One connection under the limits; for HTTP, with its request deadline."""

    factory: ConnectionLimit

    def __init__(self, factory: ConnectionLimit, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self.host: str | None = None
        #: Counted against the budget, and against its address.
        self.counted = False
        self.holds_address = False
        self.idle_since: float | None = None
        self._deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._arm()
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        super().connectionLost(reason)

    # Request deadlines (HTTP only): see BoundedRequest.

    @property
    def idle(self) -> bool:
        """No request under way: the connection waits for one."""
        return self.idle_since is not None

    def proved(self) -> None:
        """Its peer proved itself (a valid token, a worker's handshake): it stops counting per address."""
        self.factory.prove(self)

    def request_arrived(self) -> None:
        self._disarm()
        self.idle_since = None

    def request_done(self) -> None:
        if self.connected:
            self._arm()

    def _arm(self) -> None:
        self.idle_since = self.factory.clock.seconds()
        timeout = self.factory.receive_timeout
        if timeout is None or self._deadline is not None:
            return
        self._deadline = self.factory.clock.callLater(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        refuse(
            self.transport,
            b"408 Request Timeout",
            f"the request did not arrive whole within {self.factory.receive_timeout:g} seconds",
        )


class ConnectionLimit(WrappingFactory["GuardedConnection"]):
    """
    Wraps a port's factory with the limits: C{per_address} unproven
    connections from one address, the shared C{budget} of C{kind} ("api"
    or "workers"), and for HTTP a C{receive_timeout} per request.
    """

    protocol = GuardedConnection
    #: A person reads the log: no "Starting factory <... at 0x7f...>" lines.
    noisy = False

    def __init__(
        self,
        wrapped: IProtocolFactory,
        per_address: int,
        clock: IReactorTime,
        budget: ConnectionBudget | None = None,
        kind: str = "api",
        receive_timeout: float | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.per_address = per_address
        self.clock = clock
        self.budget = budget or ConnectionBudget(1 << 30, 0)
        self.kind = kind
        self.receive_timeout = receive_timeout
        self.unproven: Counter[str] = Counter()

    def logPrefix(self) -> str:
        return f"pcci {self.kind} port"

    # Twisted types WrappingFactory.buildProtocol without the None that
    # Factory.buildProtocol may answer to refuse a connection.
    def buildProtocol(self, addr: IAddress | None) -> GuardedConnection | None:  # type: ignore[override]
        host = getattr(addr, "host", None)
        if host is not None and self.unproven[host] >= self.per_address:
            log.warn(
                "refused a connection from {host}: it holds {limit} already",
                host=host,
                limit=self.per_address,
            )
            return None
        if not self.budget.room(self.kind) and not self._evict_idle():
            log.warn(
                "refused a connection from {host}: {open} connections are open,"
                " the most this master can hold",
                host=host,
                open=sum(self.budget.open.values()),
            )
            return None
        protocol = cast("GuardedConnection | None", super().buildProtocol(addr))
        if protocol is None:
            return None
        self.budget.open[self.kind] += 1
        protocol.counted = True
        if host is not None:
            protocol.host = host
            protocol.holds_address = True
            self.unproven[host] += 1
        return protocol

    def _evict_idle(self) -> bool:
        """Close the API connection idle the longest, if any is."""
        if self.kind != "api":
            return False
        idle = [p for p in self.protocols if p.idle and p.counted]
        if not idle:
            return False
        oldest = min(idle, key=lambda p: p.idle_since)
        log.info("closing an idle connection from {host} to make room", host=oldest.host)
        self._forget(oldest)
        oldest.transport.abortConnection()
        return True

    def prove(self, transport: Any) -> None:
        """The peer on C{transport} proved itself: it stops counting per address."""
        if isinstance(transport, GuardedConnection):
            self._release_address(transport)

    def _release_address(self, protocol: GuardedConnection) -> None:
        if protocol.holds_address and protocol.host is not None:
            protocol.holds_address = False
            self.unproven[protocol.host] -= 1
            if self.unproven[protocol.host] <= 0:
                del self.unproven[protocol.host]

    def _forget(self, protocol: GuardedConnection) -> None:
        if protocol.counted:
            protocol.counted = False
            self.budget.open[self.kind] -= 1
            self._release_address(protocol)

    def unregisterProtocol(self, protocol: GuardedConnection) -> None:
        self._forget(protocol)
        super().unregisterProtocol(protocol)
