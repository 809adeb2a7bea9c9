"""
A worker's first meeting with its cluster: C{--join tls:HOST:PORT --token
TOKEN}.

The worker makes its key (kept at once, 0600; it never leaves the
machine), dials the master over TLS trusting nothing yet, and checks the
master's chain against the token's pin before it sends a byte: a master
that is not the one that made the token learns nothing, not even the
token.  Then it sends its name, labels and a certificate request with the
token, and keeps what the master signs.  From then on it dials with that
identity (see L{identity_endpoint}).

Python 3.9: a worker imports this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pcci.identity import EXIT_PIN, EXIT_STATUSES, IdentityError, JoinToken, WorkerIdentity, check_pinned_chain
from pcci.wire import MASTER_MESSAGES, FramedJSONProtocol, peer_address

log = Logger()


class JoinRefused(Exception):
    """A join that trying again cannot mend: C{status} is the worker's exit status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def plain_endpoint(description: str) -> str:
    """The TCP (or unix) endpoint under a client endpoint's description: C{tls:h:p:…} is C{tcp:h:p}."""
    kind, _, rest = description.partition(":")
    if kind in ("tls", "ssl"):
        host, port = rest.split(":")[:2]
        return f"tcp:{host}:{port}"
    return description


@implementer(IStreamClientEndpoint)
class IdentityEndpoint:
    """
    Dials a master: with this worker's identity once it has one (mutual
    TLS over the endpoint's TCP, whatever its description said), as
    described before that (the cluster secret, or C{--no-auth}).
    """

    def __init__(self, reactor: Any, description: str, identity: Callable[[], WorkerIdentity | None]) -> None:
        self.reactor = reactor
        self.description = description
        #: This worker's identity of the moment.
        self.identity = identity

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        identity = self.identity()
        if identity is None or identity.certificate is None:
            return clientFromString(self.reactor, self.description).connect(factory)
        tcp = clientFromString(self.reactor, plain_endpoint(self.description))
        endpoint: IStreamClientEndpoint = wrapClientTLS(identity.client_tls(), tcp)
        return endpoint.connect(factory)


@implementer(IHandshakeListener)
class JoinConnection(FramedJSONProtocol):
    """One join: the pin checked once TLS is up, then the token and request sent, and the answer kept."""

    accepts = {code: MASTER_MESSAGES[code] for code in ("certificate", "bye")}
    factory: JoinFactory

    def handshakeCompleted(self) -> None:
        factory = self.factory
        chain = self.transport.getHandle().get_peer_cert_chain() or []  # type: ignore[union-attr]
        try:
            check_pinned_chain([c.to_cryptography() for c in chain], factory.token.pin)
        except IdentityError as e:
            factory.fail(JoinRefused(EXIT_PIN, f"{e} (master at {peer_address(self.transport)})"))
            self.abort_connection()
            return
        self.sendMessage("join", token=str(factory.token), name=factory.identity.name, csr=factory.identity.request())

    def handle_certificate(self, message: dict[str, Any]) -> None:
        try:
            self.factory.identity.keep(message["certificate"], message["ca"])
        except IdentityError as e:
            self.factory.fail(JoinRefused(EXIT_STATUSES["csr"], str(e)))
        else:
            self.factory.succeed(message["state"])
        self.close_connection()

    def handle_bye(self, message: dict[str, Any]) -> None:
        code = message.get("refusal")
        if message["reconnect"] or code not in EXIT_STATUSES:
            self.factory.fail(Exception(message["reason"]))
        else:
            self.factory.fail(JoinRefused(EXIT_STATUSES[code], message["reason"]))
        self.close_connection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.fail(Exception(reason.getErrorMessage() if reason else "connection closed"))


if TYPE_CHECKING:
    _Factory = Factory[JoinConnection]
else:  # the Twisted Python 3.9 installs (25.5) has no Factory[...] at run time
    _Factory = Factory


class JoinFactory(_Factory):
    protocol = JoinConnection
    noisy = False

    def __init__(self, token: JoinToken, identity: WorkerIdentity) -> None:
        self.token = token
        self.identity = identity
        #: Fires with the identity's state (approved, pending), or fails.
        self.done: Deferred[str] = Deferred()

    def succeed(self, state: str) -> None:
        if not self.done.called:
            self.done.callback(state)

    def fail(self, error: Exception) -> None:
        if not self.done.called:
            self.done.errback(error)


def join(reactor: Any, description: str, token: JoinToken, identity: WorkerIdentity) -> Deferred[str]:
    """
    Join once: the identity's state, or a failure: L{JoinRefused} (give
    up) or another (the master unreachable or busy: try again).
    """
    factory = JoinFactory(token, identity)
    # Nothing trusted yet: the pin is checked by hand once TLS is up.
    anything = ssl.CertificateOptions(enableSessionTickets=False)
    endpoint = wrapClientTLS(anything, clientFromString(reactor, plain_endpoint(description)))
    connecting: Deferred[Any] = endpoint.connect(factory)
    connecting.addErrback(lambda failure: factory.fail(Exception(failure.getErrorMessage())))
    return factory.done


def join_until_done(
    reactor: Any, description: str, token: JoinToken, identity: WorkerIdentity, retry: Callable[[int], float]
) -> Deferred[str]:
    """
    Join, trying again after C{retry(attempts)} seconds while the master
    cannot be reached or is busy: the identity's state, or L{JoinRefused}.
    """
    done: Deferred[str] = Deferred()
    attempts = [0]

    def attempt() -> None:
        join(reactor, description, token, identity).addCallbacks(done.callback, failed)

    def failed(failure: Failure) -> None:
        if failure.check(JoinRefused):
            done.errback(failure)
            return
        delay = retry(attempts[0])
        if attempts[0] == 0:
            log.warn("cannot join the master at {where} yet: {why}; trying again",
                     where=description, why=failure.getErrorMessage())
        attempts[0] += 1
        reactor.callLater(delay, attempt)

    attempt()
    return done

