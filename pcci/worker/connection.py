"""
The worker's side of the wire protocol: run what the master asks, report back.

A worker's jobs belong to its connection: when the connection drops, the
master has already failed them, so the worker kills them rather than leave
processes nobody will hear from.  At most C{max_jobs} run at once; the
others wait their turn, in order.
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
    NOT_STARTED,
    PROTOCOL_VERSION,
    FramedJSONProtocol,
    ProtocolError,
    peer_address,
    run_options,
)
from pcci.worker.health import collect_figures
from pcci.worker.journal import JobJournal
from pcci.worker.process import JobProcess


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
        self.jobs: dict[str, JobProcess] = {}
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
        self.factory.on_lost(self)
        if self.jobs:
            self.log.warn(
                "connection to master lost: killing {count} running jobs",
                count=len(self.jobs),
            )
        for job in list(self.jobs.values()):
            job.kill()

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
        pool_id, cmd = message["pool"], message["cmd"]
        if pool_id in self.jobs:
            self.log.warn("pool {pool} is already running here", pool=pool_id)
            return
        try:
            options = run_options(message)
        except ProtocolError as e:
            # The master checks options: this one is broken, the others' jobs are not.
            self.sendMessage("output", pool=pool_id, data=f"pcci: {e}\n", stream="stderr")
            self.sendMessage("ended", pool=pool_id, status=NOT_STARTED, reason=END_NOT_STARTED)
            return
        self.log.info("pool {pool}: running {cmd}", pool=pool_id, cmd=cmd)

        def started(pid: int) -> None:
            self.factory.job_started(job)
            self.sendMessage("started", pool=pool_id, pid=pid)

        job = JobProcess(
            self.factory.reactor,
            cmd,
            on_started=started,
            on_output=lambda data, stream: self.sendMessage(
                "output", pool=pool_id, data=data, stream=stream
            ),
            on_ended=lambda status, reason: self._job_ended(pool_id, job, status, reason),
            kill_grace=self.factory.kill_grace,
            marker=self.factory.marker_prefix + pool_id,
            env={**os.environ, **options.get("env", {})},
            cwd=options.get("cwd"),
            stdin=options.get("stdin", "").encode("utf-8"),
            timeout=options.get("timeout"),
        )
        self.jobs[pool_id] = job
        if self._paused:
            job.pause()
        self.factory.enqueue(job)

    def handle_kill(self, message: dict[str, Any]) -> None:
        if not self._handshake_done():
            return
        job = self.jobs.get(message["pool"])
        if job is not None:
            self.log.info("pool {pool}: killing {cmd}", pool=message["pool"], cmd=job.cmd)
            job.kill()

    def _job_ended(
        self, pool_id: str, job: JobProcess, status: int, reason: str | None
    ) -> None:
        self.jobs.pop(pool_id, None)
        if reason is None:
            self.sendMessage("ended", pool=pool_id, status=status)
        else:
            self.sendMessage("ended", pool=pool_id, status=status, reason=reason)
        self.factory.job_ended(job)

    # IPushProducer, for the transport to the master

    def pauseProducing(self) -> None:
        self._paused = True
        for job in self.jobs.values():
            job.pause()

    def resumeProducing(self) -> None:
        self._paused = False
        for job in self.jobs.values():
            job.resume()

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
