"""
The guards in front of the API port: the bearer-token check (and the
few paths that need none), the security headers of every answer, and a
request class that refuses bodies too large before they cost anything
(the connection limits and request deadlines are in L{pcci.master.http.limits}).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from pcci.auth import APIToken

if TYPE_CHECKING:
    from pcci.master.access.tokens import TokenBook

#: Who ran what, who killed what, and who was refused what: one line each.
audit = Logger(namespace="pcci.audit")

#: Methods a read-only token may use.
READ_METHODS = (b"GET", b"HEAD")

#: Scripts, styles and connections from this origin only: no inline script
#: or style, no framing, no plugin, no form posted elsewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: Paths anyone may read, without a token: the page and its files (they
#: hold no data), the health check, and what a new machine installs.
PUBLIC_PATHS = (b"/", b"/health", b"/install.sh")
PUBLIC_PREFIXES = (b"/ui/", b"/dist/", b"/wheelhouse/")


def is_public(request: IRequest) -> bool:
    """Whether C{request} may go through without a token."""
    if request.method not in (b"GET", b"HEAD"):
        return request.path == b"/health"
    return request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES)


#: The headers every answer of the API port carries, those written raw included.
SECURITY_HEADERS = (
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode()),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"no-referrer"),
)


def secure(request: IRequest) -> None:
    """Give an answer the headers every answer of the API port carries."""
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def json_error(request: IRequest, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"message": message}).encode("utf-8") + b"\n"


def refuse(transport: Any, status: bytes, message: str) -> None:
    """
    Answer C{status} with C{{"message": ...}} straight on the connection and
    close it: for a request refused before the web server has parsed it.
    """
    transport.write(raw_answer(status, message))
    transport.loseConnection()


def raw_answer(status: bytes, message: str) -> bytes:
    """An answer written straight on a connection: JSON, with the security headers, closing it."""
    body = json.dumps({"message": message}).encode() + b"\n"
    headers = b"".join(b"%s: %s\r\n" % header for header in SECURITY_HEADERS)
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, headers, len(body), body)
    )


#: The content type of an upload of files (C{POST /files}), which may be
#: as large as C{--max-file}.
ARCHIVE_TYPE = b"application/x-tar"


def bounded_request(
    max_body: int, max_file: int = 0, tokens: TokenBook | None = None
) -> type[Request]:
    """
    A request class that refuses, as it arrives, a body over C{max_body}
    bytes (413): the connection is closed before any of the body is stored
    or a token is even checked (Twisted would otherwise spool any body to a
    file).  An archive (L{ARCHIVE_TYPE}) sent with a token that may write
    (any, with C{tokens} None: C{--no-auth}) may be up to C{max_file}.  It
    tells its connection (a L{GuardedConnection}) when it arrived whole
    and when its answer is sent, for the request deadline.
    """

    class BoundedRequest(Request):
        _received = 0
        _refused = False
        _limit = max_body

        def gotLength(self, length: int | None) -> None:
            if max_file and self._may_upload():
                self._limit = max_file
            super().gotLength(length)
            if length is not None and length > self._limit:
                self._too_large()

        def _may_upload(self) -> bool:
            kind = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
            if kind.split(b";")[0].strip().lower() != ARCHIVE_TYPE:
                return False
            if tokens is None:
                return True
            token = bearer_token(tokens, self.getHeader(b"authorization"))
            return token is not None and not token.read_only and not (
                token.scope is not None and token.scope.commands
            )

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._received += len(data)
            if self._received > self._limit:
                self._too_large()
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            connection = getattr(self.channel, "transport", None)
            arrived = getattr(connection, "request_arrived", None)
            done = getattr(connection, "request_done", None)
            if arrived is not None and done is not None:
                arrived()
                self.notifyFinish().addBoth(lambda _: done())
            super().requestReceived(command, path, version)

        def _too_large(self) -> None:
            self._refused = True
            refuse(
                self.channel.transport,
                b"413 Content Too Large",
                f"request body over {self._limit} bytes",
            )

    return BoundedRequest


def bearer_token(tokens: TokenBook, header: bytes | None) -> APIToken | None:
    """The token an C{Authorization: Bearer} header presents, if it is one of C{tokens}."""
    scheme, _, presented = (header or b"").partition(b" ")
    if scheme.lower() != b"bearer" or not presented.strip():
        return None
    return tokens.lookup(presented.strip())


#: A browser's WebSocket cannot send an Authorization header: it offers its
#: token as a subprotocol of this prefix (as Kubernetes' exec does), beside
#: the one the master answers with.
WEBSOCKET_BEARER = b"pcci.bearer."


def websocket_bearer(request: IRequest) -> bytes | None:
    """C{Bearer TOKEN} from a WebSocket request's offered subprotocols, if it offers one."""
    if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
        return None
    for offered in (request.getHeader(b"sec-websocket-protocol") or b"").split(b","):
        offered = offered.strip()
        if offered.startswith(WEBSOCKET_BEARER):
            return b"Bearer " + offered[len(WEBSOCKET_BEARER):]
    return None


def refused(request: IRequest, status: int, message: str, token: APIToken | None) -> bytes:
    """Refuse a request, and write down who was refused what: an audit line."""
    audit.info(
        "refused {who} {method} {path}: {why}",
        who=token.name if token is not None else f"a request without a valid token from {_peer(request)}",
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("utf-8", "replace"),
        why=message,
    )
    return json_error(request, status, message)


def _peer(request: IRequest) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", peer))


class TokenGuard(Resource):
    """
    Lets through the requests that carry a valid C{Authorization: Bearer}
    token: 401 without one, 403 for a read-only token on a write.  Only
    C{/health} and the dashboard's files need no token.  With C{tokens}
    None (C{--no-auth}) everyone passes.  A path that is not UTF-8 once
    unquoted is a JSON 400 here, before the router answers it in HTML.
    Every answer gets the dashboard's security headers.
    """

    isLeaf = True

    def __init__(self, wrapped: IResource, tokens: TokenBook | None) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.tokens = tokens

    def render(self, request: IRequest) -> Any:
        secure(request)
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return json_error(request, 400, "the path is not UTF-8 once unquoted")
        if self.tokens is not None and not is_public(request):
            token = bearer_token(self.tokens, request.getHeader(b"authorization") or websocket_bearer(request))
            if token is None:
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="pcci"')
                return refused(
                    request, 401, "a valid token is required: Authorization: Bearer <token>", None
                )
            # Signed in: its connection no longer counts against its address's
            # share of unproven ones (a NAT's or a proxy's other users).
            proved = getattr(getattr(getattr(request, "channel", None), "transport", None), "proved", None)
            if proved is not None:
                proved()
            if token.read_only and request.method not in READ_METHODS:
                return refused(request, 403, "this token is read-only", token)
            request.api_token = token  # type: ignore[attr-defined]
        return self.wrapped.render(request)
