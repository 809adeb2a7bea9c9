"""
The worker's side of the wire protocol: run what the master asks, report back.

A worker's jobs outlive its connections.  It keeps each job's output
(capped, its beginning and end) and its end until the master acknowledges
that end, which it does once it has stored it: when the connection drops,
the jobs run on, and the next connection's C{hello} lists them so the
master carries on with each (C{attach}), receiving what it missed.  At
most C{max_jobs} run at once; the others wait their turn, in order.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pcci.auth import check_proof, new_nonce, proof
from pcci.clock import StallWatch
from pcci.labels import default_labels
from pcci.wire import (
    END_NOT_STARTED,
    MASTER_MESSAGES,
    MISSED_HEARTBEATS,
    STATUS_NOT_STARTED,
    PROTOCOL_VERSION,
    FramedJSONProtocol,
    ProtocolError,
    peer_address,
    run_options,
)
from pcci.worker.health import collect_figures
from pcci.worker.journal import JobJournal
from pcci.output import DEFAULT_MAX_OUTPUT, Chunk, OutputBuffer
from pcci.worker.process import JobProcess

#: Ended jobs kept for a master that has not acknowledged them, at most.
MAX_UNACKED = 10_000


class HeldJob:
    """A job as the worker holds it: its process, kept output, and end."""

    def __init__(self, pool_id: str, max_output: int) -> None:
        self.pool_id = pool_id
        self.process: JobProcess | None = None
        self.output = OutputBuffer(max_output)
        #: Chunks of output so far; each chunk's C{event} is its number.
        self.seq = 0
        self.pid: int | None = None
        #: C{(status, reason)} once ended.
        self.end: tuple[int, str | None] | None = None
        #: The current connection's master carries on with this job.
        self.attached = False

    def describe(self) -> dict[str, Any]:
        return {"pool": self.pool_id, "ended": self.end is not None}


#: Seconds between heartbeats, by default.
DEFAULT_HEARTBEAT = 5.0


def default_max_jobs() -> int:
    """Jobs a worker runs at once by default: four per CPU."""
    return 4 * (os.cpu_count() or 1)


class JoinFailed(Exception):
    """The connection closed before the master welcomed this worker."""


def default_name() -> str:
    """A worker is named after its host unless told otherwise."""
    return socket.gethostname()


@implementer(IPushProducer)
class MasterConnection(FramedJSONProtocol):
    """
    The worker's connection to its master.

    It is also the producer of what it writes: when the master reads slower
    than jobs print, reading from the jobs' pipes pauses, so memory stays
    bounded and no output is lost.
    """

    accepts = MASTER_MESSAGES
    log = Logger()
    factory: WorkerFactory

    def __init__(self) -> None:
        self._paused = False
        self._nonce = new_nonce()
        self._last_frame = 0.0
        self._beat: LoopingCall | None = None
        self._collecting = False
        #: The master proved it holds the cluster secret.
        self._master_proven = False
        #: The handshake is over: commands are accepted.
        self._ready = False
        #: Fires when the master welcomes this worker; fails if it never does.
        self.joined: Deferred[MasterConnection] = Deferred()
        #: Fires when the connection is closed, what was written sent.
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connection = self
        self._last_frame = self.factory.reactor.seconds()
        self.transport.registerProducer(self, True)
        self.sendMessage(
            "hello",
            name=self.factory.name,
            version=PROTOCOL_VERSION,
            nonce=self._nonce,
            heartbeat=self.factory.heartbeat,
            hostname=socket.gethostname(),
            labels=self.factory.labels,
            jobs=[held.describe() for held in self.factory.held.values()],
        )

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if not self._ready:
            self.log.warn(
                "could not join the master: {why}",
                why=reason.getErrorMessage() if reason else "connection closed",
            )
            self.joined.errback(JoinFailed("connection closed during the handshake"))
        if self.factory.connection is self:
            self.factory.connection = None
            self.factory.detached()
        self.factory.on_lost(self)
        self.closed.callback(None)

    # Messages from the master

    def handle_challenge(self, message: dict[str, Any]) -> None:
        secret = self.factory.secret
        peer = peer_address(self.transport)
        if secret is None:
            self.log.error(
                "the master at {peer} requires a cluster secret: start this worker"
                " with --secret-file",
                peer=peer,
            )
            self.close()
            return
        if self._master_proven or not check_proof(
            secret,
            "master",
            self.factory.name,
            message["nonce"],
            self._nonce,
            message["proof"],
        ):
            self.log.error(
                "the master at {peer} failed to prove it holds the cluster secret:"
                " refusing its commands",
                peer=peer,
            )
            self.transport.abortConnection()
            return
        self._master_proven = True
        self.sendMessage(
            "auth",
            proof=proof(secret, "worker", self.factory.name, self._nonce, message["nonce"]),
        )

    def handle_welcome(self, message: dict[str, Any]) -> None:
        if self.factory.secret is not None and not self._master_proven:
            self.log.error(
                "the master at {peer} did not prove it holds the cluster secret:"
                " refusing its commands",
                peer=peer_address(self.transport),
            )
            self.transport.abortConnection()
            return
        self._ready = True
        self.joined.callback(self)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = self.factory.reactor
        self._beat.start(self.factory.heartbeat, now=True)
        self.log.info(
            "worker {name} joined master at {peer}",
            name=self.factory.name,
            peer=peer_address(self.transport),
        )

    def handle_bye(self, message: dict[str, Any]) -> None:
        self.log.error(
            "master closed this connection: {reason}", reason=message["reason"]
        )
        if not message["reconnect"]:
            self.factory.dismissed(message["reason"])
        self.close()

    def close(self) -> None:
        """
        Close the connection.  The producer goes first: over TLS, a
        transport with a producer registered waits for it before closing.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # Heartbeats both ways: figures go out, any frame back proves the master lives.

    def frame_received(self) -> None:
        self._last_frame = self.factory.reactor.seconds()

    def handle_pong(self, message: dict[str, Any]) -> None:
        pass

    def _heartbeat(self) -> None:
        # Silence while this worker stood still is not the master's.
        since = self.factory.stall.quiet_since(self._last_frame)
        silent = self.factory.reactor.seconds() - since
        if silent >= MISSED_HEARTBEATS * self.factory.heartbeat:
            self.log.warn(
                "master silent for {silent:.1f} s: reconnecting", silent=silent
            )
            self.transport.abortConnection()
            return
        if self._collecting:
            return  # the last measurement is still stuck (a hung disk?)
        self._collecting = True
        d = self.factory.collect(self.factory.disk, len(self.factory.jobs))

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
        if pool_id in self.factory.held:
            self.log.warn("pool {pool} is already running here", pool=pool_id)
            return
        try:
            options = run_options(message)
        except ProtocolError as e:
            # The master checks options: this one is broken, the others' jobs are not.
            self.sendMessage("output", pool=pool_id, data=f"pcci: {e}\n", stream="stderr")
            self.sendMessage("ended", pool=pool_id, status=STATUS_NOT_STARTED, reason=END_NOT_STARTED)
            return
        self.factory.run(pool_id, message["cmd"], options)

    def handle_kill(self, message: dict[str, Any]) -> None:
        if self._handshake_done():
            self.factory.kill(message["pool"])

    def handle_attach(self, message: dict[str, Any]) -> None:
        if self._handshake_done():
            self.factory.attach(message["pool"], message["after"])

    def handle_ack(self, message: dict[str, Any]) -> None:
        if self._handshake_done():
            self.factory.acknowledged(message["pool"])

    # IPushProducer, for the transport to the master

    def pauseProducing(self) -> None:
        self._paused = True
        self.factory.pause_jobs()

    def resumeProducing(self) -> None:
        self._paused = False
        self.factory.resume_jobs()

    @property
    def paused(self) -> bool:
        return self._paused

    def stopProducing(self) -> None:
        pass


class WorkerFactory(Factory):
    """
    A worker's settings, and the jobs of its connections to the master.

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
        name: str,
        secret: bytes | None,
        kill_grace: float = 5.0,
        on_dismissed: Callable[[str], None] = lambda reason: None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        disk: str = "/",
        collect: Callable[[str, int], Deferred[dict[str, Any]]] | None = None,
        max_jobs: int | None = None,
        journal: JobJournal | None = None,
        labels: dict[str, str] | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.secret = secret
        self.heartbeat = heartbeat
        self.disk = disk
        self.collect = collect or (
            lambda disk, jobs: deferToThread(collect_figures, disk, jobs)
        )
        self.kill_grace = kill_grace
        self.on_dismissed = on_dismissed
        self.max_jobs = max_jobs or default_max_jobs()
        self.max_output = max_output
        #: What jobs' environments start from: this worker's own, read once.
        self.environment = dict(os.environ)
        #: Every job not yet let go by the master, by pool id, oldest first.
        self.held: dict[str, HeldJob] = {}
        #: What this worker says of itself, for targeting.
        self.labels = default_labels() if labels is None else labels
        self.journal = journal
        #: What begins the marker of this worker's jobs: its name and where
        #: its journal is, so two workers never take each other's jobs.
        where = str(journal.path) if journal is not None else f"pid {os.getpid()}"
        digest = hashlib.sha256(where.encode()).hexdigest()[:12]
        self.marker_prefix = f"{name}@{digest}/"
        self.stall = StallWatch(reactor)
        #: Every job started and not ended, including those of a lost
        #: connection that are being killed.
        self.jobs: set[JobProcess] = set()
        #: Jobs waiting for a free slot, in the order they came.
        self.queue: deque[JobProcess] = deque()
        self.connection: MasterConnection | None = None
        #: Called with each connection that closes (the dialer redials).
        self.on_lost: Callable[[MasterConnection], None] = lambda connection: None
        self._idle: list[Deferred[None]] = []

    def startFactory(self) -> None:
        self.stall.start()

    def stopFactory(self) -> None:
        self.stall.stop()

    def dismissed(self, reason: str) -> None:
        self.log.error(
            "worker {name} will not reconnect: {reason}", name=self.name, reason=reason
        )
        self.on_dismissed(reason)

    # Held jobs, across connections

    def _send(self, held: HeldJob, code: str, **fields: Any) -> None:
        """Tell the master about a job, if a master carries on with it now."""
        connection = self.connection
        if held.attached and connection is not None and connection.welcomed:
            connection.sendMessage(code, pool=held.pool_id, **fields)

    def run(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None:
        held = HeldJob(pool_id, self.max_output)
        held.attached = True
        self.held[pool_id] = held

        def started(pid: int) -> None:
            held.pid = pid
            self._send(held, "started", pid=pid)
            self.job_started(process)

        def output(text: str, stream: str) -> None:
            held.seq += 1
            held.output.append(text, stream, held.seq)
            self._send(held, "output", data=text, stream=stream, seq=held.seq)

        def ended(status: int, reason: str | None) -> None:
            held.end = (status, reason)
            held.process = None
            self._send_end(held)
            self.job_ended(process)
            self._bound_unacked()

        process = JobProcess(
            self.reactor,
            cmd,
            on_started=started,
            on_output=output,
            on_ended=ended,
            kill_grace=self.kill_grace,
            marker=self.marker_prefix + pool_id,
            env={**self.environment, **options.get("env", {})},
            cwd=options.get("cwd"),
            stdin=options.get("stdin", "").encode("utf-8"),
            timeout=options.get("timeout"),
        )
        held.process = process
        connection = self.connection
        if connection is not None and connection.paused:
            process.pause()
        self.enqueue(process)
        self.log.info("pool {pool}: running {cmd}", pool=pool_id, cmd=cmd)

    def _send_end(self, held: HeldJob) -> None:
        assert held.end is not None
        status, reason = held.end
        if reason is None:
            self._send(held, "ended", status=status)
        else:
            self._send(held, "ended", status=status, reason=reason)

    def kill(self, pool_id: str) -> None:
        held = self.held.get(pool_id)
        if held is not None and held.process is not None:
            self.log.info("pool {pool}: killing {cmd}", pool=pool_id, cmd=held.process.cmd)
            held.process.kill()

    def attach(self, pool_id: str, after: int) -> None:
        """The master carries on with a held job: what it missed, then its end."""
        held = self.held.get(pool_id)
        if held is None:
            return
        held.attached = True
        if held.pid is not None:
            self._send(held, "started", pid=held.pid)
        for piece in held.output.chunks(after):
            if isinstance(piece, Chunk):
                self._send(held, "output", data=piece.text, stream=piece.stream, seq=piece.event)
            else:
                note = f"\n[pcci: {piece.size} bytes of output dropped]\n"
                self._send(held, "output", data=note, stream="stderr", seq=piece.event)
        if held.end is not None:
            self._send_end(held)

    def acknowledged(self, pool_id: str) -> None:
        """The master keeps the job's end: forget it."""
        held = self.held.get(pool_id)
        if held is not None and held.end is not None:
            del self.held[pool_id]

    def detached(self) -> None:
        """The connection is gone: jobs run on, their output kept for the next."""
        for held in self.held.values():
            held.attached = False
        self.resume_jobs()  # nothing to wait for: output is kept, capped
        running = sum(1 for held in self.held.values() if held.end is None)
        if running:
            self.log.warn(
                "connection to master lost: {count} jobs run on; their output is kept"
                " for the master",
                count=running,
            )

    def _bound_unacked(self) -> None:
        ended = [key for key, held in self.held.items() if held.end is not None]
        for key in ended[: max(0, len(ended) - MAX_UNACKED)]:
            del self.held[key]

    def pause_jobs(self) -> None:
        for held in self.held.values():
            if held.process is not None:
                held.process.pause()

    def resume_jobs(self) -> None:
        for held in self.held.values():
            if held.process is not None:
                held.process.resume()

    def enqueue(self, job: JobProcess) -> None:
        """Start C{job} now if a slot is free, else when one frees up."""
        self.queue.append(job)
        self._start_queued()

    def _start_queued(self) -> None:
        while self.queue and len(self.jobs) < self.max_jobs:
            job = self.queue.popleft()
            if job.ended:
                continue  # cancelled while it waited
            self.jobs.add(job)
            job.start()

    def job_started(self, job: JobProcess) -> None:
        if self.journal is not None and job.pid is not None:
            self.journal.add(job.pid, job.marker)

    def job_ended(self, job: JobProcess) -> None:
        self.jobs.discard(job)
        if self.journal is not None and job.pid is not None:
            self.journal.remove(job.pid)
        self._start_queued()
        if not self.jobs and not self.queue:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def kill_all(self) -> Deferred[None]:
        """Cancel every waiting job, kill every running one; fire when all have ended."""
        queued, self.queue = list(self.queue), deque()
        for job in queued:
            job.cancel()
        if not self.jobs:
            return succeed(None)
        self.log.info("killing {count} running jobs", count=len(self.jobs))
        for job in list(self.jobs):
            job.kill()
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d
