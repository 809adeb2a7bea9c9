"""
The master's model: plain records of workers, pools and jobs, and the one
vocabulary of a job's states.

Nothing here schedules, stores or talks to a worker: the rooms that do
(L{pcci.master.cluster.roster}, L{pcci.master.cluster.history},
L{pcci.master.cluster.dispatch}) change these records, and the REST layer reads
them.  Times people read are wall-clock (POSIX seconds); durations come
from the monotonic clock.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from pcci.master.cluster.events import Event
from pcci.master.cluster.health import HealthHistory
from pcci.master.cluster.jobspec import JobOptions, Rollout
from pcci.master.store.base import StoredPool
from pcci.output import OutputBuffer
from pcci.wire import STATUS_LOST as WIRE_STATUS_LOST

#: A job's state, in words: what happened to it.  (The wire's C{END_*}
#: reasons are the same words for the states a worker reports.)
PENDING = "pending"
#: Its worker is offline: it starts when the worker connects (C{wait_offline}).
WAITING = "waiting"
RUNNING = "running"
OK = "ok"
FAILED = "failed"
KILLED = "killed"
TIMED_OUT = "timed_out"
LOST = "lost"
NOT_STARTED = "not_started"
CANCELLED = "cancelled"
JOB_STATES = (PENDING, WAITING, RUNNING, OK, FAILED, KILLED, TIMED_OUT, LOST, NOT_STARTED, CANCELLED)

#: A pool's state while its rollout waits for a person (C{pause_every}).
PAUSED = "paused"

#: The states of the jobs a retry runs again, by default: every end but ok.
RETRIED_STATES = (FAILED, KILLED, TIMED_OUT, LOST, NOT_STARTED, CANCELLED)

#: Status of a job whose end pcci could not observe (its worker was lost).
STATUS_LOST = WIRE_STATUS_LOST

#: Status of a job that never started (its pool was killed first).
STATUS_CANCELLED = -2


#: The last whole second written out, and its text: a pool's jobs start
#: and end within a few seconds, and an answer or a stored row writes
#: thousands of their times.
_last_second: tuple[float, str] = (float("nan"), "")


def rfc3339(seconds: float | None) -> str | None:
    """
    A POSIX time as RFC 3339 UTC with milliseconds, or None: what
    C{datetime.fromtimestamp(seconds, timezone.utc)} would write, rounded to
    the microsecond the same way, then cut to the millisecond.
    """
    global _last_second
    if seconds is None:
        return None
    fraction, whole = math.modf(seconds)
    micro = round(fraction * 1e6)  # half to even, as datetime does
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    last = _last_second
    if last[0] != whole:
        last = _last_second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{last[1]}.{micro // 1000:03d}Z"


class WorkerLink(Protocol):
    """What the state needs of a connected worker (the wire protocol's side)."""

    name: str
    address: str
    #: Seconds between the worker's heartbeats.
    heartbeat: float
    #: What the worker says of itself: C{os}, C{arch} and its own labels.
    labels: dict[str, str]
    #: The jobs its hello said it holds: C{{"pool", "ended"}} each.
    held_jobs: list[dict[str, Any]]
    #: The pcci and Python it runs ("" when it does not say).
    pcci_version: str
    python_version: str
    #: It can upgrade itself (it was installed by install.sh).
    upgrades: bool
    @property
    def master(self) -> str | None:
        """The master holding it, when another does (see L{pcci.master.peers.peers}); None when this one does."""
    #: It remembers every job it was sent: a job it comes back without may
    #: be asked of it again (see L{pcci.worker.received}).
    remembers_jobs: bool
    #: Its output's C{seq} run without a gap (see L{pcci.handshake.Hello}).
    contiguous_seq: bool
    @property
    def auth(self) -> str:
        """How it proved itself: identity, secret, local or none (see L{pcci.master.links.admission})."""

    def run_job(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None: ...

    def attach_job(self, pool_id: str, after: int) -> None:
        """Carry on with a held job: send its output past chunk C{after}, then its end."""

    def ack_job(self, pool_id: str) -> None:
        """The job's end is safe with the master: the worker may forget it."""

    def kill_job(self, pool_id: str) -> None: ...

    def dismiss(self, reason: str) -> None:
        """Tell the worker another connection took its name, and close: it may come back, with backoff."""

    def revoke(self, reason: str) -> None:
        """Tell the worker its identity was revoked, and close: it may not come back."""

    def upgrade(self, order: dict[str, Any]) -> None:
        """Tell the worker to install this version and restart into it (see L{pcci.master.cluster.upgrades})."""

    def refresh_facts(self) -> bool:
        """Ask the worker to look at its facts now; whether it can (its pcci tells facts)."""


@dataclass(eq=False)
class WorkerRecord:
    """What the master knows of a worker it has seen, online or not."""

    name: str
    address: str
    connected_at: float
    heartbeat: float
    history: HealthHistory
    labels: dict[str, str] = field(default_factory=dict)
    online: bool = True
    last_seen: float = 0.0
    figures: dict[str, float | None] | None = None
    #: The master holding it (this one, or another on the same store).
    master: str | None = None
    #: Jobs it runs, as the other master holding it counts them.
    jobs_elsewhere: int | None = None
    #: How it proved itself (see L{WorkerLink.auth}).
    auth: str = ""
    #: Why its connection went, while it is offline.
    left: str = ""
    #: The pcci and Python it runs, as it said when it connected.
    pcci_version: str = ""
    python_version: str = ""
    #: Its machine's facts, as it last told them (see L{pcci.worker.facts}), and when.
    facts: dict[str, Any] = field(default_factory=dict)
    facts_at: float | None = None

    def document(self) -> WorkerDocument:
        """
        What a query reads of it (see L{pcci.master.cluster.queries}): its
        facts, labels, name, whether it is online, and its latest health figures.
        """
        return WorkerDocument(self)

    def to_json(self, jobs_running: int) -> dict[str, Any]:
        return {
            "id": self.name,
            "address": self.address,
            "connected_at": rfc3339(self.connected_at),
            "jobs_running": jobs_running if self.jobs_elsewhere is None else self.jobs_elsewhere,
            "master": self.master,
            "online": self.online,
            "last_seen": rfc3339(self.last_seen),
            "heartbeat_seconds": self.heartbeat,
            "labels": self.labels,
            "auth": self.auth,
            "pcci_version": self.pcci_version,
            "python_version": self.python_version,
            "health": self.figures,
        }


#: What a worker's document holds beside its facts, read from its record.
_OWN: dict[str, Callable[[WorkerRecord], Any]] = {
    "labels": lambda record: record.labels,
    "name": lambda record: record.name,
    "online": lambda record: record.online,
    "health": lambda record: record.figures or {},
}


def document_key(key: str) -> Callable[[WorkerRecord], Any]:
    """What C{key} of a worker's document is, as one function of its record (to read it of 10,000)."""
    own = _OWN.get(key)
    return own if own is not None else lambda record: record.facts.get(key)


class WorkerDocument(Mapping[str, Any]):
    """A worker's facts, with C{labels}, C{name}, C{online} and C{health}: a view, not a copy (a fleet is large)."""

    __slots__ = ("_record",)
    OWN = tuple(_OWN)

    def __init__(self, record: WorkerRecord) -> None:
        self._record = record

    def get(self, key: str, default: Any = None) -> Any:
        own = _OWN.get(key)
        return own(self._record) if own is not None else self._record.facts.get(key, default)

    def __getitem__(self, key: str) -> Any:
        found = self.get(key, _MISSING)
        if found is _MISSING:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return key in self.OWN or key in self._record.facts

    def __iter__(self) -> Iterator[str]:
        return iter([*(k for k in self._record.facts if k not in self.OWN), *self.OWN])

    def __len__(self) -> int:
        return len(list(iter(self)))


_MISSING = object()


@dataclass(eq=False)
class Job:
    """One command on one worker."""

    pool_id: str
    worker_id: str
    cmd: str
    output: OutputBuffer
    pid: int | None = None
    status: int | None = None
    state: str = PENDING
    #: Wall-clock times, for people.
    started_at: float | None = None
    ended_at: float | None = None
    #: Seconds from start to end, on the monotonic clock.
    duration: float | None = None
    #: Sent to its worker (a rolling pool holds some back), and when (wall clock).
    sent: bool = False
    sent_at: float | None = None
    #: The sequence number of the last output chunk its worker sent.
    seq: int = 0
    #: The C{seq} after which its worker was last asked for its output
    #: (C{attach}): a replay from there is on its way.
    asked_after: int | None = None
    #: The ids of its C{started} and C{ended} events; 0 until they happen.
    started_event: int = 0
    ended_event: int = 0
    #: When it started, on the monotonic clock, if this master saw it start.
    started_clock: float | None = None

    def end(self, status: int, state: str, wall: float, now: float) -> None:
        """The job ended at wall-clock time C{wall}, monotonic C{now}."""
        self.status = status
        self.state = state
        self.ended_at = wall
        if self.started_clock is not None:
            self.duration = max(0.0, now - self.started_clock)
        elif self.started_at is not None:  # started before this master did
            self.duration = max(0.0, wall - self.started_at)
        else:  # it never ran
            self.started_at, self.duration = wall, 0.0

    def started_data(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "pid": self.pid, "at": rfc3339(self.started_at)}

    def ended_data(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "status": self.status,
            "state": self.state,
            "at": rfc3339(self.ended_at),
        }

    def to_record(self) -> dict[str, Any]:
        """The job as stored; its output only once it has ended."""
        return {
            "worker": self.worker_id,
            "pid": self.pid,
            "status": self.status,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": self.duration,
            "sent": self.sent,
            "sent_at": self.sent_at,
            "started_event": self.started_event,
            "ended_event": self.ended_event,
            "output": None if self.status is None else self.output.to_record(),
        }

    @classmethod
    def from_record(cls, pool_id: str, cmd: str, record: dict[str, Any], output: OutputBuffer) -> Job:
        job = cls(pool_id, record["worker"], cmd, output)
        for key in ("pid", "status", "state", "started_at", "ended_at", "duration", "sent",
                    "started_event", "ended_event"):
            setattr(job, key, record[key])
        job.sent_at = record.get("sent_at")
        return job

    def to_json(self, results: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "pool": self.pool_id,
            "worker_id": self.worker_id,
            "cmd": self.cmd,
            "pid": self.pid,
            "status": self.status,
            "state": self.state,
            "time_to_calc": None if self.duration is None else round(self.duration * 1000),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
        }
        if results:
            body["result"] = self.output.text()
        return body


@dataclass(eq=False)
class Pool:
    """The same command on a list of workers, under one id."""

    id: str
    cmd: str
    started_at: float
    jobs: dict[str, Job] = field(default_factory=dict)
    ended_at: float | None = None
    options: JobOptions = field(default_factory=JobOptions)
    rollout: Rollout = field(default_factory=Rollout)
    #: The name of the API token that started it.
    submitted_by: str | None = None
    #: What its jobs do: C{run} its command, C{push} or C{fetch} files.
    kind: str = "run"
    #: The pool it retries (C{POST /pools/<id>/retry}).
    retry_of: str | None = None
    #: Seconds its jobs wait for offline workers, and until when (wall clock).
    wait_offline: float | None = None
    wait_until: float | None = None
    #: The schedule that started it.
    schedule: str | None = None
    #: Where its end is told, and on which ends (see L{pcci.master.webhooks.notifier}).
    notify: list[str] = field(default_factory=list)
    notify_on: str = "failed"
    waiters: list[Deferred[Pool]] = field(default_factory=list)
    #: Called with each new event (see L{pcci.master.cluster.events}).
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    #: The id of the latest event, and of the C{pool} event once it ended.
    last_event: int = 0
    end_event: int = 0
    #: Jobs not yet sent whose workers are there, in order (those whose
    #: workers are offline are L{WAITING}); jobs that ended other than ok.
    waiting: deque[Job] = field(default_factory=deque)
    failures: int = 0
    #: No more of its jobs start (its C{max_failures}, its canary, a kill); why, when its rollout stopped it.
    halted: bool = False
    stopped: str = ""
    #: Its rollout's place (see L{pcci.master.cluster.rollouts}): paused after
    #: C{pause_every} ends, ends since it last went on, its canary ended ok.
    paused: bool = False
    ended_since_pause: int = 0
    canary_passed: bool = False
    timers: list[IDelayedCall] = field(default_factory=list)
    #: How its jobs start, when not by running its command (a push's
    #: transfers: see L{pcci.master.transfers.pushes}); not kept across restarts.
    start: Callable[[Job, WorkerLink], None] | None = None

    #: How many of its workers, in order, are known to have ended their
    #: jobs: a job ends once, so each look at L{finished} goes on from
    #: there (a pool's ends cost as many looks as it has jobs, not their
    #: square).  Each look reads the job its worker has now (a replica's
    #: jobs are replaced by those of its stored end).
    _ended_through: int = field(default=0, repr=False)
    _workers: list[str] = field(default_factory=list, repr=False)
    #: Its jobs sent and not ended, counted once (C{None}: not yet), then
    #: kept as they are sent and end: a rollout's window is read at every end.
    _flying: int | None = field(default=None, repr=False)

    def in_flight(self) -> int:
        """How many of its jobs were sent and have not ended."""
        if self._flying is None:
            self._flying = sum(1 for job in self.jobs.values() if job.sent and job.status is None)
        return self._flying

    def job_sent(self, job: Job) -> None:
        job.sent = True
        if self._flying is not None:
            self._flying += 1

    def job_ending(self, job: Job) -> None:
        """Its job is about to end (once)."""
        if job.sent and job.status is None and self._flying is not None:
            self._flying -= 1

    @property
    def finished(self) -> bool:
        if len(self._workers) != len(self.jobs):  # made, or jobs added since
            self._workers, self._ended_through = list(self.jobs), 0
        workers, through = self._workers, self._ended_through
        while through < len(workers) and self.jobs[workers[through]].status is not None:
            through += 1
        self._ended_through = through
        return through == len(workers)

    @property
    def status(self) -> int | None:
        """None while a job runs, 0 if every job exited 0, else 1."""
        if not self.finished:
            return None
        return 0 if all(job.status == 0 for job in self.jobs.values()) else 1

    @property
    def state(self) -> str:
        """C{running} (or C{paused}), then C{ok} when every job is ok, else C{failed}."""
        if not self.finished:
            return PAUSED if self.paused else RUNNING
        return OK if all(job.state == OK for job in self.jobs.values()) else FAILED

    def counts(self) -> dict[str, int]:
        return dict(Counter(job.state for job in self.jobs.values()))

    def summary(self) -> dict[str, Any]:
        """The pool's fields but its jobs."""
        body: dict[str, Any] = {
            "id": self.id,
            "cmd": self.cmd,
            "status": self.status,
            "state": self.state,
            "counts": self.counts(),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
            "submitted_by": self.submitted_by,
            "kind": self.kind,
            "retry_of": self.retry_of,
            "schedule": self.schedule,
        }
        if self.wait_offline is not None:
            body["wait_offline"] = self.wait_offline
            body["wait_until"] = rfc3339(self.wait_until)
        rollout = self.rollout
        if rollout.rolling:
            body.update(vars(rollout))
            body["failures"] = self.failures
        if self.stopped:
            body["stopped"] = self.stopped
        if self.options.timeout is not None:
            body["timeout"] = self.options.timeout
        return body

    def event(self, name: str, data: dict[str, Any]) -> Event:
        """A new event, numbered: record its id, then L{announce} it."""
        self.last_event += 1
        return Event(self.last_event, name, data)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers.clear()

    def announce(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener(event)

    def jobs_json(self, results: bool = True) -> Iterator[dict[str, Any]]:
        """The jobs' JSON, one at a time: a job's output can be megabytes."""
        return (job.to_json(results) for job in self.jobs.values())

    def to_json(self, results: bool = True) -> dict[str, Any]:
        return {**self.summary(), "jobs": list(self.jobs_json(results))}

    def snapshot(self) -> StoredPool:
        """The pool as the store keeps it, now."""
        return StoredPool(
            id=self.id,
            started_at=self.started_at,
            ended_at=self.ended_at,
            state=self.state,
            cmd=self.cmd,
            workers=list(self.jobs),
            summary=self.to_json(results=False),
            submitted_by=self.submitted_by,
            schedule=self.schedule,
            record={
                "id": self.id,
                "cmd": self.cmd,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "submitted_by": self.submitted_by,
                "kind": self.kind,
                "retry_of": self.retry_of,
                "wait_offline": self.wait_offline,
                "wait_until": self.wait_until,
                "schedule": self.schedule,
                "notify": self.notify,
                "notify_on": self.notify_on,
                # Shallow copies: both are frozen, and their env never changes.
                "options": dict(vars(self.options)),
                "rollout": dict(vars(self.rollout)),
                "last_event": self.last_event,
                "end_event": self.end_event,
                "failures": self.failures,
                "halted": self.halted,
                "stopped": self.stopped,
                "paused": self.paused,
                "ended_since_pause": self.ended_since_pause,
                "canary_passed": self.canary_passed,
                "jobs": [job.to_record() for job in self.jobs.values()],
            },
        )

    @classmethod
    def from_record(
        cls, record: dict[str, Any], make_output: Callable[[dict[str, Any] | None], OutputBuffer]
    ) -> Pool:
        pool = cls(
            id=record["id"],
            cmd=record["cmd"],
            started_at=record["started_at"],
            ended_at=record["ended_at"],
            options=JobOptions(**record["options"]),
            rollout=Rollout(**record["rollout"]),
            submitted_by=record["submitted_by"],
            # Absent from records written before retries, wait_offline and schedules.
            kind=record.get("kind", "run"),
            retry_of=record.get("retry_of"),
            wait_offline=record.get("wait_offline"),
            wait_until=record.get("wait_until"),
            schedule=record.get("schedule"),
            notify=record.get("notify", []),
            notify_on=record.get("notify_on", "failed"),
            last_event=record["last_event"],
            end_event=record["end_event"],
            failures=record["failures"],
            halted=record["halted"],
            # Absent from records written before canaries and pauses.
            stopped=record.get("stopped", ""),
            paused=record.get("paused", False),
            ended_since_pause=record.get("ended_since_pause", 0),
            canary_passed=record.get("canary_passed", False),
        )
        for job_record in record["jobs"]:
            job = Job.from_record(pool.id, pool.cmd, job_record, make_output(job_record["output"]))
            pool.jobs[job.worker_id] = job
            if not job.sent and job.status is None and job.state != WAITING:
                pool.waiting.append(job)
        return pool
