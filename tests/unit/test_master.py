"""The master's side of the wire protocol, over StringTransport."""

from __future__ import annotations

import json

import pytest
from fakes import FakeShellClient, started
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from pcci.auth import check_proof, proof
from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.cluster.jobspec import JobOptions
from pcci.master.cluster.shells import ShellOrder, ShellRefused
from pcci.master.cluster.state import ClusterState
from pcci.master.links.admission import Gate
from pcci.master.links.connection import ACK_DELAY, HANDSHAKE_TIMEOUT, WorkerPortFactory
from pcci.wire import MAX_OUTPUT_DATA, PROTOCOL_VERSION, TERMINATOR, encode

#: What this master says to a worker it admits.
WELCOME = {"code": "welcome", "version": PROTOCOL_VERSION, "output_data": True, "upgrades": True, "facts": True}


def frames(transport: StringTransport) -> list[dict]:
    data = transport.value()
    transport.clear()
    return [json.loads(f) for f in data.split(TERMINATOR) if f]


def connect(state: ClusterState, clock: Clock, port: int = 5000, secret: bytes | None = None):
    factory = WorkerPortFactory(state, clock, Gate.by_secret(secret))
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", port))
    protocol.makeConnection(transport)
    return protocol, transport


def hello(
    name: str = "node1",
    version: int = PROTOCOL_VERSION,
    nonce: str = "n" * 32,
    heartbeat: float = 5,
    **more: object,
) -> bytes:
    return encode(
        {"code": "hello", "name": name, "version": version, "nonce": nonce, "heartbeat": heartbeat, **more}
    )


def setup():
    clock = Clock()
    return ClusterState(clock), clock


def test_hello_registers_the_worker_and_is_welcomed() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    assert state.roster.links["node1"] is protocol
    assert protocol.address == "192.0.2.1:5000"
    assert frames(transport) == [WELCOME]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [15]  # the watchdog


def test_a_job_from_submit_to_end() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    frames(transport)
    pool = started(state.dispatcher.submit(PoolOrder("echo EOM"), ["node1"]))
    assert frames(transport) == [{"code": "run", "pool": pool.id, "cmd": "echo EOM"}]
    protocol.dataReceived(
        encode({"code": "started", "pool": pool.id, "pid": 99})
        + encode({"code": "output", "pool": pool.id, "data": "EOM\n", "stream": "stdout"})
        + encode({"code": "ended", "pool": pool.id, "status": 0})
    )
    job = pool.jobs["node1"]
    assert (job.pid, job.output.text(), job.status, pool.status) == (99, "EOM\n", 0, 0)
    # Without a store, the end is kept at once; the worker hears so within ACK_DELAY.
    assert frames(transport) == []
    clock.advance(ACK_DELAY)
    assert frames(transport) == [{"code": "ack", "pool": pool.id}]
    state.dispatcher.kill(pool.id)
    assert frames(transport) == []  # nothing left to kill


def test_an_ack_goes_with_the_next_frame_in_one_write() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    frames(transport)
    writes: list[bytes] = []
    write = transport.write
    transport.write = lambda data: (writes.append(data), write(data))  # type: ignore[method-assign]
    first = started(state.dispatcher.submit(PoolOrder("true"), ["node1"]))
    protocol.dataReceived(encode({"code": "ended", "pool": first.id, "status": 0}))
    second = started(state.dispatcher.submit(PoolOrder("true"), ["node1"]))
    assert len(writes) == 2  # the first run, then the ack and the second run together
    assert frames(transport) == [
        {"code": "run", "pool": first.id, "cmd": "true"},
        {"code": "ack", "pool": first.id},
        {"code": "run", "pool": second.id, "cmd": "true"},
    ]
    protocol.dataReceived(encode({"code": "ended", "pool": second.id, "status": 0}))
    clock.advance(ACK_DELAY - 0.001)
    assert frames(transport) == []
    clock.advance(0.001)  # nothing else to go with: the ack goes alone
    assert frames(transport) == [{"code": "ack", "pool": second.id}]


def test_a_held_ack_goes_before_the_master_closes_the_connection() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    pool = started(state.dispatcher.submit(PoolOrder("true"), ["node1"]))
    protocol.dataReceived(encode({"code": "ended", "pool": pool.id, "status": 0}))
    frames(transport)
    protocol.close_connection()
    assert frames(transport) == [{"code": "ack", "pool": pool.id}]
    assert transport.disconnecting


def test_kill_is_sent_to_the_worker() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    pool = started(state.dispatcher.submit(PoolOrder("sleep 9"), ["node1"]))
    frames(transport)
    state.dispatcher.kill(pool.id)
    assert frames(transport) == [{"code": "kill", "pool": pool.id}]


def test_connection_lost_fails_running_jobs_after_the_grace() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    pool = started(state.dispatcher.submit(PoolOrder("sleep 9"), ["node1"]))
    protocol.connectionLost(None)
    assert "node1" not in state.roster.links
    clock.advance(state.roster.reconnect_grace - 0.1)
    assert pool.status is None  # it may come back
    clock.advance(0.1)
    assert pool.status == 1 and pool.jobs["node1"].state == "lost"


def test_a_worker_that_remembers_its_jobs_is_asked_again_for_one_it_came_back_without() -> None:
    """Its run may have gone through a master that died: asked again, it runs once, or says it is lost."""
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello(remembers_jobs=True))
    never_had = started(state.dispatcher.submit(PoolOrder("echo once", JobOptions(env={"A": "1"})), ["node1"]))
    had = started(state.dispatcher.submit(PoolOrder("sleep 9"), ["node1"]))
    protocol.connectionLost(None)
    clock.advance(3)
    again, transport = connect(state, clock, 2)
    again.dataReceived(hello(remembers_jobs=True))
    runs = {f["pool"]: f for f in frames(transport) if f["code"] == "run"}
    assert runs[never_had.id] == {"code": "run", "pool": never_had.id, "cmd": "echo once", "env": {"A": "1"},
                                  "sent_ago": 3.0}
    assert runs[had.id]["sent_ago"] == 3.0
    assert never_had.status is None and had.status is None  # neither lost: the worker tells
    again.dataReceived(
        encode({"code": "started", "pool": never_had.id, "pid": 7})
        + encode({"code": "output", "pool": never_had.id, "data": "once\n", "stream": "stdout", "seq": 1})
        + encode({"code": "ended", "pool": never_had.id, "status": 0})
        + encode({"code": "output", "pool": had.id, "data": "pcci: job lost: restarted\n", "stream": "stderr"})
        + encode({"code": "ended", "pool": had.id, "status": -1, "reason": "lost"})
    )
    assert never_had.jobs["node1"].state == "ok" and never_had.jobs["node1"].output.text() == "once\n"
    # A push is no command to run again: its job is lost, as before.
    order = PoolOrder("push 1 entries", kind="push", start=lambda job, link: None)
    push = started(state.dispatcher.submit(order, ["node1"]))
    again.connectionLost(None)
    third, transport = connect(state, clock, 3)
    third.dataReceived(hello(remembers_jobs=True))
    assert push.jobs["node1"].state == "lost"
    assert not [f for f in frames(transport) if f["code"] == "run" and f["pool"] == push.id]
    lost = had.jobs["node1"]
    assert (lost.state, lost.status) == ("lost", -1) and "restarted" in lost.output.text()
    clock.advance(60)
    assert never_had.state == "ok"


def test_a_worker_back_within_the_grace_carries_on_with_its_jobs() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    kept = started(state.dispatcher.submit(PoolOrder("sleep 9"), ["node1"]))
    dropped = started(state.dispatcher.submit(PoolOrder("sleep 9"), ["node1"]))
    protocol.dataReceived(encode({"code": "output", "pool": kept.id, "data": "a", "stream": "stdout", "seq": 1}))
    protocol.connectionLost(None)
    clock.advance(10)
    again, transport = connect(state, clock, 2)
    # It holds one of the two jobs (the other died with a restart), and one the master forgot.
    jobs = [{"pool": kept.id, "ended": False}, {"pool": "forgotten", "ended": True}]
    again.dataReceived(hello(jobs=jobs))
    sent = frames(transport)
    assert {"code": "attach", "pool": kept.id, "after": 1} in sent
    clock.advance(ACK_DELAY)
    assert frames(transport) == [{"code": "ack", "pool": "forgotten"}]
    assert dropped.jobs["node1"].state == "lost"
    assert "came back without it" in dropped.jobs["node1"].output.text()
    # Output it sends again is not kept twice; what is new is.
    again.dataReceived(
        encode({"code": "output", "pool": kept.id, "data": "a", "stream": "stdout", "seq": 1})
        + encode({"code": "output", "pool": kept.id, "data": "b", "stream": "stdout", "seq": 2})
        + encode({"code": "ended", "pool": kept.id, "status": 0})
    )
    assert kept.jobs["node1"].output.text() == "ab" and kept.state == "ok"
    clock.advance(60)  # no grace timer left to fire
    assert kept.jobs["node1"].state == "ok"


def test_duplicate_name_replaces_the_old_connection_says_so_and_lets_it_come_back() -> None:
    state, clock = setup()
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "pcci.audit":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        old, old_transport = connect(state, clock, 1)
        old.dataReceived(hello())
        frames(old_transport)
        new, new_transport = connect(state, clock, 2)
        new.dataReceived(hello())
    finally:
        globalLogPublisher.removeObserver(observe)
    assert state.roster.links["node1"] is new
    (bye,) = frames(old_transport)
    # Not reconnect=False: an impostor must not stop the real worker for good.
    assert bye["code"] == "bye" and bye["reconnect"] is True and bye["replaced"] is True
    assert "192.0.2.1:2" in bye["reason"]
    assert lines == [
        "worker node1 connected from 192.0.2.1:2 while connected from 192.0.2.1:1:"
        " the connection from 192.0.2.1:1 is replaced"
    ]
    assert old_transport.disconnecting
    for _ in range(3):  # a half-open ghost never closes by itself
        clock.advance(5)
        new.dataReceived(encode({"code": "heartbeat", "figures": {}}))
    assert old_transport.disconnected
    old.connectionLost(None)
    assert state.roster.links["node1"] is new
    # Late reports from the replaced connection are ignored.
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["node1"]))
    old.dataReceived(encode({"code": "ended", "pool": pool.id, "status": 0}))
    assert pool.status is None


def test_silent_connection_is_dropped() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    clock.advance(HANDSHAKE_TIMEOUT)
    assert transport.disconnected or transport.disconnecting


def test_job_message_before_hello_is_a_violation() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(encode({"code": "ended", "pool": "p", "status": 0}))
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_second_hello_and_bad_names_are_violations() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello() + hello())
    assert transport.disconnecting
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello(name="bad name\n"))
    assert transport.disconnecting
    assert list(state.roster.links) == ["node1"]


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 2])
def test_a_version_not_accepted_is_refused_but_may_come_back(version: int) -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello(version=version))
    (bye,) = frames(transport)
    assert bye["code"] == "bye" and bye["reconnect"] is True
    assert bye["accepts"] == [PROTOCOL_VERSION - 1, PROTOCOL_VERSION]
    assert f"not {version}" in bye["reason"]
    assert transport.disconnecting
    assert state.roster.links == {}


def test_a_worker_one_version_back_runs_jobs_but_gets_no_shell() -> None:
    """Protocol 4 knew no shells: such a worker runs jobs, and a shell on it is refused, saying why."""
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello(version=PROTOCOL_VERSION - 1))
    assert frames(transport) == [{**WELCOME, "version": PROTOCOL_VERSION - 1}]
    pool = started(state.dispatcher.submit(PoolOrder("true"), ["node1"]))
    protocol.dataReceived(encode({"code": "ended", "pool": pool.id, "status": 0}))
    clock.advance(ACK_DELAY)
    assert [f["code"] for f in frames(transport)] == ["run", "ack"]
    with pytest.raises(ShellRefused, match="node1's pcci is too old for shells; upgrade it") as refused:
        state.shells.open(ShellOrder("node1"), FakeShellClient())
    assert refused.value.status == 409 and state.shells.sessions == {}
    assert frames(transport) == []


def test_garbage_drops_only_that_connection() -> None:
    state, clock = setup()
    good, good_transport = connect(state, clock, 1)
    good.dataReceived(hello("good"))
    bad, bad_transport = connect(state, clock, 2)
    bad.dataReceived(b"GET / HTTP/1.1\r\n\r\nEOM")
    assert bad_transport.disconnecting
    assert not good_transport.disconnecting
    assert list(state.roster.links) == ["good"]


SECRET = b"s" * 32


def authenticated_hello(protocol, transport, name: str = "node1", secret: bytes = SECRET):
    """Run the worker's half of the handshake; return the master's frames."""
    worker_nonce = "w" * 32
    protocol.dataReceived(hello(name, nonce=worker_nonce))
    (challenge,) = frames(transport)
    assert challenge["code"] == "challenge"
    assert check_proof(SECRET, "master", name, challenge["nonce"], worker_nonce, challenge["proof"])
    answer = proof(secret, "worker", name, worker_nonce, challenge["nonce"])
    protocol.dataReceived(encode({"code": "auth", "proof": answer}))
    return frames(transport), answer


class TestHandshake:
    def test_mutual_proofs_register_the_worker(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET)
        answers, _ = authenticated_hello(protocol, transport)
        assert answers == [WELCOME]
        assert state.roster.links["node1"] is protocol

    def test_wrong_secret_is_refused(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET)
        answers, _ = authenticated_hello(protocol, transport, secret=b"x" * 32)
        assert [a["code"] for a in answers] == ["bye"]
        assert "authentication failed" in answers[0]["reason"]
        assert transport.disconnecting
        assert state.roster.links == {}

    def test_replayed_auth_is_refused(self) -> None:
        """A proof recorded from one connection is worth nothing on the next."""
        state, clock = setup()
        first, first_transport = connect(state, clock, secret=SECRET)
        _, recorded = authenticated_hello(first, first_transport)
        replay, transport = connect(state, clock, port=6000, secret=SECRET)
        replay.dataReceived(hello(nonce="w" * 32))
        frames(transport)
        replay.dataReceived(encode({"code": "auth", "proof": recorded}))
        assert [f["code"] for f in frames(transport)] == ["bye"]
        assert state.roster.links["node1"] is first

    def test_job_messages_before_auth_are_violations(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET)
        protocol.dataReceived(hello())
        protocol.dataReceived(encode({"code": "started", "pool": "p", "pid": 1}))
        assert transport.disconnecting
        assert state.roster.links == {}

    def test_auth_without_hello_is_a_violation(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET)
        protocol.dataReceived(encode({"code": "auth", "proof": "0" * 64}))
        assert transport.disconnecting

    def test_hello_without_a_real_nonce_is_a_violation(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET)
        protocol.dataReceived(hello(nonce=""))
        assert transport.disconnecting

    def test_a_silent_half_handshake_times_out(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET)
        protocol.dataReceived(hello())
        clock.advance(HANDSHAKE_TIMEOUT)
        assert transport.disconnecting


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8), st.booleans())
def test_any_bytes_at_any_split_never_raise(garbage: bytes, cuts: list[int], secret: bool) -> None:
    """Whatever a peer sends, the connection copes or closes; the state is sound."""
    failures: list[dict] = []

    def observer(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        state, clock = setup()
        protocol, transport = connect(state, clock, secret=SECRET if secret else None)
        stream = hello() + garbage
        points = sorted({0, len(stream), *[c for c in cuts if c < len(stream)]})
        for start, end in zip(points, points[1:]):
            protocol.dataReceived(stream[start:end])  # must not raise
        protocol.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []  # no handler hit an unexpected error either
    assert state.roster.links == {}



class TestHeartbeats:
    FIGURES = {"cpu_ratio": 0.25, "memory_used_bytes": 1024, "temperature_celsius": None}

    def heartbeat(self) -> bytes:
        return encode({"code": "heartbeat", "figures": self.FIGURES})

    def test_figures_are_kept_and_answered(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock)
        protocol.dataReceived(hello(heartbeat=1))
        frames(transport)
        clock.advance(1)
        protocol.dataReceived(self.heartbeat())
        assert frames(transport) == [{"code": "pong"}]
        record = state.roster.records["node1"]
        assert record.figures["cpu_ratio"] == 0.25
        assert record.figures["temperature_celsius"] is None
        assert record.figures["load_1m"] is None  # not sent: unknown
        assert record.last_seen == 1
        assert len(record.history) == 1

    def test_silent_worker_is_lost_after_three_intervals(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock)
        protocol.dataReceived(hello(heartbeat=1))
        pool = started(state.dispatcher.submit(PoolOrder("sleep 100"), ["node1"]))
        for _ in range(5):  # a living worker is never lost
            clock.advance(1)
            protocol.dataReceived(self.heartbeat())
        clock.advance(2.9)
        assert "node1" in state.roster.links and not transport.disconnecting
        clock.advance(0.1)
        assert "node1" not in state.roster.links
        assert state.roster.records["node1"].online is False
        clock.advance(state.roster.reconnect_grace)
        assert pool.jobs["node1"].status == -1
        assert "silent for 3.0 s" in pool.jobs["node1"].output.text()
        assert transport.disconnected  # aborted: a half-open socket never closes

    def test_absurd_heartbeat_interval_is_a_violation(self) -> None:
        state, clock = setup()
        protocol, transport = connect(state, clock)
        protocol.dataReceived(hello(heartbeat=0))
        assert transport.disconnecting and state.roster.links == {}


def test_a_master_waking_from_a_stall_does_not_blame_its_workers() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.factory.startFactory()  # the stall watch ticks
    protocol.dataReceived(hello(heartbeat=1))
    pool = started(state.dispatcher.submit(PoolOrder("sleep 100"), ["node1"]))
    clock.pump([0.5] * 4)
    protocol.dataReceived(encode({"code": "heartbeat", "figures": {}}))
    clock.advance(20)  # SIGSTOPped: the watchdog and the watch are overdue together
    assert "node1" in state.roster.links and pool.status is None
    clock.pump([0.5] * 5)  # the worker's queued frames are read now
    protocol.dataReceived(encode({"code": "heartbeat", "figures": {}}))
    clock.pump([0.5] * 5)
    assert "node1" in state.roster.links
    clock.pump([0.5] * 6)  # then silence is the worker's own
    assert "node1" not in state.roster.links
    clock.advance(state.roster.reconnect_grace)
    assert pool.jobs["node1"].state == "lost"


def test_output_keeps_its_stream_and_an_end_its_reason() -> None:
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["node1"]))
    protocol.dataReceived(
        encode({"code": "started", "pool": pool.id, "pid": 7})
        + encode({"code": "output", "pool": pool.id, "data": "err", "stream": "stderr"})
        + encode({"code": "ended", "pool": pool.id, "status": 124, "reason": "timed_out"})
    )
    job = pool.jobs["node1"]
    assert [(c.text, c.stream) for c in job.output.chunks()] == [("err", "stderr")]
    assert (job.status, job.state, pool.counts()) == (124, "timed_out", {"timed_out": 1})


def test_output_data_carries_any_bytes_raw_across_any_split() -> None:
    """Output as raw UTF-8 after an output_data frame: the terminator, frame
    lookalikes and a character cut between reads come back intact."""
    state, clock = setup()
    protocol, transport = connect(state, clock)
    protocol.dataReceived(hello())
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["node1"]))
    texts = ['EOM {"code":"ended"}EOM\n', "é€😀 half", "\x00\r\n"]
    wire = encode({"code": "started", "pool": pool.id, "pid": 7})
    for seq, text in enumerate(texts, 1):
        data = text.encode("utf-8")
        header = {"code": "output_data", "pool": pool.id, "stream": "stdout", "seq": seq, "size": len(data)}
        wire += encode(header) + data
    wire += encode({"code": "ended", "pool": pool.id, "status": 0})
    for at in range(len(wire)):  # one byte at a time
        protocol.dataReceived(wire[at:at + 1])
    job = pool.jobs["node1"]
    assert [c.text for c in job.output.chunks()] == texts
    assert (job.state, transport.disconnecting) == ("ok", False)


def test_output_data_of_a_wrong_size_drops_the_connection() -> None:
    for size in (0, MAX_OUTPUT_DATA + 1):
        state, clock = setup()
        protocol, transport = connect(state, clock)
        protocol.dataReceived(hello())
        protocol.dataReceived(encode({"code": "output_data", "pool": "p", "stream": "stdout", "seq": 1, "size": size}))
        assert transport.disconnecting


def test_an_unknown_stream_or_reason_drops_the_connection() -> None:
    for bad in (
        {"code": "output", "pool": "p", "data": "x", "stream": "stdin"},
        {"code": "ended", "pool": "p", "status": 0, "reason": "bored"},
    ):
        state, clock = setup()
        protocol, transport = connect(state, clock)
        protocol.dataReceived(hello())
        protocol.dataReceived(encode(bad))
        assert transport.disconnecting
