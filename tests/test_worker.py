"""The worker's side of the wire protocol, over StringTransport."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from pcci.wire import PROTOCOL_VERSION, TERMINATOR, encode
from pcci.worker import WorkerFactory


def frames(transport: StringTransport) -> list[dict]:
    data = transport.value()
    transport.clear()
    return [json.loads(f) for f in data.split(TERMINATOR) if f]


def connect(**kwargs):
    factory = WorkerFactory(reactor=None, name="pi1", **kwargs)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return factory, protocol, transport


def test_hello_names_the_worker_and_the_protocol_version() -> None:
    _, _, transport = connect()
    (hello,) = frames(transport)
    assert hello["code"] == "hello"
    assert (hello["name"], hello["version"]) == ("pi1", PROTOCOL_VERSION)
    assert transport.producer is not None  # output is flow-controlled


def test_unparseable_command_ends_at_once_with_127() -> None:
    factory, protocol, transport = connect()
    frames(transport)
    protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "echo 'open"}))
    output, ended = frames(transport)
    assert output["code"] == "output" and "cannot parse command" in output["data"]
    assert ended == {"code": "ended", "pool": "p1", "status": 127}
    assert protocol.jobs == {} and factory.jobs == set()


def test_missing_executable_ends_with_127() -> None:
    _, protocol, transport = connect()
    frames(transport)
    protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "/nonexistent/x"}))
    output, ended = frames(transport)
    assert "/nonexistent/x: command not found" in output["data"]
    assert ended["status"] == 127


def test_kill_of_an_unknown_pool_is_ignored() -> None:
    _, protocol, transport = connect()
    frames(transport)
    protocol.dataReceived(encode({"code": "kill", "pool": "nope"}))
    assert frames(transport) == []
    assert not transport.disconnecting


def test_bye_without_reconnect_dismisses_the_worker() -> None:
    reasons: list[str] = []
    _, protocol, transport = connect(on_dismissed=reasons.append)
    protocol.dataReceived(
        encode({"code": "bye", "reason": "another pi1 connected", "reconnect": False})
    )
    assert reasons == ["another pi1 connected"]
    assert transport.disconnecting


def test_bye_with_reconnect_only_closes() -> None:
    reasons: list[str] = []
    _, protocol, transport = connect(on_dismissed=reasons.append)
    protocol.dataReceived(encode({"code": "bye", "reason": "restarting", "reconnect": True}))
    assert reasons == [] and transport.disconnecting


def test_master_garbage_closes_the_connection() -> None:
    _, protocol, transport = connect()
    protocol.dataReceived(b'{"code": "hello", "name": "x", "version": 1}EOM')
    assert transport.disconnecting  # hello is a worker's message, not a master's


def test_kill_all_with_no_jobs_is_done_at_once() -> None:
    factory, _, _ = connect()
    fired: list = []
    factory.kill_all().addCallback(fired.append)
    assert fired == [None]
