"""
The guards in front of the REST API: the bearer-token check, and a request
class that refuses bodies too large or requests too slow before they cost
anything.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from pcci.auth import APIToken, find_token

#: Methods a read-only token may use.
READ_METHODS = (b"GET", b"HEAD")


def json_error(request: IRequest, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"message": message}).encode("utf-8") + b"\n"


def bounded_request(max_body: int, receive_timeout: float) -> type[Request]:
    """
    A request class that refuses, as they arrive, a body over C{max_body}
    bytes (413) and a request not received whole within C{receive_timeout}
    seconds of its first line (408, against clients that trickle bytes to
    hold a connection).  Either way the connection is closed before any of
    the body is stored or a token is even checked: Twisted would otherwise
    spool any body to a file.
    """

    class BoundedRequest(Request):
        _received = 0
        _refused = False

        def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(channel, *args, **kwargs)
            self._deadline = channel.callLater(receive_timeout, self._too_slow)

        def gotLength(self, length: int | None) -> None:
            super().gotLength(length)
            if length is not None and length > max_body:
                self._too_large()

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._received += len(data)
            if self._received > max_body:
                self._too_large()
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            self._stop_deadline()
            super().requestReceived(command, path, version)

        def connectionLost(self, reason: Failure) -> None:
            self._stop_deadline()
            super().connectionLost(reason)

        def _stop_deadline(self) -> None:
            if self._deadline.active():
                self._deadline.cancel()

        def _too_large(self) -> None:
            self._refuse(b"413 Content Too Large", f"request body over {max_body} bytes")

        def _too_slow(self) -> None:
            self._refuse(
                b"408 Request Timeout",
                f"the request did not arrive whole within {receive_timeout:g} seconds",
            )

        def _refuse(self, status: bytes, message: str) -> None:
            self._refused = True
            self._stop_deadline()
            body = json.dumps({"message": message}).encode() + b"\n"
            self.channel.transport.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, len(body), body)
            )
            self.channel.transport.loseConnection()

    return BoundedRequest


class TokenGuard(Resource):
    """
    Lets through the requests that carry a valid C{Authorization: Bearer}
    token: 401 without one, 403 for a read-only token on a write.  Only
    C{/health} needs no token.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource, tokens: list[APIToken]) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.tokens = tokens

    def render(self, request: IRequest) -> Any:
        if request.path != b"/health":
            token = self._token(request)
            if token is None:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pcci"')
                return json_error(
                    request, 401, "a valid token is required: Authorization: Bearer <token>"
                )
            if token.read_only and request.method not in READ_METHODS:
                return json_error(request, 403, "this token is read-only")
        return self.wrapped.render(request)

    def _token(self, request: IRequest) -> APIToken | None:
        header = request.getHeader(b"authorization") or b""
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() != b"bearer" or not presented.strip():
            return None
        return find_token(self.tokens, presented.strip())
