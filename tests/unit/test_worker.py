"""The worker's side of the wire protocol, over StringTransport."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pcci.auth import check_proof, proof
from pcci.wire import PROTOCOL_VERSION, TERMINATOR, encode
from pcci.worker.connection import WorkerFactory
from pcci.worker.jobs import HeldJob, JobTable
from pcci.worker.settings import WorkerSettings


def frames(transport: StringTransport) -> list[dict]:
    data = transport.value()
    transport.clear()
    return [json.loads(f) for f in data.split(TERMINATOR) if f]


SECRET = b"s" * 32


def connect(secret: bytes | None = None, welcome: bool = True, **kwargs):
    """A worker connected to a master that runs --no-auth, welcomed unless told."""
    kwargs.setdefault("collect", lambda disk, jobs: succeed({"jobs_running": jobs}))
    clock = Clock()
    settings = WorkerSettings("pi1", secret, heartbeat=1, max_jobs=kwargs.pop("max_jobs", None))
    jobs = JobTable(clock, settings)
    factory = WorkerFactory(clock, settings, jobs, **kwargs)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    if welcome:
        protocol.dataReceived(encode({"code": "welcome", "version": PROTOCOL_VERSION}))
    return factory, protocol, transport


def challenge(protocol, hello: dict, secret: bytes = SECRET) -> None:
    master_nonce = "m" * 32
    protocol.dataReceived(
        encode(
            {
                "code": "challenge",
                "nonce": master_nonce,
                "proof": proof(secret, "master", "pi1", master_nonce, hello["nonce"]),
            }
        )
    )


class TestHandshake:
    def test_worker_proves_itself_to_a_master_that_did(self) -> None:
        _, protocol, transport = connect(SECRET, welcome=False)
        (hello,) = frames(transport)
        challenge(protocol, hello)
        (auth,) = frames(transport)
        assert auth["code"] == "auth"
        assert check_proof(SECRET, "worker", "pi1", hello["nonce"], "m" * 32, auth["proof"])
        protocol.dataReceived(encode({"code": "welcome", "version": PROTOCOL_VERSION}))
        protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "echo 'open"}))
        assert [f["code"] for f in frames(transport)] == ["heartbeat", "output", "ended"]

    def test_master_with_the_wrong_secret_is_refused(self) -> None:
        _, protocol, transport = connect(SECRET, welcome=False)
        (hello,) = frames(transport)
        challenge(protocol, hello, secret=b"x" * 32)
        assert frames(transport) == []  # no proof of ours for a stranger
        assert transport.disconnecting

    def test_master_that_skips_its_proof_is_refused(self) -> None:
        _, protocol, transport = connect(SECRET, welcome=False)
        frames(transport)
        protocol.dataReceived(
            encode({"code": "welcome", "version": PROTOCOL_VERSION})
            + encode({"code": "run", "pool": "p1", "cmd": "touch /tmp/pwned"})
        )
        assert transport.disconnecting
        assert frames(transport) == []

    def test_replayed_challenge_is_refused(self) -> None:
        """A master proof recorded on one connection fails on the next."""
        _, first, first_transport = connect(SECRET, welcome=False)
        (hello,) = frames(first_transport)
        challenge(first, hello)
        _, replay, transport = connect(SECRET, welcome=False)
        frames(transport)
        challenge(replay, hello)  # proof over the first connection's nonce
        assert transport.disconnecting
        assert frames(transport) == []

    def test_commands_before_the_handshake_are_refused(self) -> None:
        _, protocol, transport = connect(welcome=False)
        frames(transport)
        protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "true"}))
        assert transport.disconnecting
        assert frames(transport) == []

    def test_worker_without_secret_leaves_a_master_that_wants_one(self) -> None:
        _, protocol, transport = connect(None, welcome=False)
        (hello,) = frames(transport)
        challenge(protocol, hello)
        assert frames(transport) == []
        assert transport.disconnecting


def test_hello_names_the_worker_and_the_protocol_version() -> None:
    _, _, transport = connect(welcome=False)
    (hello,) = frames(transport)
    assert hello["code"] == "hello" and len(hello["nonce"]) >= 32
    assert (hello["name"], hello["version"]) == ("pi1", PROTOCOL_VERSION)
    assert hello["contiguous_seq"] is True
    assert transport.producer is not None  # output is flow-controlled


def test_a_replay_numbers_every_piece_after_the_master_s_last() -> None:
    factory, protocol, transport = connect()
    frames(transport)
    held = HeldJob("p1", max_output=10)
    for seq in range(1, 31):  # 30 bytes through a 10-byte cap: 6 to 25 dropped
        held.seq = seq
        held.output.append(str(seq % 10), "stdout", seq)
    held.end = (0, None)
    factory.jobs.held["p1"] = held
    protocol.dataReceived(encode({"code": "attach", "pool": "p1", "after": 10}))  # within the drop
    sent = [f for f in frames(transport) if f["code"] != "heartbeat"]
    note, *pieces, ended = sent
    assert (note["first"], note["seq"], note["stream"]) == (6, 25, "stderr")
    assert "20 bytes of output dropped" in note["data"]
    assert [p["seq"] for p in pieces] == [26, 27, 28, 29, 30]
    assert ended == {"code": "ended", "pool": "p1", "status": 0, "seq": 30}


def test_unparseable_command_ends_at_once_with_127() -> None:
    factory, protocol, transport = connect()
    frames(transport)
    protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "echo 'open"}))
    output, ended = frames(transport)
    assert output["code"] == "output" and "cannot parse command" in output["data"]
    assert ended == {"code": "ended", "pool": "p1", "status": 127, "reason": "not_started", "seq": 1}
    assert factory.jobs.running == set()
    # Held until the master acknowledges the end.
    assert factory.jobs.held["p1"].end == (127, "not_started")
    protocol.dataReceived(encode({"code": "ack", "pool": "p1"}))
    assert factory.jobs.held == {}


def test_output_goes_raw_to_a_master_whose_welcome_offers_it() -> None:
    """A master that says output_data gets output as raw UTF-8 bytes after
    a frame; one that does not (an older master) gets output frames."""
    _, protocol, transport = connect(welcome=False)
    frames(transport)
    protocol.dataReceived(encode({"code": "welcome", "version": PROTOCOL_VERSION, "output_data": True}))
    frames(transport)
    protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "echo 'open"}))
    header, rest = transport.value().split(TERMINATOR, 1)
    message = json.loads(header)
    data, ended = rest[: message["size"]], rest[message["size"]:]
    assert {k: message[k] for k in ("code", "pool", "stream", "seq")} == {
        "code": "output_data", "pool": "p1", "stream": "stderr", "seq": 1,
    }
    assert "cannot parse command" in data.decode("utf-8") and "data" not in message
    assert json.loads(ended.removesuffix(TERMINATOR))["code"] == "ended"

    _, protocol, transport = connect()  # welcomed without output_data
    frames(transport)
    protocol.dataReceived(encode({"code": "run", "pool": "p1", "cmd": "echo 'open"}))
    assert [f["code"] for f in frames(transport)] == ["output", "ended"]


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


def test_a_worker_whose_name_was_taken_comes_back_slower_each_time_in_a_row() -> None:
    reasons: list[str] = []
    factory, protocol, transport = connect(on_dismissed=reasons.append)
    bye = {"code": "bye", "reason": "another worker connected as 'pi1' from 10.0.0.9:4000",
           "reconnect": True, "replaced": True}
    protocol.dataReceived(encode(bye))
    assert reasons == [] and transport.disconnecting and factory.replacements == 1


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
    factory.jobs.kill_all().addCallback(fired.append)
    assert fired == [None]



class TestHeartbeats:
    def test_figures_go_out_every_interval_from_the_welcome(self) -> None:
        factory, protocol, transport = connect(welcome=False)
        clock = factory.reactor
        frames(transport)
        clock.advance(5)
        assert frames(transport) == []  # nothing before the handshake
        protocol.dataReceived(encode({"code": "welcome", "version": PROTOCOL_VERSION}))
        assert frames(transport) == [{"code": "heartbeat", "figures": {"jobs_running": 0}}]
        for _ in range(2):
            clock.advance(1)
            protocol.dataReceived(encode({"code": "pong"}))
            assert [f["code"] for f in frames(transport)] == ["heartbeat"]

    def test_silent_master_is_left_after_three_intervals(self) -> None:
        factory, protocol, transport = connect()
        clock = factory.reactor
        clock.advance(2)
        assert not transport.disconnecting
        clock.advance(1)
        assert transport.disconnected  # aborted; the ClientService reconnects

    def test_a_stuck_measurement_is_not_piled_up(self) -> None:
        from twisted.internet.defer import Deferred

        stuck: list[Deferred] = []

        def collect(disk: str, jobs: int) -> Deferred:
            stuck.append(Deferred())
            return stuck[-1]

        factory, protocol, transport = connect(collect=collect)
        for _ in range(2):
            factory.reactor.advance(1)
            protocol.dataReceived(encode({"code": "pong"}))
        assert len(stuck) == 1


def test_a_full_connection_pauses_every_job() -> None:
    """Output is flow-controlled: nothing is dropped, nothing piles up."""
    factory, protocol, transport = connect()

    class Job:
        paused = False

        def pause(self) -> None:
            self.paused = True

        def resume(self) -> None:
            self.paused = False

    held = factory.jobs.held
    for pool in ("p1", "p2"):
        held[pool] = HeldJob(pool, 1000)
        held[pool].process = Job()
    transport.producer.pauseProducing()
    assert all(job.process.paused for job in held.values())
    transport.producer.resumeProducing()
    assert not any(job.process.paused for job in held.values())


class QueuedJob:
    """Stands for a JobProcess in the factory's queue."""

    def __init__(self, name: str, started: list[str]) -> None:
        self.name, self._started = name, started
        self.ended = False
        self.pid = None

    def start(self) -> None:
        self._started.append(self.name)

    def cancel(self) -> None:
        self.ended = True

    def kill(self) -> None:
        pass


def test_at_most_max_jobs_run_and_the_rest_wait_in_order() -> None:
    table = JobTable(Clock(), WorkerSettings("pi1", max_jobs=2))
    started: list[str] = []
    jobs = [QueuedJob(f"j{i}", started) for i in range(5)]
    for queued in jobs:
        table.enqueue(queued)
    assert started == ["j0", "j1"]
    jobs[3].cancel()  # killed while it waited
    table.slot_freed(jobs[1])
    assert started == ["j0", "j1", "j2"]
    table.slot_freed(jobs[0])
    assert started == ["j0", "j1", "j2", "j4"]
    assert len(table.running) == 2 and not table.queue


def test_a_queued_job_is_pending_and_a_kill_cancels_it() -> None:
    factory, protocol, transport = connect(max_jobs=1)
    factory.jobs.running.add(QueuedJob("busy", []))  # the only slot is taken
    frames(transport)
    protocol.dataReceived(encode({"code": "run", "pool": "p2", "cmd": "sleep 1000"}))
    assert frames(transport) == []  # pending: not started, nothing to say
    protocol.dataReceived(encode({"code": "kill", "pool": "p2"}))
    assert frames(transport) == [
        {"code": "ended", "pool": "p2", "status": -1, "reason": "cancelled", "seq": 0}
    ]
    assert not factory.jobs.queue or all(job.ended for job in factory.jobs.queue)


def test_a_version_refusal_is_no_dismissal_and_is_logged_once_a_minute() -> None:
    """Upgrading the master first must not stop its older workers for good."""
    from twisted.logger import globalLogPublisher

    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        reasons: list[str] = []
        factory, protocol, transport = connect(on_dismissed=reasons.append, welcome=False)
        refusals = [
            # This pcci's master, and an older one that asked workers never to come back.
            {"code": "bye", "reason": "master speaks protocol 4 and accepts 3 to 4, not 2",
             "reconnect": True, "accepts": [3, 4]},
            {"code": "bye", "reason": "master speaks protocol 3, not 4", "reconnect": False},
        ]
        for bye in refusals * 2:
            protocol.dataReceived(encode(bye))
            assert transport.disconnecting
            protocol.connectionLost(None)
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
            transport = StringTransport()
            protocol.makeConnection(transport)
            factory.reactor.advance(20)
        assert reasons == []
        said = [e for e in logged if "refuses this worker" in e.get("log_format", "")]
        assert len(said) == 2  # 80 s of refusals: one line, then one after a minute
    finally:
        globalLogPublisher.removeObserver(logged.append)
