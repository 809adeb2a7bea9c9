"""
Workers' identities: join tokens made, spent and revoked; identities made
(by a token, or by a worker holding the cluster secret that asks once),
approved, denied, revoked and renewed; and whether a connection's
certificate may use its name now.  What is kept is in the store, so every
master sharing it agrees (see L{pcci.master.store.identities}).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable

from cryptography import x509
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from pcci.identity import IdentityError, JoinToken, certificate_pem, key_fingerprint
from pcci.master.access.ca import ClusterCA, check_request
from pcci.master.store.base import IdentityTable, Refusal, StoredIdentity, StoredJoinToken
from pcci.master.store.identities import OWNING
from pcci.request import no_such_fields, unknown_fields
from pcci.wire import NAME_RULE, VALID_NAME

audit = Logger(namespace="pcci.audit")

#: Seconds a join token lives, by default, and at most.
DEFAULT_TTL = 3600.0
MAX_TTL = 30 * 86400.0

#: Uses of one token, at most.
MAX_USES = 100_000


@dataclass(frozen=True)
class TokenRequest:
    """What a join token allows: checked by L{TokenRequest.parse} (a 400 otherwise)."""

    name: str = "*"
    labels: dict[str, str] = field(default_factory=dict)
    uses: int = 1
    ttl: float = DEFAULT_TTL
    approve: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TokenRequest:
        from pcci.labels import check_labels

        unknown = unknown_fields(body, ("name", "labels", "uses", "ttl", "approve"))
        if unknown:
            raise ValueError(no_such_fields("a join token", unknown))
        name = body.get("name", "*")
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ValueError("name is a glob of worker names (e.g. 'pi*')")
        uses = body.get("uses", 1)
        if not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_USES:
            raise ValueError(f"uses is an integer from 1 to {MAX_USES}")
        ttl = body.get("ttl", DEFAULT_TTL)
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl is seconds, above 0 and at most {MAX_TTL:g}")
        approve = body.get("approve", False)
        if not isinstance(approve, bool):
            raise ValueError("approve is true or false")
        return cls(name, check_labels(body.get("labels", {})), uses, float(ttl), approve)


#: Why a token that is not active joins nobody.
ENDED = {"revoked": "join token revoked", "used": "join token used up", "expired": "join token expired"}


def token_state(record: dict[str, Any], now: float) -> str:
    """A token's state now: C{active}, or one of L{ENDED}."""
    if record.get("revoked"):
        return "revoked"
    if record.get("used", 0) >= record["uses"]:
        return "used"
    return "expired" if now >= record["expires_at"] else "active"


def token_problem(record: dict[str, Any], name: str, now: float) -> Refusal | None:
    """What keeps a token of this record from joining a worker named C{name} now; None if nothing."""
    state = token_state(record, now)
    if state != "active":
        return "token", ENDED[state]
    if not fnmatchcase(name, record["name"]):
        return "name", f"name {name!r} is outside this token's pattern {record['name']!r}"
    return None


def token_view(token: StoredJoinToken, now: float) -> dict[str, Any]:
    """A token as C{GET /join-tokens} shows it: never its secret."""
    return {"id": token.id, "state": token_state(token.record, now), **token.record}


def read_request(text: str) -> x509.CertificateSigningRequest:
    """A worker's certificate request, checked (L{check_request}); else a L{Refused} of code C{csr}."""
    try:
        return check_request(text)
    except IdentityError as e:
        raise Refused("csr", str(e)) from None


@dataclass(frozen=True)
class Signed:
    """A certificate made for a worker, and the state of its identity."""

    certificate: str
    ca: str
    state: str


class Refused(Exception):
    """A join or request refused: C{code} (token, name, csr, revoked) and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Enrollment:
    """The cluster's identities, kept in C{store} and signed by C{ca}."""

    def __init__(
        self, store: IdentityTable, ca: ClusterCA, wall: Callable[[], float], approve_all: bool = False
    ) -> None:
        self.store = store
        self.ca = ca
        self.wall = wall
        #: Every new identity waits for a person (C{--approve-workers}).
        self.approve_all = approve_all

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.wall(), datetime.timezone.utc)

    # Tokens

    def create_token(self, request: TokenRequest, created_by: str) -> Deferred[tuple[JoinToken, dict[str, Any]]]:
        token = JoinToken.new(self.ca.pin)
        now = self.wall()
        record = {
            "name": request.name, "labels": request.labels, "uses": request.uses, "used": 0,
            "approve": request.approve, "created_by": created_by, "created_at": now,
            "expires_at": now + request.ttl,
        }
        stored = StoredJoinToken(token.id, token.digest, record)
        audit.info(
            "{who} made join token {id} for {pattern!r} ({uses} uses)",
            who=created_by, id=token.id, pattern=request.name, uses=request.uses,
        )
        return self.store.add_join_token(stored).addCallback(lambda _: (token, token_view(stored, now)))

    def tokens(self) -> Deferred[list[dict[str, Any]]]:
        now = self.wall()
        return self.store.join_tokens().addCallback(lambda tokens: [token_view(t, now) for t in tokens])

    def revoke_token(self, token_id: str, by: str) -> Deferred[bool]:
        audit.info("{who} revoked join token {id}", who=by, id=token_id)
        return self.store.revoke_join_token(token_id)

    # Joining, enrolling, renewing

    def join(self, token_text: str, name: str, request_text: str, peer: str) -> Deferred[Signed]:
        """
        A worker joining with a token: its certificate, or a L{Refused}
        failure, each audited.
        """
        try:
            token = JoinToken.parse(token_text)
        except IdentityError as e:
            return self._refused(Refused("token", str(e)), name, peer)
        try:
            if not VALID_NAME.match(name):
                raise Refused("name", f"invalid worker name {name!r}: a name is {NAME_RULE}")
            request = read_request(request_text)
        except Refused as e:
            return self._refused(e, name, peer)
        now = self.wall()
        fingerprint = key_fingerprint(request)

        def new(record: dict[str, Any]) -> StoredIdentity:
            state = "pending" if record.get("approve") or self.approve_all else "approved"
            # The token's labels are bound to the identity; the worker's own
            # come with each hello, and may change.
            return StoredIdentity(name, fingerprint, state, {
                "labels": record.get("labels", {}), "joined_at": now, "how": "token",
                "token": token.id, "address": peer,
            })

        d = self.store.join(token.id, token.digest, lambda record: token_problem(record, name, now), new)

        def joined(result: StoredIdentity | Refusal) -> Deferred[Signed] | Signed:
            if not isinstance(result, StoredIdentity):
                return self._refused(Refused(*result), name, peer)
            audit.info(
                "worker {name} joined from {peer} with token {token} ({fingerprint}): {state}",
                name=name, peer=peer, token=token.id, fingerprint=fingerprint, state=result.state,
            )
            return self._sign(request, result)

        return d.addCallback(joined)

    def _refused(self, refusal: Refused, name: str, peer: str) -> Deferred[Any]:
        audit.warn(
            "join as {name!r} from {peer} refused: {reason}", name=name, peer=peer, reason=refusal.reason
        )
        return fail(refusal)

    def _sign(self, request: x509.CertificateSigningRequest, identity: StoredIdentity) -> Signed:
        certificate = self.ca.sign_worker(request, identity.name, self._now(), labels=identity.record.get("labels"))
        return Signed(certificate_pem(certificate), self.ca.pem, identity.state)

    def enroll(self, name: str, request_text: str, peer: str) -> Deferred[Signed]:
        """A worker that proved it holds the cluster secret asks for its identity (C{--enroll})."""
        try:
            request = read_request(request_text)
        except Refused as e:
            return self._refused(e, name, peer)
        identity = StoredIdentity(name, key_fingerprint(request), "pending" if self.approve_all else "approved", {
            "labels": {}, "joined_at": self.wall(), "how": "enroll", "address": peer,
        })

        def kept(done: bool) -> Signed | Deferred[Signed]:
            if not done:
                return self._refused(Refused("name", f"name {name!r} belongs to another worker's key"), name, peer)
            audit.info("worker {name} enrolled from {peer} by the cluster secret ({fingerprint})",
                       name=name, peer=peer, fingerprint=identity.fingerprint)
            return self._sign(request, identity)

        return self.store.put(identity).addCallback(kept)

    def renew(self, name: str, fingerprint: str, request_text: str) -> Deferred[Signed]:
        """A new certificate for the key a connected identity already holds."""
        try:
            request = read_request(request_text)
        except Refused as e:
            return self._refused(e, name, "renewal")
        if key_fingerprint(request) != fingerprint:
            return self._refused(Refused("csr", "a renewal is for the same key"), name, "renewal")
        d = self.store.set_state(name, "approved", ("approved",), {"renewed_at": self.wall()})

        def renewed(identity: StoredIdentity | None) -> Signed | Deferred[Signed]:
            if identity is None or identity.fingerprint != fingerprint:
                return self._refused(Refused("revoked", "this identity is no longer approved"), name, "renewal")
            return self._sign(request, identity)

        return d.addCallback(renewed)

    # Admission

    def admit(self, name: str, fingerprint: str) -> Deferred[tuple[str | None, StoredIdentity | None]]:
        """
        Whether a certificate for C{name} with this key may connect: C{(None,
        identity)} if so, else C{(why, identity)}: C{pending}, C{revoked}
        (or denied), or C{unknown} (another key, or none kept).
        """

        def judge(identity: StoredIdentity | None) -> tuple[str | None, StoredIdentity | None]:
            if identity is None or identity.fingerprint != fingerprint:
                return "unknown", identity
            if identity.state == "approved":
                return None, identity
            return ("pending" if identity.state == "pending" else "revoked"), identity

        return self.store.get(name).addCallback(judge)

    def owned(self, name: str) -> Deferred[bool]:
        """Whether an identity owns C{name}: then only its key may use it."""
        return self.store.get(name).addCallback(lambda identity: identity is not None and identity.state in OWNING)

    # A person's decisions

    def pending(self) -> Deferred[list[dict[str, Any]]]:
        return self.identities(("pending",))

    def identities(self, states: tuple[str, ...] | None = None) -> Deferred[list[dict[str, Any]]]:
        return self.store.all().addCallback(lambda found: [
            {"name": i.name, "fingerprint": i.fingerprint, "state": i.state, **i.record}
            for i in found if states is None or i.state in states
        ])

    def decide(self, name: str, decision: str, by: str) -> Deferred[StoredIdentity | None]:
        """C{approve}, C{deny} or C{revoke} the identity of C{name}; None if that cannot be done to it."""
        state, allowed = {
            "approve": ("approved", ("pending",)),
            "deny": ("denied", ("pending",)),
            "revoke": ("revoked", ("pending", "approved")),
        }[decision]
        d = self.store.set_state(name, state, allowed, {"decided_by": by, "decided_at": self.wall()})

        def said(identity: StoredIdentity | None) -> StoredIdentity | None:
            if identity is not None:
                audit.info("{who}: {decision} worker {name} ({fingerprint})",
                           who=by, decision=decision, name=name, fingerprint=identity.fingerprint)
            return identity

        return d.addCallback(said)

