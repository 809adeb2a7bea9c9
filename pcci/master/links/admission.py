"""
Who a connection on the worker port is, and whether it may be a worker.

A worker proves itself one of three ways (C{--worker-auth}):

 - C{identity}: over TLS, with a certificate of the cluster's CA whose
   name is the hello's and whose key is the name's identity, approved
   (see L{pcci.master.access.enrollment});
 - C{secret}: with the cluster secret's proofs (see L{pcci.handshake}),
   for a name no identity owns;
 - the master's own worker (C{--local-worker}) by a secret only this
   process knows.

Without a certificate a connection may also C{join} with a token (TLS
only), and a worker welcomed by the secret may C{enroll} once.  Every
refusal is audited; those that trying again cannot mend say which
(C{refusal}) and ask the worker not to reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.handshake import OLDEST_ACCEPTED, Hello, MasterHandshake, accepts, refusal
from pcci.identity import certificate_labels, common_name, is_worker_certificate, key_fingerprint
from pcci.master.access.enrollment import Enrollment, Refused, Signed
from pcci.wire import PROTOCOL_VERSION

if TYPE_CHECKING:
    from pcci.master.cluster.roster import Roster

audit = Logger(namespace="pcci.audit")
log = Logger()

#: What C{--worker-auth} may be; C{none} is C{--no-auth}.
MODES = ("identity", "secret", "both", "none")


@dataclass(frozen=True)
class Gate:
    """The worker port's rules: C{--worker-auth}, and what each way in needs."""

    #: One of L{MODES}.
    mode: str = "none"
    #: The cluster secret (modes secret and both).
    secret: bytes | None = None
    #: Identities (modes identity and both; joins and enrollments in both).
    enrollment: Enrollment | None = None
    #: The master's own worker: its name, and the secret only it holds.
    local: tuple[str, bytes] | None = None

    @classmethod
    def by_secret(cls, secret: bytes | None) -> Gate:
        """The rules before identities: the secret, or none (C{--no-auth})."""
        return cls("none" if secret is None else "secret", secret)


class Candidate(Protocol):
    """What admission needs of a connection (L{pcci.master.links.connection.WorkerConnection})."""

    transport: Any
    #: Over TLS (see L{pcci.master.links.tls}).
    tls: bool
    address: str
    name: str
    labels: dict[str, str]
    #: The connection closed.
    gone: bool

    def sendMessage(self, code: str, **fields: Any) -> None: ...

    def refuse(self, fields: dict[str, Any]) -> None: ...

    def admitted(self) -> None: ...

    def close_connection(self) -> None: ...

    def protocolViolation(self, why: str) -> None: ...


class Admission:
    """One connection's way in: its hello judged, its join, renewal or enrollment answered."""

    def __init__(self, connection: Candidate, gate: Gate) -> None:
        self.connection = connection
        self.mode = gate.mode
        self.secret = gate.secret
        self.enrollment = gate.enrollment
        self.local = gate.local
        #: How the worker proved itself: identity, secret, local or none.
        self.how = ""
        self.fingerprint: str | None = None
        self.handshake: MasterHandshake | None = None
        #: A join or another request is being answered.
        self.busy = False
        #: It said hello (a join comes instead of one).
        self.greeted = False

    @property
    def identities(self) -> bool:
        """This master admits identities: it takes joins, renewals and enrollments."""
        return self.enrollment is not None and self.mode in ("identity", "both")

    def _certificate(self) -> x509.Certificate | None:
        get = getattr(self.connection.transport, "getPeerCertificate", None) if self.connection.tls else None
        peer = get() if get is not None else None
        return None if peer is None else peer.to_cryptography()

    def refuse(self, reason: str, reconnect: bool, code: str | None = None, **extra: Any) -> None:
        """Say why in a C{bye}, and close."""
        fields = {"reason": reason, "reconnect": reconnect, **extra}
        if code is not None:
            fields["refusal"] = code
        self.connection.refuse(fields)

    # The hello

    def read_hello(self, message: dict[str, Any]) -> Hello | None:
        """
        A hello, checked; None for one of a protocol version this master
        does not speak (refused: the worker tries again).

        @raise ProtocolError: a field out of its rules.
        """
        version = message["version"]
        if accepts(version):
            return Hello.parse(message, None if self.mode == "none" else b"")
        log.warn(
            "worker at {peer} speaks protocol {version}: refused (this master accepts {oldest}"
            " to {ours}); it will try again",
            peer=self.connection.address, version=version, oldest=OLDEST_ACCEPTED, ours=PROTOCOL_VERSION,
        )
        self.connection.sendMessage("bye", **refusal(version))
        self.connection.close_connection()
        return None

    def hello(self, hello: Hello) -> None:
        self.greeted = True
        certificate = self._certificate()
        connection = self.connection
        if certificate is not None:
            self._by_certificate(hello, certificate)
        elif self.local is not None and hello.name == self.local[0] and not connection.tls:
            self._challenge(hello, self.local[1], "local")
        elif self.mode == "none":
            self.how = "none"
            connection.admitted()
        elif self.mode in ("secret", "both") and self.secret is not None:
            self._challenge(hello, self.secret, "secret")
        else:
            log.warn(
                "worker {name} at {peer} has no identity, and this master admits workers"
                " by identity only: refused",
                name=hello.name, peer=connection.address,
            )
            self.refuse(
                "this master admits workers by identity only: join with a token"
                " (pcci join-token create), or enroll with the cluster secret where the"
                " master allows it (--worker-auth both)",
                reconnect=True,
            )

    def _challenge(self, hello: Hello, secret: bytes, how: str) -> None:
        self.how = how
        self.handshake = MasterHandshake(secret, hello)
        self.connection.sendMessage("challenge", **self.handshake.challenge())

    def auth(self, message: dict[str, Any]) -> None:
        """The worker's proof (once): good, it is admitted unless an identity owns its name."""
        connection = self.connection
        handshake, self.handshake = self.handshake, None
        assert handshake is not None
        name = handshake.hello.name
        if not handshake.check_auth(message):
            log.warn(
                "worker {name} at {peer} failed to prove it holds the cluster secret: connection closed",
                name=name, peer=connection.address,
            )
            self.refuse("authentication failed: wrong cluster secret", reconnect=True)
            return
        if self.how == "local" or self.enrollment is None:
            connection.admitted()
            return

        def judged(owned: bool) -> None:
            if not owned:
                connection.admitted()
                return
            audit.warn(
                "worker at {peer} holding the cluster secret asked for {name}, which an"
                " identity owns: refused",
                peer=connection.address, name=name,
            )
            self.refuse(f"the name {name!r} belongs to an identity: only its certificate may use it",
                        reconnect=False, code="name")

        self._then(self.enrollment.owned(name), judged)

    def _by_certificate(self, hello: Hello, certificate: x509.Certificate) -> None:
        connection = self.connection
        owner = common_name(certificate)
        if self.enrollment is None or not self.identities:
            self.refuse("this master does not admit workers by identity (--worker-auth secret)", reconnect=True)
            return
        if owner is None or not is_worker_certificate(certificate):
            audit.warn("a certificate that is not a worker's from {peer}: refused", peer=connection.address)
            self.refuse("this certificate is not a worker's", reconnect=False, code="revoked")
            return
        if owner != hello.name:
            audit.warn(
                "worker {owner} at {peer} asked for the name {name}: refused",
                owner=owner, peer=connection.address, name=hello.name,
            )
            self.refuse(f"this certificate is {owner!r}'s, not {hello.name!r}'s", reconnect=False, code="name")
            return
        fingerprint = key_fingerprint(certificate)

        def judged(outcome: tuple[str | None, Any]) -> None:
            why, identity = outcome
            if why is None:
                self.how, self.fingerprint = "identity", fingerprint
                # Its token's labels, which its certificate binds too, win over those it tells.
                bound = {**certificate_labels(certificate), **identity.record.get("labels", {})}
                connection.labels = {**connection.labels, **bound}
                connection.admitted()
            elif why == "pending":
                log.info("worker {name} at {peer} waits for approval", name=owner, peer=connection.address)
                self.refuse(
                    f"waiting for a person's approval: pcci workers approve {owner}",
                    reconnect=True, pending=True,
                )
            else:
                audit.warn(
                    "worker {name} at {peer} refused: its identity is {what}",
                    name=owner, peer=connection.address,
                    what="unknown" if why == "unknown" else identity.state,
                )
                self.refuse(
                    f"the identity of {owner!r} is {'not this key' if why == 'unknown' else identity.state}:"
                    " join again with a new token",
                    reconnect=False, code="revoked",
                )

        self._then(self.enrollment.admit(owner, fingerprint), judged)

    def _then(self, d: Deferred[Any], then: Any) -> None:
        """Carry on once the store answers, if the connection is still there."""

        def answered(result: Any) -> None:
            if not self.connection.gone:
                then(result)

        def failed(failure: Failure) -> None:
            log.error("cannot check worker at {peer}: {why}", peer=self.connection.address,
                      why=failure.getErrorMessage())
            if not self.connection.gone:
                self.refuse("the master cannot check identities now: try again", reconnect=True)

        d.addCallbacks(answered, failed)

    # Requests: join (instead of a hello), renew and enroll (once welcomed)

    def join(self, message: dict[str, Any]) -> None:
        connection = self.connection
        if self.greeted:
            connection.protocolViolation("a join after a hello")
            return
        if self.busy or self.enrollment is None or not self.identities:
            self.refuse("this master does not take join tokens (--worker-auth secret)", reconnect=False, code="token")
            return
        if not connection.tls:
            self.refuse("join over TLS (tls:HOST:PORT), so that the token's pin can be checked",
                        reconnect=False, code="token")
            return
        self.busy = True
        d = self.enrollment.join(message["token"], message["name"], message["csr"], connection.address)
        self._answer(d, close=True)

    def renew(self, message: dict[str, Any]) -> None:
        if self.how != "identity" or self.busy or self.enrollment is None or self.fingerprint is None:
            self.connection.protocolViolation("a renewal without an identity")
            return
        self.busy = True
        self._answer(self.enrollment.renew(self.connection.name, self.fingerprint, message["csr"]))

    def enroll(self, message: dict[str, Any]) -> None:
        if self.how != "secret" or self.busy or self.enrollment is None or not self.identities:
            self.connection.protocolViolation("an enrollment without the cluster secret")
            return
        self.busy = True
        connection = self.connection
        self._answer(self.enrollment.enroll(connection.name, message["csr"], connection.address))

    def _answer(self, d: Deferred[Signed], close: bool = False) -> None:
        connection = self.connection

        def signed(result: Signed) -> None:
            self.busy = False
            connection.sendMessage(
                "certificate", certificate=result.certificate, ca=result.ca, state=result.state, reason=""
            )
            if close:
                connection.close_connection()

        def refused(failure: Failure) -> None:
            self.busy = False
            if not failure.check(Refused):
                log.failure("cannot answer worker at {peer}", failure, peer=connection.address)
                refusal = Refused("busy", "the master cannot sign now: try again")
            else:
                refusal = failure.value  # type: ignore[assignment]
            if close:
                self.refuse(refusal.reason, reconnect=refusal.code == "busy", code=refusal.code)
            else:
                connection.sendMessage("certificate", certificate="", ca="", state="", reason=refusal.reason)

        d.addCallbacks(signed, refused)
        d.addErrback(lambda f: log.failure("answering a worker", f))


def recheck(roster: Roster, enrollment: Enrollment, name: str) -> None:
    """
    Another master moved the identity of C{name}: if this master holds its
    connection, by that identity, and the identity may no longer connect,
    close it (see L{Roster.revoke}).
    """
    link = roster.links.get(name)
    admission = getattr(link, "admission", None)
    if link is None or link.master is not None or admission is None or admission.fingerprint is None:
        return

    def judged(outcome: tuple[str | None, Any]) -> None:
        why, identity = outcome
        if why is not None and why != "pending" and roster.links.get(name) is link:
            roster.revoke(name, f"identity {identity.state if identity is not None else 'gone'}")

    enrollment.admit(name, admission.fingerprint).addCallbacks(
        judged, lambda f: log.error("cannot check worker {name}: {why}", name=name, why=f.getErrorMessage())
    )
