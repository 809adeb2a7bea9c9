"""
The master's long-running services: its listening ports and the worker it
may run in its own process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from pcci.daemon import stop_with_error
from pcci.worker.service import WorkerService

log = Logger()

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
        max_jobs: int | None = None,
        journal: Path | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.workers_port = workers_port
        self.name = name
        self.secret = secret
        self.kill_grace = kill_grace
        self.max_jobs = max_jobs
        self.journal = journal
        self.worker: WorkerService | None = None

    def startService(self) -> None:
        super().startService()
        self.workers_port.when_listening().addCallback(self._start_worker)

    def _start_worker(self, port: IListeningPort) -> None:
        if not self.running:
            return
        endpoint = local_client_endpoint(self.reactor, port)
        self.worker = WorkerService(
            self.reactor,
            endpoint,
            self.name,
            self.secret,
            self.kill_grace,
            max_jobs=self.max_jobs,
            journal=self.journal,
        )
        self.worker.setServiceParent(self)
