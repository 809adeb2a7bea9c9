"""The master's side of the wire protocol: one L{WorkerConnection} per worker."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.clock import StallWatch
from pcci.handshake import Hello
from pcci.master.cluster.state import ClusterState
from pcci.master.links.admission import Admission, Gate
from pcci.master.links.facts import FactFrames
from pcci.master.links.shells import ShellFrames
from pcci.transfer import CHUNK
from pcci.wire import (
    END_REASONS,
    MAX_FRAME,
    MAX_OUTPUT_DATA,
    MISSED_HEARTBEATS,
    PROTOCOL_VERSION,
    STREAMS,
    WORKER_MESSAGES,
    ProtocolError,
    peer_address,
)

#: Seconds a new connection has to complete the handshake before it is dropped.
HANDSHAKE_TIMEOUT = 10.0

#: Seconds an acknowledgement waits, at most, for a frame to go out with:
#: a worker running pool after pool hears of each end with its next job,
#: in the same write (a TLS record and a send() less a job).  Until then it
#: keeps the end, and would send it again to a master that came after.
ACK_DELAY = 1.0


class WorkerConnection(ShellFrames, FactFrames):
    """
    A connected worker, as the master sees it.

    Until the handshake is done it is nobody: with a cluster secret, the
    master proves it holds the secret in its C{challenge} and the worker
    proves it in its C{auth}, over fresh nonces from both sides.  Once
    registered, it reports to the roster and the job reports and carries the
    state's requests to the worker.
    """

    accepts = WORKER_MESSAGES
    log = Logger()

    def __init__(self, factory: WorkerPortFactory) -> None:
        self.factory = factory
        self.roster = factory.state.roster
        self.reports = factory.state.reports
        self.shells = factory.state.shells
        self.clock = factory.clock
        self.handshake_timeout = factory.handshake_timeout
        self.MAX_LENGTH = factory.max_frame
        #: Empty until its hello is accepted.
        self.name = ""
        self.address = "?"
        self.heartbeat = 0.0
        self.labels: dict[str, str] = {}
        self.held_jobs: list[dict[str, Any]] = []
        self.pcci_version = self.python_version = ""
        self.upgrades = False
        self.facts = False
        self.master: str | None = None  # connected here
        #: The protocol version spoken on this connection: the worker's.
        self.version = PROTOCOL_VERSION
        self._last_frame = 0.0
        self._watchdog: IDelayedCall | None = None
        self._handshake_call: IDelayedCall | None = None
        self._hello: Hello | None = None
        self._refused = False
        #: Set by the port: the connection is over TLS, and its outermost transport.
        self.tls = False
        self.outer_transport: Any = None
        #: The connection closed (an answer from the store may come after).
        self.gone = False
        self.admission = Admission(self, factory.gate)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.address = peer_address(self.transport)
        self._handshake_call = self.clock.callLater(self.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._handshake_call = None
        self.protocolViolation(f"no handshake within {self.handshake_timeout:g} seconds")

    def _cancel_handshake_timeout(self) -> None:
        if self._handshake_call is not None and self._handshake_call.active():
            self._handshake_call.cancel()
        self._handshake_call = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        self._cancel_handshake_timeout()
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        if self.name:
            self.shells.link_lost(self, self.name)
            self.roster.leave(self, "disconnected")
        elif self._hello is not None and not self._refused and self.admission.handshake is not None:
            self.log.warn(
                "worker {name} at {peer} left during the handshake: does it hold"
                " this cluster's secret?",
                name=self._hello.name,
                peer=self.address,
            )

    # Messages from the worker

    def handle_hello(self, message: dict[str, Any]) -> None:
        if self._hello is not None or self.admission.busy:
            self.protocolViolation("a second hello")
            return
        try:
            hello = self.admission.read_hello(message)
        except ProtocolError as e:
            self.protocolViolation(str(e))
            return
        if hello is None:
            return
        self._hello = hello
        self.version = hello.version
        self.labels = hello.labels
        self.pcci_version, self.python_version = hello.pcci_version, hello.python_version
        self.upgrades = hello.upgrades
        self.facts = hello.facts
        self.held_jobs = hello.jobs
        self.remembers_jobs = hello.remembers_jobs
        self.contiguous_seq = hello.contiguous_seq
        self.heartbeat = hello.heartbeat
        self.admission.hello(hello)

    def handle_auth(self, message: dict[str, Any]) -> None:
        if self.admission.handshake is None or self.name:
            self.protocolViolation("an auth out of place")
            return
        self.admission.auth(message)

    def handle_join(self, message: dict[str, Any]) -> None:
        self.admission.join(message)

    def handle_renew(self, message: dict[str, Any]) -> None:
        self.admission.renew(message)

    def handle_enroll(self, message: dict[str, Any]) -> None:
        self.admission.enroll(message)

    @property
    def auth(self) -> str:
        """How this worker proved itself: identity, secret, local or none."""
        return self.admission.how

    def refuse(self, fields: dict[str, Any]) -> None:
        """Send this C{bye}, and close: the worker is not admitted (or no more)."""
        self.sendMessage("bye", **fields)
        self._refused = True  # logged already: connectionLost need not
        self.close_connection()

    def admitted(self) -> None:
        assert self._hello is not None
        self._cancel_handshake_timeout()
        self.name = self._hello.name
        self._last_frame = self.clock.seconds()
        self.factory.joined(self)
        # Welcomed first: adding the worker may send it attach, ack and kill.
        # upgrades: it may say how an upgrade went (upgrade_status).
        # facts: it may tell its machine's facts (see pcci.worker.facts).
        welcome: dict[str, Any] = {"version": self.version, "output_data": True, "upgrades": True, "facts": True}
        if self.admission.identities:
            welcome["identities"] = True  # it may renew, or enroll
        self.sendMessage("welcome", **welcome)
        if self.version < PROTOCOL_VERSION:
            self.log.info("worker {name} speaks protocol {version}, one version back: it runs jobs as before;"
                          " upgrade it at leisure", name=self.name, version=self.version)
        self.roster.join(self)
        self._watchdog = self.clock.callLater(MISSED_HEARTBEATS * self.heartbeat, self._check_alive)

    # Lost-worker detection: a half-open connection never reports its end.

    def frame_received(self) -> None:
        self._last_frame = self.clock.seconds()

    def _check_alive(self) -> None:
        # Silence while this master stood still is not the worker's.
        silent = self.clock.seconds() - self.factory.stall.quiet_since(self._last_frame)
        limit = MISSED_HEARTBEATS * self.heartbeat
        if silent < limit:
            self._watchdog = self.clock.callLater(limit - silent, self._check_alive)
            return
        self._watchdog = None
        self.log.warn("worker {name} at {peer} silent for {silent:.1f} s: declared lost", name=self.name,
                      peer=self.address, silent=silent)
        self.roster.leave(self, f"lost: silent for {silent:.1f} s")
        self.abort_connection()

    def handle_heartbeat(self, message: dict[str, Any]) -> None:
        if self._current():
            self.roster.heartbeat(self.name, message["figures"])
            self.sendMessage("pong")

    def _current(self) -> bool:
        """True for a worker that said hello and was not replaced since."""
        if not self.name:
            self.protocolViolation("a job message before the handshake")
            return False
        return self.roster.links.get(self.name) is self

    def handle_started(self, message: dict[str, Any]) -> None:
        if self._current():
            self.reports.job_started(self.name, message["pool"], message["pid"])

    def handle_output(self, message: dict[str, Any]) -> None:
        if message["stream"] not in STREAMS:
            self.protocolViolation(f"unknown stream {message['stream']!r}")
        elif not _optional_ints(message, "seq", "first"):
            self.protocolViolation("an output seq that is not an integer")
        else:
            self._output(message, message["data"])

    def handle_output_data(self, message: dict[str, Any]) -> None:
        """Output as raw UTF-8 bytes after the frame (the welcome offered it)."""
        if message["stream"] not in STREAMS:
            self.protocolViolation(f"unknown stream {message['stream']!r}")
        elif not 0 < message["size"] <= MAX_OUTPUT_DATA:
            self.protocolViolation(f"output_data of {message['size']} bytes")
        elif not _optional_ints(message, "first"):
            self.protocolViolation("an output seq that is not an integer")
        else:
            self.receive_raw(
                message["size"], lambda data: self._output(message, data.decode("utf-8", "replace"))
            )

    def _output(self, message: dict[str, Any], text: str) -> None:
        if self._current():
            self.reports.job_output(
                self.name, message["pool"], text, message["stream"], message.get("seq"),
                message.get("first"),
            )

    def handle_ended(self, message: dict[str, Any]) -> None:
        reason = message.get("reason")
        if reason is not None and reason not in END_REASONS:
            self.protocolViolation(f"unknown end reason {reason!r}")
        elif not _optional_ints(message, "seq"):
            self.protocolViolation("an ended seq that is not an integer")
        elif self._current():
            self.reports.job_ended(
                self.name, message["pool"], message["status"], reason, message.get("seq")
            )

    # A push's and a fetch's answers (see pcci.master.transfers.pushes and fetches)

    def _sender(self, pool_id: str) -> Any:
        push = self.factory.state.pushes.get(pool_id) if self._current() else None
        sender = None if push is None else push.senders.get(self.name)
        return sender if sender is not None and sender.link is self else None

    def handle_put_need(self, message: dict[str, Any]) -> None:
        sender = self._sender(message["pool"])
        if sender is not None:
            sender.need(message["paths"], message["more"])

    def handle_put_ack(self, message: dict[str, Any]) -> None:
        sender = self._sender(message["pool"])
        if sender is not None:
            sender.ack(message["written"])

    def handle_get_entries(self, message: dict[str, Any]) -> None:
        archive = self._archive(message["pool"])
        if archive is not None:
            archive.entries(message["entries"])

    def handle_get_data(self, message: dict[str, Any]) -> None:
        if not 0 < message["size"] <= CHUNK:
            self.protocolViolation(f"get_data of {message['size']} bytes")
            return
        archive = self._archive(message["pool"])

        def received(data: bytes) -> None:
            if archive is not None:  # else its fetch is over: dropped
                archive.data(message["path"], message["offset"], data)

        self.receive_raw(message["size"], received)  # the raw bytes follow

    def _archive(self, pool_id: str) -> Any:
        fetch = self.factory.state.fetches.get(pool_id) if self._current() else None
        archive = None if fetch is None else fetch.archives.get(self.name)
        return archive if archive is not None and archive.link is self else None

    # Requests from the state (WorkerLink)

    def run_job(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None:
        self.sendMessage("run", pool=pool_id, cmd=cmd, **options)

    def kill_job(self, pool_id: str) -> None:
        self.sendMessage("kill", pool=pool_id)

    def upgrade(self, order: dict[str, Any]) -> None:
        self.sendMessage("upgrade", **order)

    def handle_upgrade_status(self, message: dict[str, Any]) -> None:
        if self._current():
            self.factory.state.upgrades.status(self.name, message["state"], message["reason"][:1000])

    def attach_job(self, pool_id: str, after: int) -> None:
        self.sendMessage("attach", pool=pool_id, after=after)

    def ack_job(self, pool_id: str) -> None:
        """The job's end is kept: the worker hears it with the next frame, or within L{ACK_DELAY}."""
        if self.send_later("ack", pool=pool_id):
            self.factory.flush_soon(self)

    def dismiss(self, reason: str) -> None:
        # Not reconnect=False: an impostor holding the secret must not stop
        # the real worker for good.  It comes back, slower each time.
        self.sendMessage("bye", reason=reason, reconnect=True, replaced=True)
        self.close_connection()
        self._abort_later()

    def _abort_later(self) -> None:
        """A half-open ghost never acknowledges the close: do not keep it forever."""
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = self.clock.callLater(
            MISSED_HEARTBEATS * self.heartbeat, self.abort_connection
        )

    def revoke(self, reason: str) -> None:
        """Its identity was revoked: tell it never to come back, and close."""
        self.refuse({"reason": reason, "reconnect": False, "refusal": "revoked"})
        self._abort_later()


class WorkerPortFactory(Factory["WorkerConnection"]):
    """
    The worker port's settings; builds a L{WorkerConnection} for each
    connection.
    """

    noisy = False

    def __init__(
        self,
        state: ClusterState,
        clock: IReactorTime,
        gate: Gate,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_frame: int = MAX_FRAME,
        on_joined: Callable[[WorkerConnection], None] = lambda connection: None,
    ) -> None:
        self.state = state
        self.clock = clock
        #: Who may be a worker, and how each proves it (see L{pcci.master.links.admission}).
        self.gate = gate
        self.handshake_timeout = handshake_timeout
        self.max_frame = max_frame
        self.stall = StallWatch(clock)
        self._on_joined = on_joined
        #: Connections holding frames (L{WorkerConnection.send_later}) to flush.
        self._holding: list[WorkerConnection] = []
        self._flush_call: IDelayedCall | None = None

    def startFactory(self) -> None:
        self.stall.start()

    def stopFactory(self) -> None:
        self.stall.stop()
        if self._flush_call is not None:
            self._flush_call.cancel()
        self._flush_held()

    def flush_soon(self, connection: WorkerConnection) -> None:
        """C{connection} holds frames: they go within L{ACK_DELAY} at the latest."""
        self._holding.append(connection)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(ACK_DELAY, self._flush_held)

    def _flush_held(self) -> None:
        self._flush_call = None
        holding, self._holding = self._holding, []
        for connection in holding:
            connection.flush_later()  # nothing, if a frame took them along already

    def joined(self, connection: WorkerConnection) -> None:
        """A worker proved itself: it no longer counts as a stranger."""
        self._on_joined(connection)

    def buildProtocol(self, addr: IAddress | None) -> WorkerConnection:
        return WorkerConnection(self)


def _optional_ints(message: dict[str, Any], *keys: str) -> bool:
    """Whether each of C{keys} the message has is an integer (not a boolean)."""
    return all(
        message.get(key) is None or (isinstance(message[key], int) and not isinstance(message[key], bool))
        for key in keys
    )
