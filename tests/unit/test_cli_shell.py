"""
The pieces of pcci shell that need no terminal: ~. as ssh reads it, the
URLs, a refusal's words, what is typed after the shell has ended.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pcci.cli.shell import EscapeReader, Session, ShellClient, _refusal, _websocket, shell_url


@pytest.mark.parametrize(("typed", "sent", "leave"), [
    (["ls\r"], b"ls\r", False),
    (["~."], b"", True),  # at the start: disconnect
    (["echo hi\r~."], b"echo hi\r", True),
    (["a~."], b"a~.", False),  # not at the start of a line
    (["~~"], b"~", False),  # ~~ sends one ~
    (["~x"], b"~x", False),  # any other: the ~ and it
    (["\r~", "."], b"\r", True),  # cut between two reads
    (["\n~", "~", "."], b"\n~.", False),
])
def test_tilde_dot_at_the_start_of_a_line_disconnects(typed: list[str], sent: bytes, leave: bool) -> None:
    reader = EscapeReader()
    out, left = b"", False
    for piece in typed:
        data, left = reader.feed(piece.encode())
        out += data
        if left:
            break
    assert (out, left) == (sent, leave)


def test_the_shell_s_url_from_the_master_s() -> None:
    assert shell_url("http://m:8080", "pi07", {"pty": "true", "cmd": "ls -l"}) == (
        "http://m:8080/workers/pi07/shell?pty=true&cmd=ls+-l")
    assert shell_url("https://m/pcci/", "a/b", {}) == "https://m/pcci/workers/a%2Fb/shell"
    assert _websocket("https://m/pcci/workers/x/shell?a=1") == "wss://m/pcci/workers/x/shell?a=1"
    assert _websocket("http://m:8080/x") == "ws://m:8080/x"


def test_a_refused_handshake_s_json_answer_is_read() -> None:
    head = b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
    assert _refusal(head + b"\r\n" + b'{"message": "no"}\n') == {"message": "no"}
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b'11\r\n{"message": "no"}\r\n0\r\n\r\n'
    assert _refusal(chunked) == {"message": "no"}
    assert _refusal(head + b"\r\n<html>") == {}
    assert _refusal(b"") == {}


def test_what_is_typed_after_the_shell_has_ended_is_dropped() -> None:
    client = ShellClient()
    client.factory = SimpleNamespace(session=Session({}, None, pty=False))  # type: ignore[assignment]
    sent: list[tuple[Any, ...]] = []
    client.sendMessage = lambda *args, **kwargs: sent.append(args)  # type: ignore[method-assign]
    client.state = ShellClient.STATE_OPEN
    client.typed(b"ls\n")
    client.typed(b"")  # standard input at its end: said once, as eof
    assert sent == [(b"\x00ls\n",), (b'{"type": "eof"}',)]
    for state in (ShellClient.STATE_CLOSING, ShellClient.STATE_CLOSED):
        client.state = state
        client.typed(b"late\n")
        client.typed(b"")  # as when the master closed before the pipe's end was read
        client._resized()
    assert len(sent) == 2
