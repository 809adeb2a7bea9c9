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
from urllib.parse import urlencode, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
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

#: The reactor, untyped: its interfaces are many, its module one object.
_reactor: Any = reactor


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
        self.socket.factory.finished()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte, waiting for a slow reader (standard error, seldom written)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])


class ShellClient(WebSocketClientProtocol):
    """The user's side of one shell."""

    factory: ShellClientFactory

    def onOpen(self) -> None:
        factory = self.factory
        if factory.settings["pty"] and os.isatty(0):
            factory.terminal = Terminal(0)
            factory.terminal.raw()
            signal.signal(signal.SIGWINCH, lambda *_: _reactor.callFromThread(self._resized))
        factory.stdio = StandardIO(_Keyboard(self))
        factory.stdio.registerProducer(self.transport, True)

    def _resized(self) -> None:
        size = shutil.get_terminal_size()
        self._control(type="resize", rows=size.lines, cols=size.columns)

    def typed(self, data: bytes) -> None:
        if not data:
            if not self.factory.settings["pty"]:
                self._control(type="eof")
            return
        if self.factory.terminal is not None:
            data, leave = self.factory.escape.feed(data)
            if leave:
                self.factory.reason = "disconnected (~.)"
                self.sendClose(1000)
                return
        if data:
            self.sendMessage(STDIN + data, isBinary=True)

    def _control(self, **message: Any) -> None:
        self.sendMessage(json.dumps(message).encode(), isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            if payload[:1] == STDERR:
                write_all(2, payload[1:])
            elif self.factory.stdio is not None:
                self.factory.stdio.write(payload[1:])
            return
        message = json.loads(payload.decode("utf-8"))
        if message.get("type") == "ended":
            self.factory.status = message.get("status")
            self.factory.reason = message.get("reason") or ""

    def failHandshake(self, reason: str) -> None:
        self.factory.reason = _refusal(getattr(self, "data", b""), reason)
        super().failHandshake(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        factory = self.factory
        if not factory.reason and factory.status is None:
            factory.reason = (
                "the connection to the master closed" if factory.stdio is not None else
                f"cannot open a shell: {reason or 'the master did not answer'}"
            )
        if factory.stdio is None:
            factory.finished()
        else:
            # What is left of the output is written before pcci ends.
            factory.stdio.unregisterProducer()
            factory.stdio.loseConnection()


def _refusal(data: bytes, fallback: str) -> str:
    """The master's JSON C{message} in a refused handshake's answer, if it came whole."""
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        try:
            body = rest[: int(size, 16)]
        except ValueError:
            return fallback
    try:
        return str(json.loads(body.decode("utf-8"))["message"])
    except (ValueError, KeyError, TypeError):
        return fallback


class ShellClientFactory(WebSocketClientFactory):
    """One shell's connection: its settings, and how it ended."""

    protocol = ShellClient  # type: ignore[assignment]

    def __init__(self, url: str, headers: dict[str, str], settings: dict[str, Any]) -> None:
        super().__init__(url, headers=headers)
        self.settings = settings
        self.terminal: Terminal | None = None
        self.stdio: StandardIO | None = None
        self.escape = EscapeReader()
        self.opened = False
        self.status: int | None = None
        self.reason = ""
        self.done: Deferred[None] = Deferred()

    def finished(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.reason = f"cannot reach the master: {reason.getErrorMessage()}"
        self.finished()


def shell_url(base: str, node: str, query: dict[str, str]) -> str:
    """The WebSocket URL of a shell on C{node}, from the master's HTTP URL."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + f"/workers/{node}/shell"
    return f"{scheme}://{parts.netloc}{path}?{urlencode(query)}"


def open_shell(url: str, token: str | None, ca_file: str | None, node: str, options: dict[str, Any]) -> int:
    """Run a shell on C{node} to its end; its exit status (L{EXIT_LOST} when lost)."""
    pty = options["pty"]
    size = shutil.get_terminal_size()
    query = {"pty": "true" if pty else "false", "rows": str(size.lines), "cols": str(size.columns)}
    if options["cmd"]:
        query["cmd"] = options["cmd"]
    if options["user"]:
        query["user"] = options["user"]
    if pty:
        query["term"] = os.environ.get("TERM", "xterm-256color")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    factory = ShellClientFactory(shell_url(url, node, query), headers, {"pty": pty})
    context = None
    if factory.isSecure:
        trust = Certificate.loadPEM(open(ca_file, "rb").read()) if ca_file else platformTrust()
        context = optionsForClientTLS(factory.host, trustRoot=trust)
    connectWS(factory, context)
    factory.done.addBoth(lambda _: _reactor.stop())
    blocking = {fd: os.get_blocking(fd) for fd in (0, 1)}
    try:
        # Ctrl-C where this terminal is not raw (or without one) stops the
        # reactor: the connection drops, and the remote side hangs up.
        _reactor.run()
    finally:
        if factory.terminal is not None:
            factory.terminal.restore()
        for fd, was in blocking.items():
            with contextlib.suppress(OSError):  # closed: all was written
                os.set_blocking(fd, was)
    if factory.status is not None:
        if factory.reason:  # a shell that could not start says why
            sys.stderr.write(f"pcci: {factory.reason}\n")
        return factory.status
    if not factory.done.called:
        sys.stderr.write("pcci: interrupted\n")
        return EXIT_INTERRUPTED
    sys.stderr.write(f"pcci: {factory.reason}\n")
    return EXIT_LOST
