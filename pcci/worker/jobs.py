"""
The worker's job table: the jobs it holds, the slots they run in, and the
journal of their processes.

A worker's jobs outlive its connections.  It keeps each job's output
(capped, its beginning and end) and its end until the master acknowledges
that end, which it does once it has stored it: when the connection drops,
the jobs run on, and the next connection's C{hello} lists them so the
master carries on with each (C{attach}), receiving what it missed.  At
most C{max_jobs} run at once; the others wait their turn, in order.

The table reports through a L{MasterLink}, the connection of the moment;
it knows nothing else of the wire.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from pcci.output import DEFAULT_MAX_OUTPUT, Chunk, OutputBuffer
from pcci.wire import END_LOST, STATUS_LOST
from pcci.worker.journal import JobJournal
from pcci.worker.process import Command, JobProcess, KillPolicy
from pcci.worker.received import ReceivedJobs
from pcci.worker.settings import WorkerSettings

log = Logger()

#: Ended jobs kept for a master that has not acknowledged them, at most.
MAX_UNACKED = 10_000

#: Seconds of doubt about when a job asked again was first sent (the
#: masters' clocks and this machine's, the way between them).
SENT_MARGIN = 2.0


def default_max_jobs() -> int:
    """Jobs a worker runs at once by default: four per CPU."""
    return 4 * (os.cpu_count() or 1)


class MasterLink(Protocol):
    """What the job table needs of the connection to the master."""

    #: The master reads slower than jobs print: stop reading their pipes.
    paused: bool

    def report(self, code: str, pool: str, **fields: Any) -> None:
        """Send the master a job's message (C{started}, C{output}, C{ended})."""


class HeldJob:
    """A job as the worker holds it: its process, kept output, and end."""

    def __init__(self, pool_id: str, max_output: int, cmd: str = "", options: dict[str, Any] | None = None) -> None:
        self.pool_id = pool_id
        #: What the master asked: kept to hand a job not started yet to this worker's next version.
        self.cmd = cmd
        self.options = options or {}
        self.process: JobProcess | None = None
        self.output = OutputBuffer(max_output)
        #: Chunks of output so far; each chunk's C{event} is its number.
        self.seq = 0
        self.pid: int | None = None
        #: C{(status, reason)} once ended.
        self.end: tuple[int, str | None] | None = None
        #: The current connection's master carries on with this job.
        self.attached = False

    @property
    def waiting(self) -> bool:
        """It waits for a slot: never started, not cancelled."""
        return self.process is not None and not self.process.started

    def describe(self) -> dict[str, Any]:
        return {"pool": self.pool_id, "ended": self.end is not None}


class JobTable:
    """Every job not yet let go by the master, and the processes running them."""

    def __init__(
        self,
        reactor: Any,
        settings: WorkerSettings,
        journal: JobJournal | None = None,
        received: ReceivedJobs | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        self.reactor = reactor
        name = settings.name
        #: The jobs this worker was sent, across its restarts (None: it keeps no such memory).
        self.received = received
        self.kill_grace = settings.kill_grace
        self.max_jobs = settings.max_jobs or default_max_jobs()
        self.max_output = max_output
        self.journal = journal
        #: What jobs' environments start from: this worker's own, read once.
        self.environment = dict(os.environ)
        #: Every job not yet let go by the master, by pool id, oldest first.
        self.held: dict[str, HeldJob] = {}
        #: What begins the marker of this worker's jobs: its name and where
        #: its journal is, so two workers never take each other's jobs.
        where = str(journal.path) if journal is not None else f"pid {os.getpid()}"
        digest = hashlib.sha256(where.encode()).hexdigest()[:12]
        self.marker_prefix = f"{name}@{digest}/"
        #: Every job started and not ended, including those of a lost
        #: connection that are being killed.
        self.running: set[JobProcess] = set()
        #: Jobs waiting for a free slot, in the order they came.
        self.queue: deque[JobProcess] = deque()
        #: The connection to the master, while there is one.
        self.link: MasterLink | None = None
        #: No job starts (they wait their turn): this worker is about to restart.
        self.holding = False
        self._idle: list[Deferred[None]] = []

    def held_jobs(self) -> list[dict[str, Any]]:
        """The jobs held, for a C{hello}."""
        return [held.describe() for held in self.held.values()]

    # What the master asks

    def run(
        self, pool_id: str, cmd: str, options: dict[str, Any], sent_ago: float | None = None,
        handed_over: bool = False,
    ) -> None:
        """
        Run a job.  With C{sent_ago}, the master asks again for a job first
        sent that many seconds ago, which this worker may have had: it runs
        only if this worker is sure it never did, else it ends C{lost}.
        C{handed_over}: the version before this one had it, and never started it.
        """
        if pool_id in self.held:
            log.warn("pool {pool} is already running here", pool=pool_id)
            return
        refusal = None if handed_over else self._had(pool_id, sent_ago)
        if refusal is not None:
            log.warn("pool {pool}: not run: {why}", pool=pool_id, why=refusal)
            if self.link is not None:
                self.link.report("output", pool_id, data=f"pcci: job lost: {refusal}\n", stream="stderr")
                self.link.report("ended", pool_id, status=STATUS_LOST, reason=END_LOST)
            return
        if self.received is not None:
            self.received.add(pool_id)  # before it starts: a restart then knows it had it
        held = HeldJob(pool_id, self.max_output, cmd, options)
        held.attached = not handed_over  # until the master attaches it
        self.enqueue(self._hold(held))
        log.info("pool {pool}: running {cmd}", pool=pool_id, cmd=cmd)

    def _hold(self, held: HeldJob) -> JobProcess:
        """Keep a job, and make the process that runs it."""
        self.held[held.pool_id] = held
        options = held.options
        process = JobProcess(
            self.reactor,
            Command(
                held.cmd,
                env={**self.environment, **options.get("env", {})},
                marker=self.marker_prefix + held.pool_id,
                stdin=options.get("stdin", "").encode("utf-8"),
                cwd=options.get("cwd"),
                timeout=options.get("timeout"),
            ),
            _Reporting(self, held),
            KillPolicy(kill_grace=self.kill_grace),
        )
        held.process = process
        if self.link is not None and self.link.paused:
            process.pause()
        return process

    def _had(self, pool_id: str, sent_ago: float | None) -> str | None:
        """Why a job may have run here before (None: it surely did not)."""
        received = self.received
        if received is not None and received.had(pool_id):
            return "this worker had it before it restarted (its run was killed then)"
        if sent_ago is None:
            return None
        if received is None:
            return "this worker keeps no memory of the jobs it was sent"
        if received.wall() - sent_ago < received.since + SENT_MARGIN:
            return (
                "this worker came back without a memory of the jobs it was sent going back to it"
                " (its state directory was new, or emptied)"
            )
        return None

    def kill(self, pool_id: str) -> None:
        held = self.held.get(pool_id)
        if held is not None and held.process is not None:
            log.info("pool {pool}: killing {cmd}", pool=pool_id, cmd=held.process.cmd)
            held.process.kill()

    def attach(self, pool_id: str, after: int) -> None:
        """The master carries on with a held job: what it missed, then its end."""
        held = self.held.get(pool_id)
        if held is None:
            return
        held.attached = True
        if held.pid is not None:
            self.tell(held, "started", pid=held.pid)
        for piece in held.output.chunks(after, whole=True):
            if isinstance(piece, Chunk):
                self.tell(held, "output", data=piece.text, stream=piece.stream, seq=piece.event)
            else:  # one note stands for the pieces dropped: numbered first..seq
                note = f"\n[pcci: {piece.size} bytes of output dropped]\n"
                last = held.seq if piece.last is None else piece.last
                self.tell(held, "output", data=note, stream="stderr", seq=last, first=piece.event)
        if held.end is not None:
            self.tell_end(held)

    def acknowledged(self, pool_id: str) -> None:
        """The master keeps the job's end: forget it."""
        held = self.held.get(pool_id)
        if held is not None and held.end is not None:
            del self.held[pool_id]

    # The connection

    def connected(self, link: MasterLink) -> None:
        """A master welcomed this worker: it reports to that one now."""
        self.link = link

    def disconnected(self) -> None:
        """The connection is gone: jobs run on, their output kept for the next."""
        was_linked, self.link = self.link is not None, None
        for held in self.held.values():
            held.attached = False
        self.resume()  # nothing to wait for: output is kept, capped
        running = sum(1 for held in self.held.values() if held.end is None)
        if running and was_linked:
            log.warn(
                "connection to master lost: {count} jobs run on; their output is kept"
                " for the master",
                count=running,
            )

    def pause(self) -> None:
        for held in self.held.values():
            if held.process is not None:
                held.process.pause()

    def resume(self) -> None:
        for held in self.held.values():
            if held.process is not None:
                held.process.resume()

    def tell(self, held: HeldJob, code: str, **fields: Any) -> None:
        """Tell the master about a job, if a master carries on with it now."""
        if held.attached and self.link is not None:
            self.link.report(code, held.pool_id, **fields)

    def tell_end(self, held: HeldJob) -> None:
        assert held.end is not None
        status, reason = held.end
        # seq: the output it sums up, so that a master missing some asks again.
        if reason is None:
            self.tell(held, "ended", status=status, seq=held.seq)
        else:
            self.tell(held, "ended", status=status, reason=reason, seq=held.seq)

    def bound_unacked(self) -> None:
        ended = [key for key, held in self.held.items() if held.end is not None]
        for key in ended[: max(0, len(ended) - MAX_UNACKED)]:
            del self.held[key]

    # Slots

    def enqueue(self, job: JobProcess) -> None:
        """Start C{job} now if a slot is free, else when one frees up."""
        self.queue.append(job)
        self._start_queued()

    def _start_queued(self) -> None:
        while self.queue and len(self.running) < self.max_jobs and not self.holding:
            job = self.queue.popleft()
            if job.ended:
                continue  # cancelled while it waited
            self.running.add(job)
            job.start()

    def slot_freed(self, job: JobProcess) -> None:
        self.running.discard(job)
        if self.journal is not None and job.pid is not None:
            self.journal.remove(job.pid)
        self._start_queued()
        if not self.running and not self.queue:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def ready_to_hand_over(self) -> bool:
        """
        Whether every job held waits for a slot or runs on as it is (see
        L{pcci.worker.handover}), and no end waits for the master.
        """
        return all(
            held.waiting or (held.process is not None and held.process.can_hand_over())
            for held in self.held.values()
        )

    def hand_over(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """
        Let go of the jobs that wait and of those running, quietly (they do
        not end): this worker's next version runs the first and carries on
        with the others (see L{pcci.worker.upgrade}).  Those running that
        cannot go as they are stay.
        """
        waiting, running = [], []
        for held in list(self.held.values()):
            process = held.process
            if held.waiting:
                waiting.append({"pool": held.pool_id, "cmd": held.cmd, "options": held.options})
            elif process is not None and process.can_hand_over():
                handed = process.hand_over()  # its output so far told first
                self.running.discard(process)
                running.append({**handed, "pool": held.pool_id, "cmd": held.cmd, "options": held.options,
                                "seq": held.seq, "output": held.output.to_record()})
            else:
                continue
            del self.held[held.pool_id]
        self.queue.clear()  # theirs, and those cancelled while they waited
        return waiting, running

    def adopt(self, handed: dict[str, Any]) -> None:
        """Carry on with a job the version before this one ran, and handed over running."""
        held = HeldJob(handed["pool"], self.max_output, handed["cmd"], handed["options"])
        held.seq, held.pid, held.attached = int(handed["seq"]), int(handed["pid"]), False
        held.output = OutputBuffer.from_record(handed["output"], self.max_output)
        process = self._hold(held)
        self.running.add(process)
        if self.journal is not None:
            self.journal.add(held.pid, process.marker)
        process.adopt(handed)
        log.info("pool {pool}: carrying on with {cmd} (pid {pid}) from the version before",
                 pool=held.pool_id, cmd=held.cmd, pid=held.pid)

    def adopted_markers(self) -> set[str]:
        """The markers of the jobs held here (at a start: those carried on with), whose processes are no leftovers."""
        return {held.process.marker for held in self.held.values() if held.process is not None}

    def kill_all(self) -> Deferred[None]:
        """Cancel every waiting job, kill every running one; fire when all have ended."""
        queued, self.queue = list(self.queue), deque()
        for job in queued:
            job.cancel()
        if not self.running:
            return succeed(None)
        log.info("killing {count} running jobs", count=len(self.running))
        for job in list(self.running):
            job.kill()
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


class _Reporting:
    """What a held job's process tells: kept with the job, and reported to the master."""

    def __init__(self, table: JobTable, held: HeldJob) -> None:
        self.table = table
        self.held = held

    def started(self, pid: int) -> None:
        self.held.pid = pid
        self.table.tell(self.held, "started", pid=pid)
        if self.table.journal is not None and self.held.process is not None:
            self.table.journal.add(pid, self.held.process.marker)

    def output(self, text: str, stream: str) -> None:
        held = self.held
        held.seq += 1
        held.output.append(text, stream, held.seq)
        self.table.tell(held, "output", data=text, stream=stream, seq=held.seq)

    def ended(self, status: int, reason: str | None) -> None:
        held, process = self.held, self.held.process
        held.end = (status, reason)
        held.process = None
        self.table.tell_end(held)
        if process is not None:
            self.table.slot_freed(process)
        self.table.bound_unacked()
