"""
HTTP for the command line, from the standard library: no reactor to import.

Start-up time is a feature of a command line, and importing Twisted's
reactor and web client costs more than the rest of a C{pcci run} together.
A command does one request after another and reads one stream at a time,
so blocking calls on C{http.client} do it, each answered by an awaitable
that is L{Ready} at once: the commands stay C{async} functions, driven to
their end by L{run_now} here, and by Twisted in the tests (which give them a
treq-like client whose calls are Deferreds).

The seam (C{request}, C{content}, C{collect}) is what
L{pcci.cli.client.MasterClient} needs; errors are the standard library's
(C{OSError}, C{http.client.HTTPException}), which the client words for a
person.
"""

from __future__ import annotations

import http.client
from collections.abc import Coroutine, Generator
from typing import IO, Any, Callable, Generic, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

#: Bytes read from a stream at a time, at most.
READ_SIZE = 64 * 1024

#: Seconds a request may wait for its answer (a long poll waits 60 s at most).
TIMEOUT = 120.0


class Ready(Generic[T]):
    """An awaitable whose value is there already: awaiting it never suspends."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self.value
        yield  # pragma: no cover  (makes this a generator)


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """
    Run a command whose every await is L{Ready}: to its end, at once.

    @raise RuntimeError: it awaited something else, which nothing here runs.
    """
    try:
        waited = coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError(f"a command waited on {waited!r}, which is not ready")


#: Bytes of an uploaded file sent at a time.
UPLOAD_BLOCK = 256 * 1024


class Response:
    """An answer: its status and its body, read whole or as it comes."""

    def __init__(self, answer: http.client.HTTPResponse, connection: http.client.HTTPConnection) -> None:
        self.code = answer.status
        self._answer = answer
        self._connection = connection

    def read(self) -> bytes:
        return self._answer.read()

    def read1(self) -> bytes:
        return self._answer.read1(READ_SIZE)

    def close(self) -> None:
        """Drop the answer and its connection (a stream cut short)."""
        self._connection.close()


class StdlibHTTP:
    """
    Requests to one master, one at a time: calls reuse one kept-alive
    connection, and each stream gets a connection of its own.
    """

    def __init__(self, ca_file: str | None = None, timeout: float = TIMEOUT) -> None:
        self.ca_file = ca_file
        self.timeout = timeout
        self._kept: http.client.HTTPConnection | None = None
        self._kept_for: tuple[str, str] | None = None

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=self.ca_file)
            return http.client.HTTPSConnection(
                netloc, timeout=self.timeout, context=context, blocksize=UPLOAD_BLOCK
            )
        if scheme != "http":
            raise ValueError(f"{scheme}: is not http: or https:")
        return http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=UPLOAD_BLOCK)

    def request(
        self,
        method: str,
        url: str,
        data: bytes | IO[bytes] | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        unbuffered: bool = False,
    ) -> Ready[Response]:
        """Send a request and wait for its answer's status and headers."""
        parts = urlsplit(url)
        where = (parts.scheme, parts.netloc)
        path = parts.path + ("?" + parts.query if parts.query else "")
        sent = {
            key.decode(): b", ".join(values).decode() for key, values in (headers or {}).items()
        }
        # A stream holds its connection until it ends: it gets its own.
        kept = self._kept if not unbuffered and self._kept_for == where else None

        def ask(connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
            try:
                connection.request(method, path or "/", body=data, headers=sent)
                return connection.getresponse()
            except BaseException:
                connection.close()
                raise

        connection = kept or self._connect(*where)
        try:
            answer = ask(connection)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if kept is None:
                raise
            # The kept connection was closed by the master meanwhile: once more, anew.
            connection = self._connect(*where)
            answer = ask(connection)
        if not unbuffered:
            self._kept, self._kept_for = connection, where
        return Ready(Response(answer, connection))

    def content(self, response: Response) -> Ready[bytes]:
        return Ready(response.read())

    def collect(self, response: Response, feed: Callable[[bytes], None]) -> Ready[None]:
        """Feed the body to C{feed} as it arrives, until it ends."""
        try:
            while True:
                data = response.read1()
                if not data:
                    break
                feed(data)
        finally:
            response.close()
        return Ready(None)
