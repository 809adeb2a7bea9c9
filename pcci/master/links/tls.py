"""
TLS and plain TCP on one worker port, told apart by a connection's first
byte: a TLS record of a handshake starts with 0x16, a frame of the wire
protocol never does (see L{pcci.wire}).  So workers with identities and
workers of before (the cluster secret, in the clear) share the port while
a cluster moves over, and an identity-only master can still answer a
plain connection with a C{bye} that says why.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from pcci.master.links.connection import WorkerPortFactory
from pcci.twisted_internals import write_now
from pcci.wire import peer_address

log = Logger()

#: Seconds between two certificates of the master's on the worker port (each is good for a year).
RENEW_EVERY = 30 * 86400.0

#: The first byte of a TLS handshake record.
TLS_HANDSHAKE = b"\x16"


class Sniffer(Protocol):
    """A new connection until its first byte: then TLS or plain, for the rest of it."""

    def __init__(self, factory: SniffingFactory, addr: IAddress | None) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: Protocol | None = None
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._timeout = self.factory.clock.callLater(self.factory.workers.handshake_timeout, self._silent)

    def _silent(self) -> None:
        self._timeout = None
        if self.inner is None and self.transport is not None:
            log.warn(
                "closing connection from {peer}: no handshake within {seconds:g} seconds",
                peer=peer_address(self.transport), seconds=self.factory.workers.handshake_timeout,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.inner is None:
            if self._timeout is not None and self._timeout.active():
                self._timeout.cancel()
            self.inner = self._choose(data[:1] == TLS_HANDSHAKE)
            self.inner.makeConnection(self.transport)
        self.inner.dataReceived(data)

    def _choose(self, tls: bool) -> Protocol:
        workers = self.factory.workers
        connection = workers.buildProtocol(self.addr)
        connection.outer_transport = self.transport
        if not tls or self.factory.tls is None:
            return connection
        connection.tls = True
        return TLSOverSocket(self.factory.tls, connection)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class WritesThrough:
    """
    The transport under TLS, whose writes go straight on the socket when
    nothing waits before them (L{write_now}): a TLS record then costs one
    C{send()}, not also the reactor's watch for writing and its end (two
    C{epoll_ctl}), as a plain connection's frames do already.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        directlyProvides(self, providedBy(transport))

    def write(self, data: bytes) -> None:
        write_now(self._transport, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TLSOverSocket(TLSMemoryBIOProtocol):
    """Twisted's TLS, its records written through L{WritesThrough}."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(WritesThrough(transport))


class SniffingFactory(Factory[Sniffer]):
    """
    The worker port: L{WorkerConnection}s, over TLS when a worker speaks
    it, with the settings C{make_tls} gives (the master's certificate),
    made again every C{renew_every} seconds so that a master running for
    years never serves an expired one.  Connections keep the settings they
    began with.
    """

    noisy = False

    def __init__(
        self, workers: WorkerPortFactory, make_tls: Callable[[], Any] | None, clock: IReactorTime,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self.workers = workers
        self.clock = clock
        self.tls: TLSMemoryBIOFactory | None = None
        #: The TLS settings new connections get (C{CertificateOptions}).
        self.tls_options: Any = None
        self._make_tls = make_tls
        self._renewals = None if make_tls is None else LoopingCall(self.renew)
        if self._renewals is not None:
            self._renewals.clock = clock
            self._renew_every = renew_every
            self.renew()

    def renew(self) -> None:
        assert self._make_tls is not None
        self.tls_options = self._make_tls()
        self.tls = TLSMemoryBIOFactory(self.tls_options, False, self.workers)

    def doStart(self) -> None:
        super().doStart()
        self.workers.doStart()
        if self._renewals is not None and not self._renewals.running:
            self._renewals.start(self._renew_every, now=False)

    def doStop(self) -> None:
        if self._renewals is not None and self._renewals.running:
            self._renewals.stop()
        self.workers.doStop()
        super().doStop()

    def buildProtocol(self, addr: IAddress | None) -> Sniffer:
        return Sniffer(self, addr)

