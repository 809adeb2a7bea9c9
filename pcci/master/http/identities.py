"""
The REST API's identities, for administrators: join tokens
(C{/join-tokens}), and workers' identities approved, denied and revoked
(C{/identities}, C{/workers/pending}, C{/workers/<name>/approve|deny|revoke}).
"""

from __future__ import annotations

import shlex
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from pcci.identity import JoinToken
from pcci.master.access.enrollment import Enrollment, TokenRequest
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import APIError, json_answer, read_object, request_token, who_asks
from pcci.master.install.kit import Kit
from pcci.master.store.base import StoredIdentity

log = Logger()


def plain_name(pattern: str) -> str | None:
    """A token's name pattern when it is one name, which the joining machine then takes."""
    return None if any(c in pattern for c in "*?[") else pattern


def join_line(address: str, token: JoinToken, pattern: str) -> str:
    """The line that joins a new machine where pcci is installed already, run on it."""
    words = ["twistd", "-n", "pcci-worker", "--join", address, "--token", str(token)]
    name = plain_name(pattern)
    if name is not None:
        words += ["--name", name]
    return " ".join(shlex.quote(word) for word in words)


class IdentityRoutes(APIBase):
    """Join tokens, and the identities workers joined with."""

    def _enrollment(self, request: IRequest) -> Enrollment:
        if self.enrollment is None:
            raise APIError(409, "this master runs with --no-auth: workers have no identities")
        token = request_token(request)
        if token is None or not token.admin:
            raise self._refuse(request, "only a full token without a scope may manage workers' identities")
        return self.enrollment

    @app.route("/join-tokens", methods=["GET"])
    def join_token_list(self, request: IRequest) -> Deferred[bytes]:
        """Every join token, its state and uses; never a token."""
        listing = self._enrollment(request).tokens()
        return listing.addCallback(lambda tokens: json_answer(request, tokens))

    @app.route("/join-tokens", methods=["POST"])
    def join_token_create(self, request: IRequest) -> Deferred[bytes]:
        """A join token (kept hashed), and the line that joins a machine with it: shown once."""
        enrollment = self._enrollment(request)
        try:
            wanted = TokenRequest.parse(read_object(request, self.limits.max_body, required=False))
        except ValueError as e:
            raise APIError(400, str(e)) from None

        def made(result: tuple[JoinToken, dict[str, Any]]) -> Deferred[bytes]:
            token, view = result
            joining = join_line(self.join_address, token, wanted.name)
            answer = {
                **view, "token": str(token), "command": joining, "join_command": joining,
                "message": "join token made: this is the only time it is shown",
            }
            if self.install_kit is None:
                return succeed(json_answer(request, answer, 201))

            def with_line(kit: Kit) -> bytes:
                answer["command"] = kit.line(self.public_url, self.join_address, str(token), plain_name(wanted.name))
                return json_answer(request, answer, 201)

            def without_line(failure: Failure) -> bytes:
                log.failure("no install line: the install kit cannot be made", failure)
                return json_answer(request, answer, 201)

            return self.install_kit.get().addCallbacks(with_line, without_line)

        return enrollment.create_token(wanted, who_asks(request) or "admin").addCallback(made)

    @app.route("/join-tokens/<string:token_id>", methods=["DELETE"])
    def join_token_revoke(self, request: IRequest, token_id: str) -> Deferred[bytes]:
        """Revoke a join token: no worker joins with it any more."""

        def answer(done: bool) -> bytes:
            if not done:
                raise APIError(404, f"no join token {token_id}")
            return json_answer(request, {"id": token_id, "message": f"join token {token_id} revoked"})

        return self._enrollment(request).revoke_token(token_id, who_asks(request) or "admin").addCallback(answer)

    @app.route("/identities", methods=["GET"])
    def identity_list(self, request: IRequest) -> Deferred[bytes]:
        """Every worker's identity: its key's fingerprint, state, labels and how it joined."""
        return self._enrollment(request).identities().addCallback(lambda found: json_answer(request, found))

    @app.route("/workers/pending", methods=["GET"])
    def pending_list(self, request: IRequest) -> Deferred[bytes]:
        """The identities that wait for a person's approval."""
        return self._enrollment(request).pending().addCallback(lambda found: json_answer(request, found))

    @app.route("/workers/<string:name>/approve", methods=["POST"])
    def worker_approve(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Approve a pending worker: it connects at its next try."""
        return self._decide(request, name, "approve")

    @app.route("/workers/<string:name>/deny", methods=["POST"])
    def worker_deny(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Deny a pending worker: it is told never to come back, and stops."""
        return self._decide(request, name, "deny")

    @app.route("/workers/<string:name>/revoke", methods=["POST"])
    def worker_revoke(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Revoke a worker's identity: its connection closes at once and its jobs end lost, on any master."""
        return self._decide(request, name, "revoke")

    def _decide(self, request: IRequest, name: str, decision: str) -> Deferred[bytes]:
        who = who_asks(request) or "admin"

        def decided(identity: StoredIdentity | None) -> bytes:
            if identity is None:
                allowed = "approved or pending" if decision == "revoke" else "pending"
                raise APIError(409 if decision != "revoke" else 404, f"no {allowed} worker {name}")
            if decision != "approve":
                self.roster.revoke(name, f"identity {identity.state} by {who}")
            past = {"approve": "approved", "deny": "denied", "revoke": "revoked"}[decision]
            return json_answer(request, {
                "name": name, "state": identity.state, "fingerprint": identity.fingerprint,
                "message": f"worker {name} {past}",
            })

        return self._enrollment(request).decide(name, decision, who).addCallback(decided)
