"""
C{pcci shell NODE [-- CMD …]}: a shell on a worker, through the master's
WebSocket (C{GET /workers/<name>/shell}, see L{pcci.master.http.shells}).

With a terminal on standard input, the remote side gets a pseudo-terminal
of this window's size (sent again at every SIGWINCH), and this terminal is
in raw mode until the end, restored on every way out: Ctrl-C, Ctrl-Z and
Ctrl-D are bytes for the remote side, and C{~.} at the start of a line
disconnects, as in ssh.  Without one, CMD runs with pipes, as C{ssh host
cmd} does: this standard input is its input, and its end is the
command's.

pcci's exit status is the remote one; 255 when the shell was lost or
never opened, as ssh's.

Unlike the other commands, this one runs Twisted's reactor (and autobahn,
for the WebSocket): it is imported only when a shell is asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import termios
import tty
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import implementer

from pcci.cli import EXIT_INTERRUPTED

#: pcci's status when the shell was lost or never opened (ssh's).
EXIT_LOST = 255

STDIN, STDERR = b"\x00", b"\x02"



def _reactor() -> Any:
    """Twisted's reactor, installed only when a shell runs (untyped: its interfaces are many)."""
    from twisted.internet import reactor

    return reactor


class Terminal:
    """This terminal in raw mode, and back as it was."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None

    def raw(self) -> None:
        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class EscapeReader:
    """
    Finds C{~.} at the start of a line in what the user types, as ssh does:
    C{~~} sends one C{~}; a C{~} before anything else is sent with it.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._tilde = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """What to send of C{data}, and whether the user asked to disconnect."""
        out = bytearray()
        for byte in data:
            char = bytes([byte])
            if self._tilde:
                self._tilde = False
                if char == b".":
                    return bytes(out), True
                out += b"~" if char == b"~" else b"~" + char
            elif self._line_start and char == b"~":
                self._tilde = True
                continue
            else:
                out += char
            self._line_start = char in (b"\r", b"\n")
        return bytes(out), False


@implementer(IHalfCloseableProtocol)
class _Keyboard(Protocol):
    """
    This process's standard input and output (Twisted's C{StandardIO}):
    what is typed goes to the shell; the shell's output is written here,
    and while this terminal (or pipe) is slow, the WebSocket is not read,
    so the master and the worker hold the rest back.
    """

    def __init__(self, socket: ShellClient) -> None:
        self.socket = socket

    def dataReceived(self, data: bytes) -> None:
        self.socket.typed(data)

    def readConnectionLost(self) -> None:
        self.socket.typed(b"")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.socket.session.finished()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, waiting for a slow reader (standard error, seldom written)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


class ShellClient(WebSocketClientProtocol):
    """The user's side of one shell, on one connection of its L{Session}."""

    factory: ShellClientFactory

    @property
    def session(self) -> Session:
        return self.factory.session

    def onOpen(self) -> None:
        session = self.session
        if session.pty and os.isatty(0):
            session.terminal = Terminal(0)
            session.terminal.raw()
            signal.signal(signal.SIGWINCH, lambda *_: _reactor().callFromThread(self._resized))
        session.stdio = StandardIO(_Keyboard(self))
        session.stdio.registerProducer(self.transport, True)

    def _resized(self) -> None:
        rows, cols = window_size()
        self._control(type="resize", rows=rows, cols=cols)

    def typed(self, data: bytes) -> None:
        if self.state != self.STATE_OPEN:  # the shell has ended (or the master gone) as this was typed
            return
        if not data:
            if not self.session.pty:
                self._control(type="eof")
            return
        if self.session.terminal is not None:
            data, leave = self.session.escape.feed(data)
            if leave:
                self.session.reason = "disconnected (~.)"
                self.sendClose(1000)
                return
        if data:
            self.sendMessage(STDIN + data, isBinary=True)

    def _control(self, **message: Any) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            if payload[:1] == STDERR:
                write_all(2, payload[1:])
            elif self.session.stdio is not None:
                self.session.stdio.write(payload[1:])
            return
        message = json.loads(payload.decode("utf-8"))
        if message.get("type") == "ended":
            self.session.status = message.get("status")
            self.session.reason = message.get("reason") or ""

    def failHandshake(self, reason: str) -> None:
        answer = _refusal(getattr(self, "data", b""))
        self.session.reason = str(answer.get("message", reason))
        if isinstance(answer.get("url"), str):
            self.session.elsewhere = answer["url"]
        super().failHandshake(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session.stdio is None and session.elsewhere and not session.followed:
            # Another master holds the worker: its shell opens there.
            session.followed = True
            session.reason = ""
            session.connect(session.elsewhere)
            return
        if not session.reason and session.status is None:
            session.reason = (
                "the connection to the master closed" if session.stdio is not None else
                f"cannot open a shell: {reason or 'the master did not answer'}"
            )
        if session.stdio is None:
            session.finished()
        else:
            # What is left of the output is written before pcci ends.
            session.stdio.unregisterProducer()
            session.stdio.loseConnection()


def _refusal(data: bytes) -> dict[str, Any]:
    """The master's JSON answer to a refused handshake (C{message}, maybe C{url}), if it came whole."""
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        try:
            body = rest[: int(size, 16)]
        except ValueError:
            return {}
    try:
        answer = json.loads(body.decode("utf-8"))
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


class ShellClientFactory(WebSocketClientFactory):
    """One connection of a L{Session}."""

    protocol = ShellClient  # type: ignore[assignment]

    def __init__(self, url: str, session: Session) -> None:
        super().__init__(url, headers=session.headers)
        self.session = session

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.session.reason = f"cannot reach the master: {reason.getErrorMessage()}"
        self.session.finished()


class Session:
    """
    One shell, from its first connection to its end: this terminal, and
    how the shell ended.  A master that does not hold the worker says which
    does (its C{url}): the session follows, once.
    """

    def __init__(self, headers: dict[str, str], ca_file: str | None, pty: bool) -> None:
        self.headers = headers
        self.ca_file = ca_file
        self.pty = pty
        self.terminal: Terminal | None = None
        self.stdio: StandardIO | None = None
        self.escape = EscapeReader()
        self.status: int | None = None
        self.reason = ""
        self.elsewhere = ""
        self.followed = False
        self.done: Deferred[None] = Deferred()

    def connect(self, url: str) -> None:
        factory = ShellClientFactory(_websocket(url), self)
        context = None
        if factory.isSecure:
            trust = Certificate.loadPEM(open(self.ca_file, "rb").read()) if self.ca_file else platformTrust()
            context = optionsForClientTLS(factory.host, trustRoot=trust)
        connectWS(factory, context)

    def finished(self) -> None:
        if not self.done.called:
            self.done.callback(None)


def window_size() -> tuple[int, int]:
    """This terminal's rows and columns, as it is now (not as C{LINES} and C{COLUMNS} said once)."""
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
        except OSError:
            continue
    size = shutil.get_terminal_size()
    return size.lines, size.columns


def _websocket(url: str) -> str:
    """An http(s) URL as the ws(s) one of the same place."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return parts._replace(scheme=scheme).geturl()


def shell_url(base: str, node: str, query: dict[str, str]) -> str:
    """The URL of a shell on C{node}, from the master's."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + f"/workers/{quote(node, safe='')}/shell"
    return parts._replace(path=path, query=urlencode(query)).geturl()


def open_shell(url: str, token: str | None, ca_file: str | None, node: str, options: dict[str, Any]) -> int:
    """Run a shell on C{node} to its end; its exit status (L{EXIT_LOST} when lost)."""
    pty = options["pty"]
    rows, cols = window_size()
    query = {"pty": "true" if pty else "false", "rows": str(rows), "cols": str(cols)}
    if options["cmd"]:
        query["cmd"] = options["cmd"]
    if options["user"]:
        query["user"] = options["user"]
    if pty:
        query["term"] = os.environ.get("TERM", "xterm-256color")
    session = Session({"Authorization": f"Bearer {token}"} if token else {}, ca_file, pty)
    session.connect(shell_url(url, node, query))
    session.done.addBoth(lambda _: _reactor().stop())
    blocking = {fd: os.get_blocking(fd) for fd in (0, 1)}
    try:
        # Ctrl-C where this terminal is not raw (or without one) stops the
        # reactor: the connection drops, and the remote side hangs up.
        _reactor().run()
    finally:
        if session.terminal is not None:
            session.terminal.restore()
        for fd, was in blocking.items():
            with contextlib.suppress(OSError):  # closed: all was written
                os.set_blocking(fd, was)
    if session.status is not None:
        if session.reason:  # a shell that could not start says why
            sys.stderr.write(f"pcci: {session.reason}\n")
        return session.status
    if not session.done.called:
        sys.stderr.write("pcci: interrupted\n")
        return EXIT_INTERRUPTED
    sys.stderr.write(f"pcci: {session.reason}\n")
    return EXIT_LOST
