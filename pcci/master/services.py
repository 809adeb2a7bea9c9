"""
The master's long-running services: its listening ports, the per-address
connection limit, and the worker it may run in its own process.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from pcci.worker.service import WorkerService

log = Logger()

def stop_with_error(reactor: Any) -> None:
    """Stop the daemon, cleanly, and exit with status 1 so supervisors see it."""
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    reactor.callWhenRunning(reactor.stop)


class ListeningService(Service):
    """
    Listens on a server endpoint, tells who asks which port it got, and stops
    the daemon when it cannot listen (a master without its ports is useless).
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamServerEndpoint,
        factory: Factory,
        what: str,
    ) -> None:
        self.reactor = reactor
        self.what = what
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.factory)

        def listening(port: IListeningPort) -> None:
            self.port = port
            log.info("listening for {what} on {address}", what=self.what, address=port.getHost())
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(port)

        def failed(failure: Any) -> None:
            log.critical(
                "cannot listen for {what}: {why}",
                what=self.what,
                why=failure.getErrorMessage(),
            )
            stop_with_error(self.reactor)

        d.addCallbacks(listening, failed)

    def when_listening(self) -> Deferred[IListeningPort]:
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class ConnectionLimit(WrappingFactory):
    """Closes at once a connection beyond C{limit} open from one address."""

    def __init__(self, wrapped: Factory, limit: int) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.per_address: Counter[str] = Counter()
        self._addresses: dict[ProtocolWrapper, str] = {}

    def buildProtocol(self, addr: IAddress) -> ProtocolWrapper | None:
        host = getattr(addr, "host", None)
        if host is not None and self.per_address[host] >= self.limit:
            log.warn(
                "refused a connection from {host}: it holds {limit} already",
                host=host,
                limit=self.limit,
            )
            return None
        protocol = super().buildProtocol(addr)
        if host is not None and protocol is not None:
            self.per_address[host] += 1
            self._addresses[protocol] = host
        return protocol

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        super().unregisterProtocol(protocol)
        host = self._addresses.pop(protocol, None)
        if host is not None:
            self.per_address[host] -= 1
            if not self.per_address[host]:
                del self.per_address[host]


def local_client_endpoint(reactor: Any, port: IListeningPort) -> IStreamClientEndpoint:
    """A client endpoint that reaches C{port} from this machine."""
    address = port.getHost()
    if isinstance(address, UNIXAddress):
        return UNIXClientEndpoint(reactor, address.name)
    if isinstance(address, IPv6Address):
        host = "::1" if address.host == "::" else address.host
        return TCP6ClientEndpoint(reactor, host, address.port)
    if isinstance(address, IPv4Address):
        host = "127.0.0.1" if address.host == "0.0.0.0" else address.host
        return TCP4ClientEndpoint(reactor, host, address.port)
    raise ValueError(f"cannot dial {address} for the local worker")


class LocalWorkerService(MultiService):
    """A worker in the master's own process, dialing the master's worker port."""

    def __init__(
        self,
        reactor: Any,
        workers_port: ListeningService,
        name: str,
        secret: bytes | None,
        kill_grace: float,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.workers_port = workers_port
        self.name = name
        self.secret = secret
        self.kill_grace = kill_grace
        self.worker: WorkerService | None = None

    def startService(self) -> None:
        super().startService()
        self.workers_port.when_listening().addCallback(self._start_worker)

    def _start_worker(self, port: IListeningPort) -> None:
        if not self.running:
            return
        endpoint = local_client_endpoint(self.reactor, port)
        self.worker = WorkerService(
            self.reactor, endpoint, self.name, self.secret, self.kill_grace
        )
        self.worker.setServiceParent(self)
