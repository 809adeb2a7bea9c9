"""
A worker as a service: keeps a connection to its master, reconnecting with
backoff forever, and kills its running jobs when it stops.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger

from pcci.worker.connection import DEFAULT_HEARTBEAT, WorkerFactory
from pcci.worker.health import start_cpu_sampling

log = Logger()

#: Reconnection delays: quick after a blip, at most 30 s apart, forever.
RETRY_POLICY = backoffPolicy(initialDelay=0.5, maxDelay=30.0)


class WorkerService(MultiService):
    """
    A worker: keeps a connection to its master, reconnecting with backoff
    forever, and kills its running jobs when it stops.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        name: str,
        secret: bytes | None,
        kill_grace: float,
        on_dismissed: Callable[[str], None] | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        disk: str = "/",
    ) -> None:
        super().__init__()
        self.factory = WorkerFactory(
            reactor,
            name,
            secret,
            kill_grace,
            on_dismissed or self._dismissed,
            heartbeat=heartbeat,
            disk=disk,
        )
        # A connection counts as made once the master welcomed this worker:
        # failed handshakes back off like failed connects.
        self.client = ClientService(
            endpoint,
            self.factory,
            retryPolicy=RETRY_POLICY,
            prepareConnection=lambda connection: connection.joined,
        )
        self.client.setServiceParent(self)
        self.kill_grace = kill_grace
        self.reactor = reactor

    def _dismissed(self, reason: str) -> None:
        self.client.stopService()

    def startService(self) -> None:
        start_cpu_sampling()
        super().startService()

    def stopService(self) -> Deferred[None]:
        d = self.factory.kill_all()
        # Never hang shutdown on a process that will not die.
        d.addTimeout(self.kill_grace + 5, self.reactor)
        d.addErrback(lambda f: log.failure("jobs still running at shutdown", f))
        d.addCallback(lambda _: self._disconnect())
        d.addCallback(lambda _: MultiService.stopService(self))
        return d

    def _disconnect(self) -> None:
        if self.factory.connection is not None:
            self.factory.connection.close()
