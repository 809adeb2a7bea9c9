"""
The worker's side of the wire protocol: the handshake, heartbeats, and the
master's requests handed to the job table (L{pcci.worker.jobs}).
"""

from __future__ import annotations

import platform
import socket
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from pcci import __version__
from pcci.clock import StallWatch
from pcci.handshake import WorkerHandshake, is_version_refusal
from pcci.identity import EXIT_STATUSES, WorkerIdentity
from pcci.labels import default_labels
from pcci.wire import (
    END_NOT_STARTED,
    MASTER_MESSAGES,
    MISSED_HEARTBEATS,
    STATUS_NOT_STARTED,
    ProtocolError,
    peer_address,
    run_options,
)
from pcci.worker.certificates import CertificateFrames
from pcci.worker.facts import FactFrames, gather
from pcci.worker.health import collect_figures
from pcci.worker.jobs import JobTable
from pcci.worker.settings import WorkerSettings
from pcci.worker.shells import ShellFrames
from pcci.worker.transfers import TransferFrames
from pcci.worker.upgrade import Upgrader

#: Seconds between heartbeats, by default.

#: Seconds between two log lines saying the master refuses this worker's
#: protocol version (it is refused at every try, with backoff).
REFUSAL_LOG_INTERVAL = 60.0


class JoinFailed(Exception):
    """The connection closed before the master welcomed this worker."""


def default_name() -> str:
    """A worker is named after its host unless told otherwise."""
    return socket.gethostname()


@implementer(IPushProducer)
class MasterConnection(TransferFrames, ShellFrames, CertificateFrames, FactFrames):
    """
    The worker's connection to its master, and the job table's link to it.

    It is also the producer of what it writes: when the master reads slower
    than jobs print, reading from the jobs' pipes pauses, so memory stays
    bounded and no output is lost.
    """

    accepts = MASTER_MESSAGES
    log = Logger()
    factory: WorkerFactory

    def __init__(self) -> None:
        TransferFrames.__init__(self)
        ShellFrames.__init__(self)
        CertificateFrames.__init__(self)
        FactFrames.__init__(self)
        self.paused = False
        self._last_frame = 0.0
        self._beat: LoopingCall | None = None
        self._collecting = False
        self._handshake: WorkerHandshake | None = None
        #: The handshake is over: commands are accepted.
        self._ready = False
        #: The master refused this worker's protocol version (logged by the factory).
        self._refused = False
        #: The master takes output as raw bytes after an C{output_data} frame
        #: (its welcome says so); else as the C{data} of C{output} frames.
        self.output_data = False
        #: Fires when the master welcomes this worker; fails if it never does.
        self.joined: Deferred[MasterConnection] = Deferred()
        #: Fires when the connection is closed, what was written sent.
        self.closed: Deferred[None] = Deferred()

    @property
    def jobs(self) -> JobTable:
        return self.factory.jobs

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        factory.connection = self
        self._last_frame = factory.reactor.seconds()
        cast(IConsumer, self.transport).registerProducer(self, True)
        # Over mutual TLS with its identity, TLS proved the master (its CA's
        # certificate): there is no secret to prove, either way.
        by_identity = factory.identity is not None and factory.identity.certificate is not None
        self._handshake = WorkerHandshake(None if by_identity else factory.secret, factory.name)
        hello = self._handshake.hello(
            heartbeat=factory.settings.heartbeat,
            hostname=socket.gethostname(),
            labels=factory.labels,
            jobs=self.jobs.held_jobs(),
            remembers_jobs=self.jobs.received is not None,
            contiguous_seq=True,
            pcci_version=__version__,
            python_version=platform.python_version(),
            upgrades=factory.upgrader is not None,
            facts=True,
        )
        self.sendMessage("hello", **hello)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if not self._ready:
            if not self._refused:
                self.log.warn(
                    "could not join the master: {why}",
                    why=reason.getErrorMessage() if reason else "connection closed",
                )
            self.joined.errback(JoinFailed("connection closed during the handshake"))
        if self.factory.connection is self:
            self.factory.connection = None
            self.jobs.disconnected()
        self.abort_transfers("the connection to the master closed")
        self.hang_up_shells("the connection to the master closed")
        self.stop_facts()
        self.factory.on_lost(self)
        self.closed.callback(None)

    # Messages from the master

    def handle_challenge(self, message: dict[str, Any]) -> None:
        assert self._handshake is not None
        peer = peer_address(self.transport)
        try:
            auth = self._handshake.answer(message)
        except ValueError:
            self.log.error(
                "the master at {peer} requires a cluster secret: start this worker"
                " with --secret-file",
                peer=peer,
            )
            self.close()
            return
        if auth is None:
            self.log.error(
                "the master at {peer} failed to prove it holds the cluster secret:"
                " refusing its commands",
                peer=peer,
            )
            self.abort_connection()
            return
        self.sendMessage("auth", **auth)

    def handle_welcome(self, message: dict[str, Any]) -> None:
        assert self._handshake is not None
        if not self._handshake.may_be_welcomed():
            self.log.error(
                "the master at {peer} did not prove it holds the cluster secret:"
                " refusing its commands",
                peer=peer_address(self.transport),
            )
            self.abort_connection()
            return
        self._ready = True
        self.output_data = message.get("output_data") is True
        self.identities = message.get("identities") is True
        if self.identities and self.factory.identity is None and self.factory.settings.enroll:
            self._ask("enroll", self.factory.new_identity())
        self.jobs.connected(self)
        self.start_facts(message.get("facts") is True)
        if self.factory.upgrader is not None:
            self.factory.upgrader.welcomed(message.get("upgrades") is True)
        self.joined.callback(self)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = self.factory.reactor
        self._watch(self._beat.start(self.factory.settings.heartbeat, now=True))
        self.log.info(
            "worker {name} joined master at {peer}",
            name=self.factory.name,
            peer=peer_address(self.transport),
        )

    def _watch(self, looping: Deferred[Any]) -> None:
        """A heartbeat loop that failed would stop silently: say so, and reconnect."""

        def failed(failure: Failure) -> None:
            self.log.failure("heartbeats stopped", failure)
            self.abort_connection()

        looping.addErrback(failed)

    def handle_bye(self, message: dict[str, Any]) -> None:
        if is_version_refusal(message) or message.get("pending") is True:
            # The master (or this worker) is being upgraded, or a person is
            # to approve this worker: keep trying.
            self._refused = True
            self.factory.refused(message["reason"])
        elif message.get("replaced") is True:
            self.factory.replaced(message["reason"])
        else:
            refusal = message.get("refusal", "")
            self.factory.exit_status = EXIT_STATUSES.get(refusal, 1)
            if refusal == "revoked" and self.factory.identity is not None and not message["reconnect"]:
                self.factory.identity.set_aside()
            self.log.error("master closed this connection: {reason}", reason=message["reason"])
            if not message["reconnect"]:
                self.factory.dismissed(message["reason"])
        self.close()

    def close(self) -> None:
        """
        Close the connection.  The producer goes first: over TLS, a
        transport with a producer registered waits for it before closing.
        """
        if self.transport is not None:
            cast(IConsumer, self.transport).unregisterProducer()
        self.close_connection()

    # Heartbeats both ways: figures go out, any frame back proves the master lives.

    def frame_received(self) -> None:
        self._last_frame = self.factory.reactor.seconds()

    def handle_pong(self, message: dict[str, Any]) -> None:
        pass

    def _heartbeat(self) -> None:
        # Silence while this worker stood still is not the master's.
        since = self.factory.stall.quiet_since(self._last_frame)
        silent = self.factory.reactor.seconds() - since
        if silent >= MISSED_HEARTBEATS * self.factory.settings.heartbeat:
            self.log.warn("master silent for {silent:.1f} s: reconnecting", silent=silent)
            self.abort_connection()
            return
        self._renew_if_due()
        if self._collecting:
            return  # the last measurement is still stuck (a hung disk?)
        self._collecting = True
        d = self.factory.collect(self.factory.settings.disk, len(self.jobs.running))

        def send(figures: dict[str, Any]) -> None:
            self.sendMessage("heartbeat", figures=figures)

        d.addCallback(send)
        d.addErrback(lambda f: self.log.failure("cannot measure this machine", f))
        d.addBoth(lambda _: setattr(self, "_collecting", False))

    @property
    def welcomed(self) -> bool:
        """The master welcomed this worker on this connection."""
        return self._ready

    def _handshake_done(self) -> bool:
        if not self._ready:
            self.protocolViolation("a command before the handshake")
        return self._ready

    def handle_run(self, message: dict[str, Any]) -> None:
        if not self._handshake_done():
            return
        pool_id = message["pool"]
        try:
            options = run_options(message)
        except ProtocolError as e:
            # The master checks options: this one is broken, the others' jobs are not.
            self.sendMessage("output", pool=pool_id, data=f"pcci: {e}\n", stream="stderr")
            self.sendMessage("ended", pool=pool_id, status=STATUS_NOT_STARTED, reason=END_NOT_STARTED)
            return
        sent_ago = message.get("sent_ago")
        if not isinstance(sent_ago, (int, float)) or isinstance(sent_ago, bool) or not sent_ago >= 0:
            sent_ago = None
        self.jobs.run(pool_id, message["cmd"], options, sent_ago)

    def handle_upgrade(self, message: dict[str, Any]) -> None:
        if not self._handshake_done():
            return
        upgrader = self.factory.upgrader
        if upgrader is None:
            self.sendMessage("upgrade_status", state="failed", reason="this worker was not installed by install.sh")
        else:
            upgrader.start(message)

    def handle_kill(self, message: dict[str, Any]) -> None:
        if self._handshake_done():
            self.jobs.kill(message["pool"])
            self.abort_transfers("killed", message["pool"])

    def handle_attach(self, message: dict[str, Any]) -> None:
        if self._handshake_done():
            self.jobs.attach(message["pool"], message["after"])

    def handle_ack(self, message: dict[str, Any]) -> None:
        if self._handshake_done():
            self.jobs.acknowledged(message["pool"])

    # The job table's link (MasterLink)

    def report(self, code: str, pool: str, **fields: Any) -> None:
        if code == "output" and self.output_data and "seq" in fields:  # a note of pcci's has none
            data = fields.pop("data").encode("utf-8")
            self.send_raw({"code": "output_data", "pool": pool, **fields}, data)
        else:
            self.sendMessage(code, pool=pool, **fields)

    # IPushProducer, for the transport to the master

    def pauseProducing(self) -> None:
        self.paused = True
        self.jobs.pause()

    def resumeProducing(self) -> None:
        self.paused = False
        self.jobs.resume()

    def stopProducing(self) -> None:
        pass


if TYPE_CHECKING:
    _Factory = Factory["MasterConnection"]
else:  # the Twisted Python 3.9 installs (25.5) has no Factory[...] at run time
    _Factory = Factory


class WorkerFactory(_Factory):
    """
    A worker's settings, its job table, and its connection of the moment.

    @ivar secret: the cluster secret, or None to join a master that runs
        with C{--no-auth} (and trust whichever master answers).
    @ivar on_dismissed: called with the master's reason when the master asks
        this worker never to reconnect (another worker took its name).
    """

    protocol = MasterConnection
    log = Logger()
    noisy = False

    def __init__(
        self,
        reactor: Any,
        settings: WorkerSettings,
        jobs: JobTable,
        identity: WorkerIdentity | None = None,
        on_dismissed: Callable[[str], None] = lambda reason: None,
        collect: Callable[[str, int], Deferred[dict[str, Any]]] | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.name = settings.name
        self.secret = settings.secret
        #: This worker's certificate and key, once it has them: it dials
        #: with them (see L{pcci.worker.joining.IdentityEndpoint}).
        self.identity = identity
        #: The status to exit with when the master says never to come back.
        self.exit_status = 1
        self.jobs = jobs
        self.collect = collect or (
            lambda disk, jobs: deferToThread(collect_figures, disk, jobs)
        )
        #: This machine's facts, gathered in a thread (blocking reads, programs).
        self.gather_facts: Callable[[], Deferred[dict[str, Any]]] = (
            lambda: deferToThread(gather, settings.state_dir)
        )
        self.on_dismissed = on_dismissed
        #: What this worker says of itself, for targeting.
        self.labels = default_labels() if settings.labels is None else settings.labels
        self.stall = StallWatch(reactor)
        self.connection: MasterConnection | None = None
        #: Called with each connection that closes (the dialer redials).
        self.on_lost: Callable[[MasterConnection], None] = lambda connection: None
        self._refusal_logged: float | None = None
        self._file_threads: ThreadPool | None = None
        #: Times in a row another connection took this worker's name: the
        #: dialer waits longer before each next try.
        self.replacements = 0
        #: Upgrades this worker when the master asks (None: install.sh did not install it).
        self.upgrader: Upgrader | None = None

    def tell_upgrade(self, state: str, reason: str) -> None:
        """Say how an upgrade goes to the master of the moment, if one welcomed this worker."""
        connection = self.connection
        if connection is not None and connection.welcomed:
            connection.sendMessage("upgrade_status", state=state, reason=reason)

    def file_threads(self) -> ThreadPool:
        """The one thread pushed files are written in, started when first needed."""
        if self._file_threads is None:
            self._file_threads = ThreadPool(1, 1, name="pcci-files")
            self._file_threads.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self._file_threads.stop)
        return self._file_threads

    def startFactory(self) -> None:
        self.stall.start()

    def stopFactory(self) -> None:
        self.stall.stop()

    def replaced(self, reason: str) -> None:
        """Another connection took this worker's name: come back, slower each time in a row."""
        self.replacements += 1
        self.log.error(
            "the master dropped this connection: {reason}; if that is not this worker"
            " reconnecting, another machine holds the cluster secret and this worker's name",
            reason=reason,
        )

    def new_identity(self) -> WorkerIdentity:
        state_dir = self.settings.state_dir
        assert state_dir is not None, "a worker that enrolls keeps its identity in its state directory"
        return WorkerIdentity.fresh(state_dir, self.name)

    def dismissed(self, reason: str) -> None:
        self.log.error("worker {name} will not reconnect: {reason}", name=self.name, reason=reason)
        self.on_dismissed(reason)

    def refused(self, reason: str) -> None:
        """The master refuses this worker's protocol version: said at most once a minute."""
        now = self.reactor.seconds()
        if self._refusal_logged is None or now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            self.log.error("the master refuses this worker for now: {reason}; trying again", reason=reason)
