"""
The REST API's tokens (C{/tokens}), for administrators.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from pcci.auth import APIToken
from pcci.master.access.tokens import TokenBook, TokenError
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    APIError,
    json_answer,
    read_object,
    request_token,
    token_error,
    who_asks,
)
from pcci.master.http.guards import audit
from pcci.scopes import GRANTS, Scope, ScopeError


class TokenRoutes(APIBase):
    """API tokens made, listed and revoked through the API."""

    # Tokens: an administrator's (a full token without a scope)

    def _book(self, request: IRequest) -> TokenBook:
        if self.tokens is None:
            raise APIError(409, "this master runs with --no-auth: it checks no token")
        token = request_token(request)
        if token is None or not token.admin:
            raise self._refuse(request, "only a full token without a scope may manage tokens")
        return self.tokens

    @app.route("/tokens", methods=["GET"])
    def token_list(self, request: IRequest) -> bytes:
        """Every token's name and what it may do; never a token."""
        return json_answer(request, self._book(request).listing())

    @app.route("/tokens", methods=["POST"])
    def token_create(self, request: IRequest) -> Deferred[bytes]:
        """Make a token (kept hashed in the store); the answer is the only place it is shown."""
        book = self._book(request)
        body = read_object(request, self.limits.max_body)
        fields = ("name", "read_only", "workers", "labels", "commands", *GRANTS)
        unknown = set(body) - set(fields)
        if unknown:
            raise APIError(400, f"a token has only {', '.join(fields)}, not " + ", ".join(sorted(unknown)))
        name, read_only = body.get("name"), body.get("read_only", False)
        if not isinstance(name, str):
            raise APIError(400, "name must be a string")
        if not isinstance(read_only, bool):
            raise APIError(400, "read_only must be true or false")
        try:
            scope = Scope.from_json({k: body[k] for k in fields[2:] if k in body})
            making = book.create(name, read_only, scope, who_asks(request))
        except (ScopeError, TokenError) as e:
            raise APIError(getattr(e, "status", 400), str(e)) from None

        def answer(value: str) -> bytes:
            audit.info("{who} made token {name}", who=who_asks(request), name=name)
            made = APIToken(b"", read_only, name, scope).describe()
            made.update(token=value, message="token made: this is the only time it is shown")
            return json_answer(request, made, 201)

        return making.addCallbacks(answer, token_error)

    @app.route("/tokens/<string:name>", methods=["DELETE"])
    def token_revoke(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Revoke a token made through the API: refused at once, by every master."""
        book = self._book(request)
        try:
            revoking = book.revoke(name)
        except TokenError as e:
            raise APIError(e.status, str(e)) from None

        def answer(_: Any) -> bytes:
            audit.info("{who} revoked token {name}", who=who_asks(request), name=name)
            return json_answer(request, {"name": name, "message": f"token {name} revoked"})

        return revoking.addCallbacks(answer, token_error)

