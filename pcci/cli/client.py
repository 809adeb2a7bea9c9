"""
The master's REST API, as the command line calls it, over an HTTP seam:
the standard library's (L{pcci.cli.http}) when run, treq's in the tests.

Every failure becomes a L{CLIError} carrying one sentence for a person and
the exit status it means.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import IO, Any, Callable
from urllib.parse import quote, urlencode

#: Exit statuses of the command line's own failures.
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CLIError(Exception):
    """A failure told in one line, with the exit status it means."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Event:
    """One server-sent event."""

    __slots__ = ("id", "name", "data")

    def __init__(self, id: int, name: str, data: Any) -> None:
        self.id, self.name, self.data = id, name, data


class EventParser:
    """Server-sent events from a byte stream fed in any pieces."""

    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event
        self._buffer = b""
        self._fields: dict[str, list[str]] = {}

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                self._dispatch()
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                self._fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)

    def _dispatch(self) -> None:
        fields, self._fields = self._fields, {}
        if "data" not in fields:
            return
        try:
            event_id = int(fields.get("id", ["0"])[-1])
        except ValueError:
            event_id = 0
        name = fields.get("event", ["message"])[-1]
        self._on_event(Event(event_id, name, json.loads("\n".join(fields["data"]))))


class MasterClient:
    """
    Calls to one master at C{url}, with C{token} when there is one.

    @param http: what sends requests: C{request(method, url, data, headers,
        unbuffered)}, C{content(response)} and C{collect(response, feed)},
        each awaitable (see L{pcci.cli.http.StdlibHTTP}).
    @param token_source: where the token came from, for the error that
        says it was refused.
    """

    def __init__(self, url: str, token: str | None, http: Any, token_source: str = "") -> None:
        #: Every master it may call (C{url} may list several, comma-separated);
        #: it calls the first that answers, and keeps to it.
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()] or [url]
        self.url = self.urls[0]
        self.token = token
        self.http = http
        self.token_source = token_source

    def _headers(self) -> dict[bytes, list[bytes]]:
        headers = {b"Content-Type": [b"application/json"]}
        if self.token:
            headers[b"Authorization"] = [b"Bearer " + self.token.encode()]
        return headers

    async def _request(
        self, method: str, path: str, body: Any = None, upload: tuple[IO[bytes], int] | None = None, **kw: Any
    ) -> Any:
        data: Any = None if body is None else json.dumps(body).encode()
        headers = self._headers()
        if upload is not None:
            data = upload[0]
            headers[b"Content-Type"] = [b"application/x-tar"]
            headers[b"Content-Length"] = [str(upload[1]).encode()]
        start = self.urls.index(self.url)
        reasons = []
        for url in self.urls[start:] + self.urls[:start]:
            if upload is not None:
                upload[0].seek(0)
            try:
                response = await self.http.request(
                    method, url + path, data=data, headers=headers, **kw
                )
            except Exception as e:
                reasons.append(f"{url}: {_reason(e)}")
                if method == "GET" or _never_sent(e):
                    continue  # no harm in asking the next master
                break  # it may have been done: never twice
            self.url = url
            return response
        where = (
            f"the master at {reasons[0]}" if len(reasons) == 1 else "any master: " + "; ".join(reasons)
        )
        raise CLIError(
            f"cannot connect to {where}. Is it running? (set the address with --url or"
            " PCCI_URL; several, comma-separated, are tried in turn)",
            EXIT_UNREACHABLE,
        )

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        upload: tuple[IO[bytes], int] | None = None,
        **query: Any,
    ) -> Any:
        """
        One request; its JSON answer, or a L{CLIError}.  C{upload} sends
        a tar archive (a file and its size) as the body instead.
        """
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        response = await self._request(method, path, body, upload)
        try:
            text = await self.http.content(response)
        except Exception as e:
            raise CLIError(f"the master at {self.url} stopped answering: {_reason(e)}", EXIT_UNREACHABLE) from None
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        self._check(response.code, answer)
        return answer

    async def download(self, path: str, into: IO[bytes]) -> None:
        """A binary answer (a fetched archive), written to C{into} as it comes."""
        response = await self._request("GET", path)
        await self._refused(response)
        try:
            await self.http.collect(response, into.write)
        except Exception as e:
            raise CLIError(f"the master at {self.url} stopped answering: {_reason(e)}", EXIT_UNREACHABLE) from None

    async def _refused(self, response: Any) -> None:
        """A L{CLIError} for an answer that is an error, read whole; else nothing is read."""
        if response.code < 400:
            return
        text = await self.http.content(response)
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        self._check(response.code, answer)

    def _check(self, code: int, answer: Any) -> None:
        if code < 400:
            return
        message = answer.get("message") if isinstance(answer, dict) else None
        if code == 401:
            if self.token is None:
                raise CLIError(
                    f"the master at {self.url} wants a token: set PCCI_TOKEN, pass"
                    " --token-file, or run where ~/.pcci/api-token is",
                    EXIT_UNREACHABLE,
                )
            raise CLIError(
                f"the master at {self.url} refused the token from {self.token_source}"
                " (tokens are looked for in PCCI_TOKEN, then --token-file, then"
                " ~/.pcci/api-token)",
                EXIT_UNREACHABLE,
            )
        if code == 403:
            raise CLIError(f"{message} (the token from {self.token_source})", EXIT_UNREACHABLE)
        text = message or f"HTTP {code}"
        raise CLIError(text, EXIT_USAGE if code < 500 else EXIT_FAILED)

    async def follow(
        self,
        pool_id: str,
        on_event: Callable[[Event], None],
        after: int = 0,
        on_interrupt: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """
        Read the pool's events from after C{after} until its C{pool} event,
        resuming where a cut stream stopped; the ended pool.  The first
        Ctrl-C while it reads awaits C{on_interrupt}, then reading goes on;
        without one, or the second time, Ctrl-C ends the command.
        """
        last: list[Any] = [None]
        seen = [after]
        interrupted = False

        def heard(event: Event) -> None:
            seen[0] = max(seen[0], event.id)
            if event.name == "pool":
                last[0] = event.data
            on_event(event)

        while last[0] is None:
            path = f"/pools/{quote(pool_id, safe='')}/events?after={seen[0]}"
            response = await self._request("GET", path, unbuffered=True)
            await self._refused(response)
            parser = EventParser(heard)
            try:
                await self.http.collect(response, parser.feed)
            except KeyboardInterrupt:
                if on_interrupt is None or interrupted:
                    raise
                interrupted = True
                await on_interrupt()  # then read on, from the last event seen
            except Exception as e:
                if last[0] is None:
                    message = f"the master at {self.url} stopped answering: {_reason(e)}"
                    raise CLIError(message, EXIT_UNREACHABLE) from None
        return last[0]


def _never_sent(error: BaseException) -> bool:
    """Whether a request failed before anything of it reached a master."""
    import errno
    import socket

    unreached = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
    return isinstance(error, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(error, OSError) and error.errno in unreached
    )


def _reason(error: BaseException) -> str:
    """The root of a Twisted client error, in words."""
    reasons = getattr(error, "reasons", None)  # ResponseNeverReceived and kin
    if reasons:
        return _reason(reasons[0].value)
    text = getattr(error, "strerror", None) or str(error).strip() or type(error).__name__
    return text.rstrip(".")
