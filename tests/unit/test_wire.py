"""The frame codec and the framed protocol, over StringTransport."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from pcci import wire
from pcci.wire import (
    MAX_FRAME,
    TERMINATOR,
    WORKER_MESSAGES,
    FramedJSONProtocol,
    ProtocolError,
    decode,
    encode,
)


class Recorder(FramedJSONProtocol):
    accepts = WORKER_MESSAGES

    def __init__(self) -> None:
        self.received: list[dict] = []

    def handle_output(self, message: dict) -> None:
        self.received.append(message)

    handle_hello = handle_started = handle_ended = handle_output


def connected() -> tuple[Recorder, StringTransport]:
    protocol, transport = Recorder(), StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_terminator_never_inside_a_frame() -> None:
    frame = encode({"code": "output", "pool": "EOM", "data": "EOMEOM\\EOM", "stream": "stdout"})
    assert frame.endswith(TERMINATOR)
    assert TERMINATOR not in frame[: -len(TERMINATOR)]
    assert decode(frame[:-3], WORKER_MESSAGES)["data"] == "EOMEOM\\EOM"


@given(st.text(), st.text())
def test_any_text_round_trips(pool: str, data: str) -> None:
    message = {"code": "output", "pool": pool, "data": data, "stream": "stdout"}
    frame = encode(message)
    assert frame.count(TERMINATOR) == 1
    assert decode(frame[: -len(TERMINATOR)], WORKER_MESSAGES) == message


@settings(max_examples=200)
@given(st.lists(st.text(max_size=200), max_size=8), st.data())
def test_frames_survive_any_split(outputs: list[str], data: st.DataObject) -> None:
    """TCP may cut the stream anywhere: every message still arrives intact."""
    messages = [{"code": "output", "pool": "p", "data": text, "stream": "stderr"} for text in outputs]
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    protocol, transport = connected()
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        protocol.dataReceived(stream[start:end])
    assert protocol.received == messages
    assert not transport.disconnecting


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_garbage_never_raises(garbage: bytes) -> None:
    protocol, transport = connected()
    protocol.dataReceived(garbage)  # must not raise
    if TERMINATOR in garbage:
        # Whatever was framed is either a valid message or closes the connection.
        assert protocol.received or transport.disconnecting


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[1, 2]",
        b'{"code": "nope"}',
        b'{"pool": "p"}',
        b'{"code": "output", "pool": "p"}',
        b'{"code": "output", "pool": 1, "data": "x"}',
        b'{"code": "started", "pool": "p", "pid": true}',
        b"\xff\xfe",
    ],
)
def test_bad_frame_closes_the_connection(frame: bytes) -> None:
    protocol, transport = connected()
    protocol.dataReceived(
        frame + TERMINATOR + encode({"code": "output", "pool": "p", "data": "after", "stream": "stdout"})
    )
    assert transport.disconnecting
    assert protocol.received == []


def test_oversized_frame_closes_the_connection_without_waiting_for_its_end() -> None:
    protocol, transport = connected()
    protocol.dataReceived(b"x" * (MAX_FRAME + 10))
    assert transport.disconnecting


def test_encoder_refuses_a_frame_over_the_maximum() -> None:
    with pytest.raises(wire.FrameTooLong):
        encode({"code": "output", "pool": "p", "data": "x" * MAX_FRAME})


def test_output_chunk_fits_a_frame_at_worst_escaping() -> None:
    """Control characters escape to six bytes each; a chunk still fits."""
    frame = encode({"code": "output", "pool": "p" * 36, "data": "\x00" * wire.OUTPUT_CHUNK})
    assert len(frame) < MAX_FRAME


def test_send_message() -> None:
    protocol, transport = connected()
    protocol.sendMessage("output", pool="p", data="EOM\n")
    frame = transport.value()
    assert frame.endswith(TERMINATOR)
    assert json.loads(frame[:-3]) == {"code": "output", "pool": "p", "data": "EOM\n"}


def test_decode_rejects_unknown_code() -> None:
    with pytest.raises(ProtocolError):
        decode(b'{"code": "run", "pool": "p", "cmd": "x"}', WORKER_MESSAGES)
