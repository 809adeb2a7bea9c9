"""
Shells through the master (L{pcci.master.cluster.shells}): the frames a
session sends its worker, the pacing both ways, and every way it ends; over
a real worker connection on a StringTransport, time on a Clock.
"""

from __future__ import annotations

import io
import json

import pytest
from fakes import FakeShellClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from pcci.cli.sessions import IDLE_LIMIT, play
from pcci.master.cluster.recordings import FLUSH_EVERY, PIECE, Recording
from pcci.master.cluster.shells import ShellOrder, ShellRefused, ShellSettings
from pcci.master.cluster.state import ClusterState, Settings
from pcci.master.links.admission import Gate
from pcci.master.links.connection import WorkerPortFactory
from pcci.wire import PROTOCOL_VERSION, SHELL_WINDOW, TERMINATOR, encode


def frames(transport: StringTransport) -> list[dict]:
    """The frames written, raw data after a shell_data frame kept under C{data}."""
    data = transport.value()
    transport.clear()
    found = []
    while data:
        frame, _, data = data.partition(TERMINATOR)
        message = json.loads(frame)
        if message["code"] == "shell_data":
            message["data"], data = data[: message["size"]], data[message["size"]:]
        found.append(message)
    return found


def worker(state: ClusterState, clock: Clock, name: str = "node1", version: int = PROTOCOL_VERSION):
    factory = WorkerPortFactory(state, clock, Gate.by_secret(None))
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(encode({"code": "hello", "name": name, "version": version, "nonce": "n" * 32,
                                  "heartbeat": 5}))
    transport.clear()
    return protocol, transport


def output(shell_id: str, data: bytes, stream: str = "stdout") -> bytes:
    return encode({"code": "shell_output", "shell": shell_id, "stream": stream, "size": len(data)}) + data


@pytest.fixture
def audit_lines():
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "pcci.audit":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_a_shell_opens_runs_and_ends_with_its_status(audit_lines) -> None:
    clock = Clock()
    state = ClusterState(clock)
    protocol, transport = worker(state, clock)
    client = FakeShellClient()
    session = state.shells.open(ShellOrder("node1", cmd="", rows=30, cols=100, user="root", who="alice"), client)
    assert frames(transport) == [{"code": "shell_open", "shell": session.id, "cmd": "", "pty": True, "rows": 30,
                                  "cols": 100, "user": "root", "term": ""}]
    protocol.dataReceived(encode({"code": "shell_started", "shell": session.id, "pid": 42}))
    assert client.pid == 42
    session.input(b"exit 3\r")
    session.resize(40, 120)
    assert frames(transport) == [
        {"code": "shell_data", "shell": session.id, "size": 7, "data": b"exit 3\r"},
        {"code": "shell_resize", "shell": session.id, "rows": 40, "cols": 120},
    ]
    # Bytes of any kind come back as they were, the terminator included.
    protocol.dataReceived(output(session.id, b"EOM\xff\x00") + output(session.id, b"oops", "stderr"))
    assert client.received == [("stdout", b"EOM\xff\x00"), ("stderr", b"oops")]
    assert frames(transport) == [{"code": "shell_ack", "shell": session.id, "read": 5},
                                 {"code": "shell_ack", "shell": session.id, "read": 9}]
    protocol.dataReceived(encode({"code": "shell_ended", "shell": session.id, "status": 3, "reason": ""}))
    assert client.end == (3, "")
    assert state.shells.sessions == {}
    assert audit_lines[0] == f"shell {session.id} opened by alice on node1 as root"
    assert audit_lines[1] == (f"shell {session.id} of alice on node1 as root ended after 0.0 s (status 3):"
                              " 7 bytes in, 9 bytes out")


def test_output_is_acknowledged_only_while_the_user_keeps_up() -> None:
    clock = Clock()
    state = ClusterState(clock)
    protocol, transport = worker(state, clock)
    client = FakeShellClient()
    session = state.shells.open(ShellOrder("node1"), client)
    frames(transport)
    session.client_paused()
    protocol.dataReceived(output(session.id, b"y\n" * 1000))
    assert frames(transport) == []  # the worker stops at its window
    session.client_resumed()
    assert frames(transport) == [{"code": "shell_ack", "shell": session.id, "read": 2000}]


def test_input_waits_while_a_window_of_it_is_in_flight() -> None:
    clock = Clock()
    state = ClusterState(clock)
    protocol, transport = worker(state, clock)
    client = FakeShellClient()
    session = state.shells.open(ShellOrder("node1"), client)
    session.input(b"x" * (SHELL_WINDOW - 1))
    assert not client.input_paused
    session.input(b"x")
    assert client.input_paused
    protocol.dataReceived(encode({"code": "shell_ack", "shell": session.id, "written": 1}))
    assert not client.input_paused


def test_a_worker_that_goes_ends_its_shells_saying_so() -> None:
    clock = Clock()
    state = ClusterState(clock)
    protocol, transport = worker(state, clock)
    client = FakeShellClient()
    state.shells.open(ShellOrder("node1"), client)
    protocol.connectionLost(None)
    assert client.end == (None, "worker node1 went away")
    assert state.shells.sessions == {}


def test_the_user_leaving_hangs_the_shell_up() -> None:
    clock = Clock()
    state = ClusterState(clock)
    protocol, transport = worker(state, clock)
    client = FakeShellClient()
    session = state.shells.open(ShellOrder("node1"), client)
    frames(transport)
    session.close("the user left")
    assert frames(transport) == [{"code": "shell_close", "shell": session.id}]
    # What the worker still sends of it is dropped, not an error.
    protocol.dataReceived(output(session.id, b"late") + encode(
        {"code": "shell_ended", "shell": session.id, "status": 129, "reason": "closed"}))
    assert client.received == [] and client.end == (None, "the user left")
    assert not transport.disconnecting


def test_an_idle_shell_is_closed_and_activity_keeps_it_open() -> None:
    clock = Clock()
    state = ClusterState(clock, Settings(shells=ShellSettings(idle=60)))
    protocol, transport = worker(state, clock)
    client = FakeShellClient()
    session = state.shells.open(ShellOrder("node1"), client)
    clock.advance(10)
    protocol.dataReceived(output(session.id, b"tick"))
    clock.advance(59)
    assert client.end is None
    clock.advance(1)
    assert client.end == (None, "idle for 60 seconds")
    assert {"code": "shell_close", "shell": session.id} in frames(transport)


def test_the_master_stopping_ends_every_shell() -> None:
    clock = Clock()
    state = ClusterState(clock)
    worker(state, clock)
    client = FakeShellClient()
    state.shells.open(ShellOrder("node1"), client)
    state.stop()
    assert client.end == (None, "the master is shutting down")


def test_refusals_name_their_reason() -> None:
    clock = Clock()
    state = ClusterState(clock, Settings(shells=ShellSettings(max_per_worker=1)))
    worker(state, clock)
    with pytest.raises(ShellRefused, match="worker ghost is not connected") as refused:
        state.shells.open(ShellOrder("ghost"), FakeShellClient())
    assert refused.value.status == 404
    state.shells.open(ShellOrder("node1"), FakeShellClient())
    with pytest.raises(ShellRefused, match="node1 has 1 shells open, the most it may") as refused:
        state.shells.open(ShellOrder("node1"), FakeShellClient())
    assert refused.value.status == 429


def test_a_bad_shell_frame_drops_only_that_connection() -> None:
    clock = Clock()
    state = ClusterState(clock)
    protocol, transport = worker(state, clock)
    protocol.dataReceived(encode({"code": "shell_output", "shell": "x", "stream": "stdout", "size": 10**9}))
    assert transport.disconnecting


class MemoryShells:
    """A shell table in memory (L{pcci.master.store.base.ShellTable}), answering at once."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.pieces: dict[str, list[bytes]] = {}

    def opened(self, shell_id, opened_at, by, record):
        self.records[shell_id] = record
        return succeed(None)

    def record(self, shell_id, seq, data):
        pieces = self.pieces.setdefault(shell_id, [])
        assert seq == len(pieces), "pieces come in order"
        pieces.append(data)
        return succeed(None)

    def ended(self, shell_id, ended_at, record):
        self.records[shell_id] = record
        return succeed(None)

    def recording(self, shell_id) -> bytes:
        return b"".join(self.pieces.get(shell_id, []))

    def expire(self, before):
        return succeed(0)


def test_a_shell_is_kept_with_its_recording_in_asciicast() -> None:
    clock = Clock()
    table = MemoryShells()
    state = ClusterState(clock, wall=lambda: 1_700_000_000.0)
    state.shells.table = table
    protocol, transport = worker(state, clock)
    session = state.shells.open(ShellOrder("node1", rows=24, cols=80, who="alice"), FakeShellClient())
    assert table.records[session.id]["open"] is True
    clock.advance(0.5)
    # A character cut between two pieces of output is recorded whole.
    protocol.dataReceived(output(session.id, "é".encode()[:1]) + output(session.id, "é".encode()[1:] + b"\r\n"))
    session.resize(30, 100)
    assert session.id not in table.pieces  # gathered, not yet written
    clock.advance(FLUSH_EVERY)
    protocol.dataReceived(encode({"code": "shell_ended", "shell": session.id, "status": 0, "reason": ""}))
    lines = [json.loads(line) for line in table.recording(session.id).decode().splitlines()]
    assert lines[0] == {"version": 2, "width": 80, "height": 24, "timestamp": 1_700_000_000,
                        "title": "alice on node1 as the worker's user", "env": {"TERM": "xterm-256color"}}
    assert lines[1:] == [[0.5, "o", "é\r\n"], [0.5, "r", "100x30"]]
    kept = table.records[session.id]
    assert (kept["open"], kept["status"], kept["recorded"], kept["truncated"]) == (
        False, 0, len(table.recording(session.id)), False)


def test_a_recording_stops_at_its_cap_saying_so() -> None:
    clock = Clock()
    table = MemoryShells()
    recording = Recording(clock, table, "s1", 1000, {"width": 80, "height": 24})
    for _ in range(100):
        recording.output(b"y" * 50)
    recording.close()
    data = table.recording("s1")
    assert recording.truncated and recording.size == len(data)
    assert len(data) < 1000 + 200 and data.count(b"y") > 500  # all that fits is kept
    assert "the recording stops here, at its cap of 1000 bytes" in data.decode().splitlines()[-1]


def test_a_big_output_is_written_in_pieces_as_it_comes() -> None:
    clock = Clock()
    table = MemoryShells()
    recording = Recording(clock, table, "s1", 10 * PIECE, {"width": 80, "height": 24})
    recording.output(b"x" * PIECE)
    assert len(table.pieces["s1"]) == 1  # at once, not at the timer


def test_replay_plays_output_at_its_pace_with_silences_cut() -> None:
    cast = (b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "a"]\n[0.5, "r", "100x30"]\n'
            b'[60.5, "o", "b"]\n[60.6, "o", "c"]\n[61')
    out, slept = io.StringIO(), []
    play(cast, out, speed=2.0, sleep=slept.append)
    assert out.getvalue() == "abc"
    assert slept == [0.25, IDLE_LIMIT / 2, pytest.approx(0.05)]
