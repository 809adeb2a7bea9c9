"""The private Twisted names pcci relies on: there, shaped as expected, used nowhere else."""

from __future__ import annotations

import os
import re
import socket
import types
from pathlib import Path

import pytest
from twisted.internet import process, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

import pcci
from pcci import twisted_internals
from pcci.twisted_internals import HOOKS, check, rebase_timers, send_now, spawned_by_twisted, write_now


def test_this_twisted_has_every_private_name_pcci_uses() -> None:
    check()


@pytest.mark.parametrize("missing", sorted(HOOKS))
def test_a_twisted_without_one_fails_loudly_naming_it(missing: str) -> None:
    module = types.SimpleNamespace(**vars(process))
    # A Process whose methods hide the real ones by None (getattr finds no hook).
    module.Process = type("Process", (process.Process,), {})
    owner: object = module
    *path, name = missing.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, None)
    with pytest.raises(ImportError, match=re.escape(missing)):
        check(module)


def test_a_changed_signature_fails_loudly() -> None:
    module = types.SimpleNamespace(**vars(process))
    module._getFileActions = lambda fdState, childToParentFD, doClose, doDup2, extra: []
    with pytest.raises(ImportError, match="_getFileActions takes"):
        check(module)


def test_timers_are_rebased_onto_a_new_clock() -> None:
    reactor = SelectReactor()
    fired: list[str] = []
    reactor.callLater(10, fired.append, "late")
    now = [5000.0]
    rebase_timers(reactor, lambda: now[0])
    (call,) = reactor.getDelayedCalls()
    assert reactor.seconds() == 5000.0 and abs(call.getTime() - 5010.0) < 1
    reactor.callLater(1, fired.append, "soon")  # scheduled on the new clock
    assert sorted(c.getTime() for c in reactor.getDelayedCalls())[0] == 5001.0
    for call in reactor.getDelayedCalls():
        call.cancel()


def test_twisted_children_are_listed() -> None:
    assert isinstance(spawned_by_twisted(), set)


PRIVATE = re.compile(
    r"twisted\.internet import process\b|twisted\.internet\.process\b|reapProcessHandlers"
    r"|\._(pendingTimedCalls|newTimedCalls|listOpenFDs|getFileActions|trySpawnInsteadOfFork"
    r"|setupChild|fork|writeDisconnecting|tempDataBuffer)\b"
)


def test_a_job_pipe_is_read_a_full_pipe_at_a_time() -> None:
    """What a child wrote while the worker was busy comes in one read, not
    in pieces of Twisted's 8 KiB, each a turn of the reactor."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, b"x" * 60_000)
    received: list[bytes] = []
    child = types.SimpleNamespace(childDataReceived=lambda name, data: received.append(data))
    reader = twisted_internals.WideProcessReader(SelectReactor(), child, 1, read_end)
    try:
        reader.doRead()
        assert [len(data) for data in received] == [60_000]
        os.close(write_end)
        assert reader.doRead() is not None  # the end of the pipe: the reader is done
    finally:
        os.close(read_end)


def test_no_other_module_touches_them() -> None:
    package = Path(pcci.__file__).parent
    mine = Path(twisted_internals.__file__).resolve()
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.resolve() != mine and PRIVATE.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


class Writers:
    """The part of a reactor a connection registers with to be written."""

    def __init__(self) -> None:
        self.writers: set[object] = set()
        self.watched = 0  # times a connection was watched for writing

    def addWriter(self, writer: object) -> None:
        self.writers.add(writer)
        self.watched += 1

    def removeWriter(self, writer: object) -> None:
        self.writers.discard(writer)

    def removeReader(self, reader: object) -> None:
        pass


def connection() -> tuple[tcp.Connection, socket.socket, Writers]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    reactor = Writers()
    made = tcp.Connection(ours, Protocol(), reactor=reactor)
    made.connected = True
    return made, theirs, reactor


def test_an_answer_is_sent_at_once_rather_than_at_the_next_poll() -> None:
    made, theirs, reactor = connection()
    made.write(b"the answer")
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # Twisted waits for the reactor to poll
    wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
    wrapper.transport = made
    send_now(wrapper)  # the transport under a wrapper (a connection limit's, say)
    assert theirs.recv(100) == b"the answer"
    assert made not in reactor.writers  # nothing left to write
    send_now(made)  # nothing to send: nothing happens


def test_a_closing_connection_is_left_to_the_reactor() -> None:
    made, theirs, reactor = connection()
    made.write(b"last words")
    made.loseConnection()
    send_now(made)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    assert made in reactor.writers


def test_a_frame_goes_straight_on_the_socket_when_nothing_waits() -> None:
    made, theirs, reactor = connection()
    wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
    wrapper.transport = made
    write_now(wrapper, b"run")
    assert theirs.recv(100) == b"run"
    assert reactor.watched == 0  # one send(), the reactor never involved


def test_a_frame_after_bytes_already_written_keeps_its_place() -> None:
    made, theirs, reactor = connection()
    made.write(b"first, ")
    write_now(made, b"then the frame")
    assert theirs.recv(100) == b"first, then the frame"
    assert made not in reactor.writers


def test_what_the_socket_does_not_take_waits_in_the_transport() -> None:
    made, theirs, reactor = connection()
    made.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB, more than the socket takes
    write_now(made, data)
    assert made in reactor.writers  # the rest is the reactor's to send
    received = b""
    while len(received) < len(data):
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            made.doWrite()  # what the reactor does when the socket has room
    assert received == data


class Encrypting(ProtocolWrapper):
    """A wrapper that changes what is written, as TLS's does."""

    def write(self, data: bytes) -> None:
        self.transport.write(data.swapcase())


def test_tls_and_closing_connections_write_through_the_transport() -> None:
    made, theirs, reactor = connection()
    tls = Encrypting(WrappingFactory(None), Protocol())
    tls.transport = made
    limit = ProtocolWrapper(WrappingFactory(None), Protocol())
    limit.transport = tls
    write_now(limit, b"secret")
    assert theirs.recv(100) == b"SECRET"  # through the TLS layer's write
    made, theirs, reactor = connection()
    written: list[bytes] = []
    made.TLS = True  # TLS started on the connection itself
    made.write = written.append  # type: ignore[method-assign]
    write_now(made, b"secret")
    assert written == [b"secret"]
    made, theirs, reactor = connection()
    made.loseConnection()
    write_now(made, b"late")
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    assert made in reactor.writers

