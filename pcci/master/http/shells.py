"""
Shells on workers: C{GET /workers/<name>/shell} is a WebSocket (autobahn)
joined to a shell on that worker (L{pcci.master.cluster.shells}); C{GET
/shells} lists the open ones.

On the WebSocket, bytes go as binary messages whose first byte says which
stream they are, as Kubernetes' exec does: 0 the shell's input, 1 its
output (its terminal), 2 its standard error (without a terminal).  Control
goes as small JSON text messages: C{resize} and C{eof} from the user;
C{started} and C{ended} (with the exit status, or why it was lost) from
the master.  See C{docs/api.md}, "Shells".
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from pcci.master.cluster.shells import ShellOrder, ShellRefused, Shells, ShellSession
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import APIError, bool_arg, int_arg, json_answer, request_token, text_arg

log = Logger()

#: The streams of binary messages, by their first byte.
STDIN, STDOUT, STDERR = 0, 1, 2
STREAM_BYTES = {"stdout": bytes([STDOUT]), "stderr": bytes([STDERR])}

#: The subprotocol a browser asks for (see L{pcci.master.http.guards.WEBSOCKET_BEARER}).
SUBPROTOCOL = "pcci.shell"

#: Longest WebSocket message taken from the user (a paste is cut in such pieces).
MAX_MESSAGE = 1024 * 1024

#: Longest command a shell may be opened with.
MAX_SHELL_COMMAND = 64 * 1024


class ShellRoutes(APIBase):
    """Shells on workers, for those whose token may."""

    @app.route("/workers/<string:name>/shell", methods=["GET"])
    def shell(self, request: IRequest, name: str) -> Any:
        """A WebSocket to a new shell on worker C{name} (see the module's docstring)."""
        token = request_token(request)
        record = self.roster.records.get(name)
        if token is not None:
            if token.read_only:
                raise self._refuse(request, "a read-only token may not open shells")
            scope = token.scope
            if scope is not None and not scope.shell:
                raise self._refuse(request, "this token's scope does not allow shells (it needs shell=yes)")
            if scope is not None and (record is None or not scope.allows_worker(name, record.labels)):
                raise self._refuse(request, f"this token may not use worker {name}")
        order = ShellOrder(
            worker=name,
            cmd=_command(request),
            pty=bool_arg(request, "pty", True),
            rows=int_arg(request, "rows", 24, 1, 9999),
            cols=int_arg(request, "cols", 80, 1, 9999),
            user=text_arg(request, "user") or "",
            term=(text_arg(request, "term") or "")[:64],
            who=token.name if token is not None else "admin",
        )
        if order.user and not order.user.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise APIError(400, "user must be a user name")
        try:
            self.state.shells.link(name)
        except ShellRefused as e:
            if e.master is None:
                raise APIError(e.status, e.message) from None
            return self.state.peers.url_of(e.master).addCallback(self._elsewhere, e, request)
        if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
            raise APIError(426, "this is a WebSocket: open it with pcci shell, or the dashboard")
        return WebSocketResource(ShellSocketFactory(self.state.shells, order))

    @staticmethod
    def _elsewhere(url: str | None, refused: ShellRefused, request: IRequest) -> NoReturn:
        """
        A shell on a worker another master holds is opened there: the answer
        says where (C{url}), and C{pcci shell} goes.  Its bytes then take one
        hop, not two, and no master needs to act for a user on another.
        """
        if url is None:
            raise APIError(409, refused.message, master=refused.master)
        address = url.rstrip("/") + request.uri.decode("ascii", "replace")
        raise APIError(409, f"{refused.message} ({url})", master=refused.master, url=address)

    @app.route("/shells", methods=["GET"])
    def shells(self, request: IRequest) -> Deferred[bytes]:
        """The shells open and those kept (a scoped token sees its own), newest first."""
        limit = int_arg(request, "limit", 100, 1, 1000)
        token = request_token(request)
        by = token.name if token is not None and token.scope is not None else None
        shells = self.state.shells
        open_now = [s.to_json() for s in shells.sessions.values() if by is None or s.order.who == by]

        def merged(kept: list[dict[str, Any]]) -> bytes:
            ids = {s["id"] for s in open_now}
            every = open_now + [s for s in kept if s["id"] not in ids]
            every.sort(key=lambda s: s["opened_at"], reverse=True)
            return json_answer(request, every[:limit])

        if shells.table is None:
            return succeed(merged([]))
        return shells.table.page(limit, by).addCallback(merged)

    @app.route("/shells/<string:shell_id>", methods=["GET"])
    def shell_record(self, request: IRequest, shell_id: str) -> Deferred[bytes]:
        """One shell: who, where, as whom, when, how it ended, the bytes each way."""
        return self._shell(request, shell_id).addCallback(lambda record: json_answer(request, record))

    @app.route("/shells/<string:shell_id>/recording", methods=["GET"])
    def shell_recording(self, request: IRequest, shell_id: str) -> Deferred[bytes]:
        """A shell's recording as asciicast v2 (what it showed; what was typed is not kept)."""
        token = request_token(request)
        if token is not None and token.read_only:
            raise self._refuse(request, "a read-only token may not read recordings: they hold all a shell showed")
        table = self.state.shells.table

        def recorded(record: dict[str, Any]) -> Deferred[bytes]:
            if table is None or record.get("recorded") is None:
                raise APIError(404, f"shell {shell_id} was not recorded")
            return table.recording(shell_id)

        def answer(data: bytes) -> bytes:
            request.setHeader(b"Content-Type", b"application/x-asciicast")
            return data

        return self._shell(request, shell_id).addCallback(recorded).addCallback(answer)

    def _shell(self, request: IRequest, shell_id: str) -> Deferred[dict[str, Any]]:
        """A shell open or kept that the request's token may see."""
        shells = self.state.shells
        session = shells.sessions.get(shell_id)
        found: Deferred[dict[str, Any] | None] = succeed(None)
        if session is not None:
            found = succeed(session.to_json())
        elif shells.table is not None:
            found = shells.table.get(shell_id)

        def seen(record: dict[str, Any] | None) -> dict[str, Any]:
            missing = f"no shell {shell_id} (unknown, or expired)"
            if record is None:
                raise APIError(404, missing)
            if not self._may_see(request, record["by"]):
                raise self._refuse(request, missing, 404)
            return record

        return found.addCallback(seen)


def _command(request: IRequest) -> str:
    cmd = text_arg(request, "cmd") or ""
    if len(cmd) > MAX_SHELL_COMMAND or "\0" in cmd:
        raise APIError(400, f"cmd must be text of at most {MAX_SHELL_COMMAND} characters, without NUL")
    return cmd


class ShellSocketFactory(WebSocketServerFactory):
    """Builds the one L{ShellSocket} of one shell request."""

    def __init__(self, shells: Shells, order: ShellOrder) -> None:
        super().__init__()
        self.shells = shells
        self.order = order
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE, openHandshakeTimeout=10,
            # A client that vanished without a close is found, even when idle.
            autoPingInterval=30, autoPingTimeout=30,
        )

    def buildProtocol(self, addr: Any) -> ShellSocket:  # type: ignore[override]
        protocol = ShellSocket()
        protocol.factory = self
        return protocol


@implementer(IPushProducer)
class _OutputPace:
    """The user's connection as a consumer: when it backs up, the shell's output stops being acknowledged."""

    def __init__(self, session: ShellSession) -> None:
        self.session = session

    def pauseProducing(self) -> None:
        self.session.client_paused()

    def resumeProducing(self) -> None:
        self.session.client_resumed()

    def stopProducing(self) -> None:
        pass


class ShellSocket(WebSocketServerProtocol):
    """The user's side of one shell: a L{pcci.master.cluster.shells.ShellClient}."""

    factory: ShellSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.session: ShellSession | None = None

    def onConnect(self, request: Any) -> str | None:
        # A browser offers its token as a subprotocol beside this one: answer this one.
        return SUBPROTOCOL if SUBPROTOCOL in request.protocols else None

    def onOpen(self) -> None:
        # The web server's channel was this connection's producer: reading
        # the user's input must not stop when the output backs up.
        self._consumer().unregisterProducer()
        try:
            self.session = self.factory.shells.open(self.factory.order, self)
        except ShellRefused as e:
            self._control(type="ended", status=None, reason=e.message)
            self.sendClose(1000)
            return
        self._consumer().registerProducer(_OutputPace(self.session), True)
        self._control(type="opened", shell=self.session.id, worker=self.factory.order.worker)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        if isBinary:
            if payload[:1] == bytes([STDIN]):
                session.input(payload[1:])
            else:
                self._refuse_message("binary messages from the user carry stream 0 (input)")
            return
        try:
            message = json.loads(payload.decode("utf-8"))
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "resize" and _window(message):
            session.resize(message["rows"], message["cols"])
        elif kind == "eof":
            session.end_of_input()
        else:
            self._refuse_message('text messages are {"type": "resize", "rows": R, "cols": C} or {"type": "eof"}')

    def _refuse_message(self, why: str) -> None:
        log.warn("closing the shell of {peer}: {why}", peer=self.peer, why=why)
        self.sendClose(1003, why[:120])

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.close("the user left")

    def _control(self, **message: Any) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    # ShellClient

    def started(self, pid: int) -> None:
        self._control(type="started", pid=pid)

    def output(self, stream: str, data: bytes) -> None:
        self.sendMessage(STREAM_BYTES[stream] + data, isBinary=True)

    def ended(self, status: int | None, reason: str) -> None:
        if self.state in (self.STATE_CLOSING, self.STATE_CLOSED):
            return
        self._control(type="ended", status=status, reason=reason)
        self.sendClose(1000)

    def pause_input(self) -> None:
        self._consumer().pauseProducing()

    def resume_input(self) -> None:
        self._consumer().resumeProducing()

    def _consumer(self) -> Any:
        """The connection, which reads (a producer) and writes (a consumer)."""
        return self.transport


def _window(message: dict[str, Any]) -> bool:
    return all(
        isinstance(message.get(k), int) and not isinstance(message[k], bool) and 0 < message[k] < 10_000
        for k in ("rows", "cols")
    )
