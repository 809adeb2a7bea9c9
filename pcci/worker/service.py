"""
A worker as a service: keeps a connection to its master, reconnecting with
backoff forever, and kills its running jobs when it stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from pcci.identity import WorkerIdentity
from pcci.worker.connection import WorkerFactory
from pcci.worker.dialer import MasterDialer
from pcci.worker.health import start_cpu_sampling
from pcci.worker.jobs import JobTable
from pcci.worker.journal import JobJournal, kill_leftovers
from pcci.worker.reaper import become_subreaper, reap_orphans
from pcci.worker.received import ReceivedJobs
from pcci.worker.settings import WorkerSettings
from pcci.worker.upgrade import Upgrader, installed_prefix

log = Logger()

#: Reconnection delays: quick after a blip, at most 30 s apart, forever.
RETRY_POLICY = backoffPolicy(initialDelay=0.5, maxDelay=30.0)

#: Seconds between reaping the exited processes this worker inherited.
REAP_INTERVAL = 2.0


class WorkerService(MultiService):
    """
    A worker: kills what its last run left behind (from its job journal),
    then keeps a connection to one of its masters, moving to another when
    it goes and reconnecting with backoff forever, and kills its running
    jobs when it stops.
    """

    def __init__(
        self,
        reactor: Any,
        endpoints: Sequence[IStreamClientEndpoint],
        settings: WorkerSettings,
        identity: WorkerIdentity | None = None,
        on_dismissed: Callable[[str], None] | None = None,
        before_connect: Callable[[], Deferred[Any]] | None = None,
    ) -> None:
        super().__init__()
        journal = settings.journal
        self.jobs = JobTable(
            reactor,
            settings,
            journal=None if journal is None else JobJournal(journal, reactor),
            # Beside the journal: worker-NAME.received.
            received=None if journal is None else ReceivedJobs(journal.with_name(
                journal.name.removesuffix(".jobs.json") + ".received"
            )),
        )
        self.factory = WorkerFactory(reactor, settings, self.jobs, identity, on_dismissed or self._dismissed)
        prefix = installed_prefix()
        if prefix is not None:
            self.factory.upgrader = Upgrader(reactor, prefix, self.jobs, self.factory.tell_upgrade)
        #: What must be done before dialing: a join, with C{--join}.
        self.before_connect = before_connect
        # A connection counts as made once the master welcomed this worker:
        # failed handshakes back off like failed connects.
        self.client = MasterDialer(reactor, endpoints, self.factory, RETRY_POLICY)
        self.kill_grace = settings.kill_grace
        self.reactor = reactor
        self._reaper = LoopingCall(reap_orphans)
        self._reaper.clock = reactor

    def _dismissed(self, reason: str) -> None:
        self.client.stopService()

    def startService(self) -> None:
        start_cpu_sampling()
        super().startService()
        if self.factory.upgrader is not None:
            self.factory.upgrader.restarted()
        if become_subreaper():
            self._reaper.start(REAP_INTERVAL, now=False).addErrback(
                lambda f: log.failure("reaping stopped", f)
            )
        journal = self.jobs.journal
        if journal is None:
            self._connect()
            return
        d: Deferred[Any] = deferToThread(
            kill_leftovers, journal.path, self.jobs.marker_prefix, self.kill_grace, self.jobs.adopted_markers(),
        )
        d.addErrback(lambda f: log.failure("cannot clean up after the last run", f))
        received = self.jobs.received
        if received is not None:
            d.addCallback(lambda _: deferToThread(received.load))
            d.addErrback(lambda f: log.failure("cannot read the jobs this worker was sent", f))
        d.addCallback(lambda _: self._connect())

    def _connect(self) -> None:
        if self.before_connect is not None:
            before, self.before_connect = self.before_connect, None
            before().addCallback(lambda _: self._connect())
            return
        if self.running and self.client.parent is None:
            self.client.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        if self._reaper.running:
            self._reaper.stop()
        d: Deferred[Any] = self.jobs.kill_all()
        # Never hang shutdown on a process that will not die.
        d.addTimeout(self.kill_grace + 5, self.reactor)
        d.addErrback(lambda f: log.failure("jobs still running at shutdown", f))
        d.addCallback(lambda _: self._disconnect())
        journal, received = self.jobs.journal, self.jobs.received
        if journal is not None:
            d.addCallback(lambda _: journal.stop())
        if received is not None:
            d.addCallback(lambda _: received.close())
        d.addCallback(lambda _: MultiService.stopService(self))
        return d

    def _disconnect(self) -> Deferred[None] | None:
        """Close the connection once what was written (the jobs' ends) is sent."""
        connection = self.factory.connection
        if connection is None:
            return None
        connection.close()
        d = connection.closed
        d.addTimeout(5, self.reactor)
        d.addErrback(lambda f: None)
        return d
