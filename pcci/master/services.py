"""
The master's long-running services: its state with its store, its
listening ports, and the way its own worker dials in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pcci.daemon import stop_with_error
from pcci.master.cluster.state import ClusterState
from pcci.master.cluster.upgrades import KEPT as KEPT_ROLLOUTS
from pcci.master.cluster.upgrades import Rollout
from pcci.master.store.base import PoolStore, StoreError

if TYPE_CHECKING:
    from pcci.master.access.tokens import TokenBook
    from pcci.master.cluster.schedules import Scheduler
    from pcci.master.webhooks.notifier import Notifier

#: Seconds workers' facts (and rollouts' changes) are gathered before they are written at once.
GATHER_DELAY = 1.0

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
        factory: IProtocolFactory,
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
            log.info("listening for {what} on {address}", what=self.what, address=_address(port))
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


def _address(port: IListeningPort) -> str:
    """Where a port listens, as a person writes it: C{0.0.0.0:7000}, C{/run/pcci.sock}."""
    where = port.getHost()
    if isinstance(where, UNIXAddress):
        return str(where.name)
    if isinstance(where, IPv6Address):
        return f"[{where.host}]:{where.port}"
    return f"{getattr(where, 'host', where)}:{getattr(where, 'port', '')}"


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


@implementer(IStreamClientEndpoint)
class LocalPortEndpoint:
    """
    Dials a port of this process once it listens (its number may be chosen
    by the system): how the master's own worker reaches the worker port.
    """

    def __init__(self, reactor: Any, port: ListeningService) -> None:
        self.reactor = reactor
        self.port = port

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        d = self.port.when_listening()
        return d.addCallback(
            lambda port: local_client_endpoint(self.reactor, port).connect(factory)
        )


class StateService(Service):
    """
    The master's state over time: at start, opens the store, carries on
    with the pools that had not ended, reads the tokens kept there, arms
    the schedules and delivers the webhooks queued; at stop, cancels the
    timers, writes what waits and closes the store.
    """

    def __init__(
        self,
        reactor: Any,
        state: ClusterState,
        store: PoolStore,
        tokens: TokenBook | None = None,
        scheduler: Scheduler | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.store = store
        self.tokens = tokens
        self.scheduler = scheduler
        self.notifier = notifier
        self._write_upgrades: Callable[[], None] | None = None

    def _keep_facts(self) -> None:
        """
        Workers' facts: those kept read back, those told from now on
        written, gathered for a second into one transaction (a master's
        start brings its whole fleet's at once).
        """
        facts = self.store.facts
        facts.all().addCallbacks(
            self.state.roster.remember_facts,
            lambda f: log.error("cannot read the workers' facts kept in the store: {why}", why=f.getErrorMessage()),
        )
        waiting: dict[str, tuple[float, dict[str, Any]]] = {}

        def write() -> None:
            told = [(name, at, found) for name, (at, found) in waiting.items()]
            waiting.clear()
            facts.put(told).addErrback(
                lambda f: log.warn("{count} workers' facts not stored: {why}", count=len(told),
                                   why=f.getErrorMessage())
            )

        def keep(name: str, told_at: float, told: dict[str, Any]) -> None:
            if not waiting:
                self.reactor.callLater(GATHER_DELAY, write)
            waiting[name] = (told_at, told)

        self.state.roster.facts_hooks.append(keep)

    def _keep_upgrades(self) -> None:
        """
        Workers' upgrade rollouts: those this master ran before it stopped
        read back and carried on; each change written (a second's worth of
        them at once).
        """
        upgrades, table, name = self.state.upgrades, self.store.upgrades, self.state.peers.name or ""
        table.of(name, KEPT_ROLLOUTS).addCallbacks(
            upgrades.resume,
            lambda f: log.error("cannot read the upgrades kept in the store: {why}", why=f.getErrorMessage()),
        )
        waiting: dict[str, Rollout] = {}

        def failed(failure: Failure, rollout_id: str) -> None:
            log.warn("upgrade {id} not stored: {why}", id=rollout_id, why=failure.getErrorMessage())

        def write() -> None:
            changed = list(waiting.values())
            waiting.clear()
            for rollout in changed:
                table.put(name, rollout.record()).addErrback(failed, rollout.id)

        def keep(rollout: Rollout) -> None:
            if not waiting:
                self.reactor.callLater(GATHER_DELAY, write)
            waiting[rollout.id] = rollout

        upgrades.change_hooks.append(keep)
        self._write_upgrades = write

    def startService(self) -> None:
        super().startService()
        try:
            records = self.store.open()
        except StoreError as e:
            log.critical("{why}", why=e)
            stop_with_error(self.reactor)
            return
        carried = self.state.reports.carry_on(records)
        if carried:
            log.info("{count} pools were running when the master stopped: their workers"
                     " may carry on with them", count=carried)
        self.state.history.start()
        self.state.peers.start()
        self._keep_facts()
        self._keep_upgrades()
        if self.tokens is not None:
            self.tokens.refresh().addErrback(
                lambda f: log.error("cannot read the tokens kept in the store: {why}", why=f.getErrorMessage())
            )
        if self.notifier is not None:
            self.notifier.start()
        if self.scheduler is not None:
            self.scheduler.start().addErrback(
                lambda f: log.error("cannot read the schedules: {why}", why=f.getErrorMessage())
            )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._write_upgrades is not None:
            self._write_upgrades()  # before the store closes
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.notifier is not None:
            self.notifier.stop()
        self.state.stop()
        d = self.state.peers.stop()
        d.addErrback(lambda f: log.error("workers not marked offline at exit: {why}", why=f.getErrorMessage()))
        d.addCallback(lambda _: self.state.history.flush())
        d.addErrback(lambda f: log.error("pools not written at exit: {why}", why=f.getErrorMessage()))
        d.addBoth(lambda _: self.store.close())
        return d
