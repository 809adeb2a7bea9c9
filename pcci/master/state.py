"""
The master's state: connected workers, pools and their jobs.

One L{ClusterState} holds it all.  The wire protocol reports to it what
workers say; the REST API reads it and asks it to start and kill pools.
Neither touches the other.

Two clocks: timers and durations use the state's C{clock} (the reactor,
on monotonic time), while the times shown to people come from C{wall}.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.ids import UUID7Generator
from pcci.master.events import Event, output_data
from pcci.master.history import HealthHistory, clean_figures
from pcci.master.jobspec import JobOptions, Rollout
from pcci.master.store import BatchedWriter, PoolStore, StoredPool
from pcci.output import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_OUTPUT_TOTAL,
    MIN_SQUEEZED,
    OutputBuffer,
)
from pcci.wire import END_CANCELLED, END_REASONS

log = Logger()

DEFAULT_RETENTION = 300.0
DEFAULT_MAX_POOLS = 10_000
DEFAULT_HISTORY = 3600.0
DEFAULT_FORGET_AFTER = 7 * 24 * 3600.0
DEFAULT_RECONNECT_GRACE = 30.0

#: Finished pools kept in memory when a store keeps them all.
DEFAULT_CACHE = 200

#: Seconds between deletions of the store's pools older than the retention.
EXPIRE_INTERVAL = 60.0

#: Most heartbeats kept per worker, whatever its interval: 3,600 rows of
#: twelve doubles are 340 KiB.
MAX_HISTORY_ROWS = 3600

#: Status of a job whose end pcci could not observe (its worker was lost).
STATUS_LOST = -1

#: Status of a job that never started (its pool was killed first).
STATUS_CANCELLED = -2

#: A job's state, in words: what happened to it.
PENDING = "pending"
RUNNING = "running"
OK = "ok"
FAILED = "failed"
KILLED = "killed"
TIMED_OUT = "timed_out"
LOST = "lost"
NOT_STARTED = "not_started"
CANCELLED = "cancelled"
JOB_STATES = (PENDING, RUNNING, OK, FAILED, KILLED, TIMED_OUT, LOST, NOT_STARTED, CANCELLED)

#: Exit status of a job that ran out of time, as GNU timeout's.
STATUS_TIMED_OUT = 124


def rfc3339(seconds: float | None) -> str | None:
    """A POSIX time as RFC 3339 UTC with milliseconds, or None."""
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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

    def run_job(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None: ...

    def attach_job(self, pool_id: str, after: int) -> None:
        """Carry on with a held job: send its output past chunk C{after}, then its end."""

    def ack_job(self, pool_id: str) -> None:
        """The job's end is safe with the master: the worker may forget it."""

    def kill_job(self, pool_id: str) -> None: ...

    def dismiss(self, reason: str) -> None:
        """Tell the worker why it is dropped, ask it not to reconnect, close."""


class SubmitError(ValueError):
    """A pool request that cannot be carried out; nothing was created."""


class TooManyPools(Exception):
    """Every pool kept is still running and there is no room for another."""


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

    def to_json(self, jobs_running: int) -> dict[str, Any]:
        return {
            "id": self.name,
            "address": self.address,
            "connected_at": rfc3339(self.connected_at),
            "jobs_running": jobs_running,
            "online": self.online,
            "last_seen": rfc3339(self.last_seen),
            "heartbeat_seconds": self.heartbeat,
            "labels": self.labels,
            "health": self.figures,
        }


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
    #: Sent to its worker (a rolling pool holds some back).
    sent: bool = False
    #: The sequence number of the last output chunk its worker sent.
    seq: int = 0
    #: The ids of its C{started} and C{ended} events; 0 until they happen.
    started_event: int = 0
    ended_event: int = 0
    _started_clock: float | None = None

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
    waiters: list[Deferred[Pool]] = field(default_factory=list)
    #: Called with each new event (see L{pcci.master.events}).
    listeners: list[Callable[[Event], None]] = field(default_factory=list)
    #: The id of the latest event, and of the C{pool} event once it ended.
    last_event: int = 0
    end_event: int = 0
    #: Jobs not yet sent, in order; jobs that ended other than ok.
    waiting: deque[Job] = field(default_factory=deque)
    failures: int = 0
    #: It reached C{max_failures}: no more of its jobs start.
    halted: bool = False
    timers: list[IDelayedCall] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(job.status is not None for job in self.jobs.values())

    @property
    def status(self) -> int | None:
        """None while a job runs, 0 if every job exited 0, else 1."""
        if not self.finished:
            return None
        return 0 if all(job.status == 0 for job in self.jobs.values()) else 1

    @property
    def state(self) -> str:
        """C{running}, then C{ok} when every job is ok, else C{failed}."""
        if not self.finished:
            return RUNNING
        return OK if all(job.state == OK for job in self.jobs.values()) else FAILED

    def counts(self) -> dict[str, int]:
        return dict(Counter(job.state for job in self.jobs.values()))

    def summary(self) -> dict[str, Any]:
        """The pool's fields but its jobs."""
        body = {
            "id": self.id,
            "cmd": self.cmd,
            "status": self.status,
            "state": self.state,
            "counts": self.counts(),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
            "submitted_by": self.submitted_by,
        }
        rollout = self.rollout
        if rollout.batch is not None or rollout.max_failures is not None:
            body["batch"] = rollout.batch
            body["batch_wait"] = rollout.batch_wait
            body["max_failures"] = rollout.max_failures
        if self.options.timeout is not None:
            body["timeout"] = self.options.timeout
        return body

    def event(self, name: str, data: dict[str, Any]) -> Event:
        """A new event, numbered: record its id, then L{announce} it."""
        self.last_event += 1
        return Event(self.last_event, name, data)

    def announce(self, event: Event) -> None:
        for listener in list(self.listeners):
            listener(event)

    def jobs_json(self, results: bool = True) -> Iterator[dict[str, Any]]:
        """The jobs' JSON, one at a time: a job's output can be megabytes."""
        return (job.to_json(results) for job in self.jobs.values())

    def to_json(self, results: bool = True) -> dict[str, Any]:
        return {**self.summary(), "jobs": list(self.jobs_json(results))}

    def stored(self) -> StoredPool:
        """The pool as the store keeps it."""
        return StoredPool(
            id=self.id,
            started_at=self.started_at,
            ended_at=self.ended_at,
            state=self.state,
            cmd=self.cmd,
            workers=list(self.jobs),
            summary=self.to_json(results=False),
            record={
                "id": self.id,
                "cmd": self.cmd,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "submitted_by": self.submitted_by,
                # Shallow copies: both are frozen, and their env never changes.
                "options": dict(vars(self.options)),
                "rollout": dict(vars(self.rollout)),
                "last_event": self.last_event,
                "end_event": self.end_event,
                "failures": self.failures,
                "halted": self.halted,
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
            last_event=record["last_event"],
            end_event=record["end_event"],
            failures=record["failures"],
            halted=record["halted"],
        )
        for job_record in record["jobs"]:
            job = Job.from_record(pool.id, pool.cmd, job_record, make_output(job_record["output"]))
            pool.jobs[job.worker_id] = job
            if not job.sent and job.status is None:
                pool.waiting.append(job)
        return pool


class ClusterState:
    """Workers by name, pools by id, and the rules that change them."""

    def __init__(
        self,
        clock: IReactorTime,
        retention: float = DEFAULT_RETENTION,
        max_output: int = DEFAULT_MAX_OUTPUT,
        max_pools: int = DEFAULT_MAX_POOLS,
        history: float = DEFAULT_HISTORY,
        new_id: Callable[[], str] | None = None,
        wall: Callable[[], float] | None = None,
        max_output_total: int = DEFAULT_MAX_OUTPUT_TOTAL,
        forget_after: float = DEFAULT_FORGET_AFTER,
        store: PoolStore | None = None,
        cache: int = DEFAULT_CACHE,
        reconnect_grace: float = DEFAULT_RECONNECT_GRACE,
    ) -> None:
        self.clock = clock
        #: Wall-clock time for what people read; the clock's own in tests.
        self.wall = wall or clock.seconds
        self.retention = retention
        self.max_output = max_output
        self.max_output_total = max_output_total
        self.max_pools = max_pools
        self.history = history
        self.forget_after = forget_after
        self._new_id = new_id or UUID7Generator(lambda: int(self.wall() * 1000))
        self.workers: dict[str, WorkerLink] = {}
        #: Every worker seen and not yet forgotten, by name.
        self.records: dict[str, WorkerRecord] = {}
        #: Called with each job, and each pool, as it ends (for metrics).
        self.job_end_hooks: list[Callable[[Job], None]] = []
        self.pool_end_hooks: list[Callable[[Pool], None]] = []
        #: Pools by id, oldest first.
        self.pools: dict[str, Pool] = {}
        #: Bytes of output held in memory, over every job.
        self.output_total = 0
        self._running: dict[str, dict[str, Job]] = {}
        self._expiries: dict[str, IDelayedCall] = {}
        self._forgets: dict[str, IDelayedCall] = {}
        #: Seconds a disconnected worker's jobs wait for it to come back.
        self.reconnect_grace = reconnect_grace
        self._graces: dict[str, IDelayedCall] = {}
        #: Finished pools whose output is still held, in the order they ended.
        self._held: deque[Pool] = deque()
        #: With a store, memory holds running pools and the latest C{cache}
        #: finished ones; the store holds them all for C{retention}.
        self.store = store
        self.cache = cache
        self.writer = None if store is None else BatchedWriter(store, clock)
        self._expirer: IDelayedCall | None = None
        if store is not None:
            self._expirer = clock.callLater(EXPIRE_INTERVAL, self._expire_stored)

    # Workers

    def add_worker(self, link: WorkerLink) -> None:
        """Register a worker; a connection under a connected name replaces it."""
        old = self.workers.get(link.name)
        if old is not None and old is not link:
            log.warn(
                "worker {name} reconnected from {new}: dropping its old"
                " connection from {old}",
                name=link.name,
                new=link.address,
                old=old.address,
            )
            self.remove_worker(old, f"replaced by a new connection from {link.address}")
            old.dismiss(
                f"another worker connected as {link.name!r} from {link.address}"
            )
        self.workers[link.name] = link
        self._running.setdefault(link.name, {})
        for call in (self._forgets.pop(link.name, None), self._graces.pop(link.name, None)):
            if call is not None and call.active():
                call.cancel()
        now = self.wall()
        record = self.records.get(link.name)
        if record is None or record.heartbeat != link.heartbeat:
            size = min(MAX_HISTORY_ROWS, int(self.history // link.heartbeat) + 1)
            record = WorkerRecord(link.name, link.address, now, link.heartbeat, HealthHistory(size))
            self.records[link.name] = record
        record.address, record.connected_at = link.address, now
        record.labels = dict(link.labels)
        record.online, record.last_seen = True, now
        log.info("worker {name} joined from {peer}", name=link.name, peer=link.address)
        self._reattach(link)

    def _reattach(self, link: WorkerLink) -> None:
        """
        Match the jobs a (re)connected worker holds with those the master
        thinks it runs: carry on with each held one; a job it no longer
        holds is lost; one the master no longer knows is let go.
        """
        held = {job["pool"]: job for job in link.held_jobs}
        for pool_id, job in list(self._running[link.name].items()):
            if pool_id in held:
                link.attach_job(pool_id, job.seq)
            else:
                del self._running[link.name][pool_id]
                self._add_output(
                    job, "\npcci: job lost: its worker came back without it (restarted?)\n", "stderr"
                )
                self._end_job(job, STATUS_LOST, LOST)
        for pool_id, job in held.items():
            if pool_id not in self._running[link.name]:
                if job.get("ended"):
                    link.ack_job(pool_id)
                else:
                    link.kill_job(pool_id)

    def remove_worker(self, link: WorkerLink, reason: str) -> None:
        """Forget a worker whose connection is gone; its running jobs fail."""
        if self.workers.get(link.name) is not link:
            return
        del self.workers[link.name]
        self.records[link.name].online = False
        self._forgets[link.name] = self.clock.callLater(
            self.forget_after, self._forget, link.name
        )
        log.info("worker {name} left: {reason}", name=link.name, reason=reason)
        self._wait_for(link.name, reason)

    def _wait_for(self, name: str, reason: str) -> None:
        """The worker's running jobs wait C{reconnect_grace} for it to come back."""
        if not self._running.get(name) or name in self._graces:
            return
        if self.reconnect_grace <= 0:
            self._give_up_on(name, reason)
            return
        self._graces[name] = self.clock.callLater(
            self.reconnect_grace, self._give_up_on, name, reason
        )

    def _give_up_on(self, name: str, reason: str) -> None:
        self._graces.pop(name, None)
        for job in list(self._running.pop(name, {}).values()):
            self._add_output(job, f"\npcci: job lost: worker {reason}\n", "stderr")
            self._end_job(job, STATUS_LOST, LOST)

    def _adopt(self, job: Job) -> None:
        """A job that runs on its worker since before this master started."""
        self._running.setdefault(job.worker_id, {})[job.pool_id] = job
        if job.worker_id not in self.workers:
            self._wait_for(
                job.worker_id,
                f"did not come back within {self.reconnect_grace:g} s of the master's start",
            )

    def _forget(self, name: str) -> None:
        """An offline worker unseen for C{forget_after}: its record goes."""
        del self._forgets[name]
        self.records.pop(name, None)
        log.info("forgot worker {name}: offline since long", name=name)

    def running_jobs(self, worker: str) -> int:
        return len(self._running.get(worker, ()))

    def online_labels(self) -> dict[str, dict[str, str]]:
        """The connected workers, each with its labels."""
        return {name: link.labels for name, link in self.workers.items()}

    def heartbeat(self, worker: str, figures: dict[str, Any]) -> None:
        """Keep a worker's latest figures, and add them to its history."""
        record = self.records.get(worker)
        if record is None or not record.online:
            return
        now = self.wall()
        record.figures = clean_figures(figures)
        record.last_seen = now
        record.history.add(now, record.figures)

    # Pools

    def submit(
        self,
        cmd: str,
        workers: Iterable[str],
        options: JobOptions | None = None,
        rollout: Rollout | None = None,
        submitted_by: str | None = None,
    ) -> Pool:
        """
        Start C{cmd} on each named worker, as one pool: all at once, or as
        C{rollout} says.
        """
        names = list(dict.fromkeys(workers))
        if not names:
            raise SubmitError("workers must name at least one worker")
        unknown = [name for name in names if name not in self.workers]
        if unknown:
            raise SubmitError(
                "unknown or disconnected workers: " + ", ".join(unknown)
            )
        self._make_room()
        pool = Pool(
            id=self._new_id(),
            cmd=cmd,
            started_at=self.wall(),
            options=options or JobOptions(),
            rollout=rollout or Rollout(),
            submitted_by=submitted_by,
        )
        for name in names:
            job = Job(pool.id, name, cmd, OutputBuffer(self.max_output, self._resized))
            pool.jobs[name] = job
            pool.waiting.append(job)
        self.pools[pool.id] = pool
        self._persist(pool)
        self._send(pool, pool.rollout.window(len(names)))
        return pool

    def _send(self, pool: Pool, slots: int) -> None:
        """Send up to C{slots} of C{pool}'s waiting jobs to their workers."""
        while slots > 0 and pool.waiting:
            job = pool.waiting.popleft()
            link = self.workers.get(job.worker_id)
            if link is None:
                self._add_output(
                    job, f"pcci: job lost: worker {job.worker_id} left before its turn\n", "stderr"
                )
                self._end_job(job, STATUS_LOST, LOST)
                continue
            job.sent = True
            self._running[job.worker_id][pool.id] = job
            link.run_job(pool.id, pool.cmd, pool.options.wire())
            slots -= 1

    def _next_turn(self, pool: Pool, job: Job) -> None:
        """A job of a rolling pool ended: count failures, start the next job."""
        if job.state not in (OK, CANCELLED):
            pool.failures += 1
        limit = pool.rollout.max_failures
        if limit is not None and pool.failures >= limit and not pool.halted:
            log.info(
                "pool {pool}: {failures} jobs failed: cancelling the rest",
                pool=pool.id,
                failures=pool.failures,
            )
            self._halt(pool)
            return
        if not job.sent or not pool.waiting:
            return
        wait = pool.rollout.batch_wait
        if wait > 0:
            pool.timers = [t for t in pool.timers if t.active()]
            pool.timers.append(self.clock.callLater(wait, self._send, pool, 1))
        else:
            self._send(pool, 1)

    def _halt(self, pool: Pool) -> None:
        """No more jobs of C{pool} start: those held back end cancelled, and
        those sent but not started are called back."""
        pool.halted = True
        for timer in pool.timers:
            if timer.active():
                timer.cancel()
        waiting, pool.waiting = list(pool.waiting), deque()
        for job in waiting:
            self._end_job(job, STATUS_CANCELLED, CANCELLED)
        for job in pool.jobs.values():
            if job.sent and job.state == PENDING and job.worker_id in self.workers:
                self.workers[job.worker_id].kill_job(pool.id)

    def _make_room(self) -> None:
        """Drop the oldest finished pool if a new one would exceed C{max_pools}."""
        if len(self.pools) < self.max_pools:
            return
        if self.store is not None:
            # The store keeps history: memory only bounds what runs.
            for pool in list(self._held):
                if len(self.pools) < self.max_pools:
                    return
                self._held.remove(pool)
                self._let_go(pool)
            if sum(1 for pool in self.pools.values() if not pool.finished) < self.max_pools:
                return
            raise TooManyPools(f"{self.max_pools} pools are running, the most kept")
        for pool in self.pools.values():
            if pool.finished:
                self._expiries.pop(pool.id).cancel()
                self._drop(pool.id)
                return
        raise TooManyPools(f"{len(self.pools)} pools are running, the most kept")

    def list_pools(
        self,
        before: str | None = None,
        state: str | None = None,
        worker: str | None = None,
        cmd: str | None = None,
    ) -> Iterator[Pool]:
        """
        Pools newest first, older than the pool id C{before} (ids sort by
        time), in C{state} (running, ok, failed), with a job on C{worker},
        whose command holds C{cmd}.
        """
        for pool in reversed(self.pools.values()):
            if before is not None and pool.id >= before:
                continue
            if state is not None and pool.state != state:
                continue
            if worker is not None and worker not in pool.jobs:
                continue
            if cmd is not None and cmd not in pool.cmd:
                continue
            yield pool

    def kill(self, pool_id: str, workers: Iterable[str] | None = None) -> list[str]:
        """
        Ask the workers running C{pool_id}'s jobs to kill them.

        @return: the workers asked, in pool order.
        @raise KeyError: unknown or expired pool.
        @raise SubmitError: workers named that are not in the pool.
        """
        pool = self.pools[pool_id]
        names = list(pool.jobs) if workers is None else list(dict.fromkeys(workers))
        strangers = [name for name in names if name not in pool.jobs]
        if strangers:
            raise SubmitError(
                "workers not in pool " + pool_id + ": " + ", ".join(strangers)
            )
        asked = []
        for name in names:
            job = pool.jobs[name]
            if job in pool.waiting:
                pool.waiting.remove(job)
                self._end_job(job, STATUS_CANCELLED, CANCELLED)
                asked.append(name)
            elif job.status is None and name in self.workers:
                self.workers[name].kill_job(pool_id)
                asked.append(name)
        log.info("pool {pool}: kill asked of {workers}", pool=pool_id, workers=asked)
        return asked

    def wait(self, pool: Pool, timeout: float) -> Deferred[Pool]:
        """Fire with C{pool} when it finishes, or after C{timeout} seconds."""
        if pool.finished or timeout <= 0:
            d: Deferred[Pool] = Deferred()
            d.callback(pool)
            return d

        def cancelled(d: Deferred[Pool]) -> None:
            if d in pool.waiters:
                pool.waiters.remove(d)
            if timer.active():
                timer.cancel()

        d = Deferred(cancelled)
        pool.waiters.append(d)

        def timed_out() -> None:
            pool.waiters.remove(d)
            d.callback(pool)

        timer = self.clock.callLater(timeout, timed_out)

        def done(result: Pool) -> Pool:
            if timer.active():
                timer.cancel()
            return result

        return d.addCallback(done)

    # Reports from workers

    def job_started(self, worker: str, pool_id: str, pid: int) -> None:
        job = self._running.get(worker, {}).get(pool_id)
        if job is not None and job.state == PENDING:
            job.pid = pid
            job.state = RUNNING
            job.started_at = self.wall()
            job._started_clock = self.clock.seconds()
            pool = self.pools[pool_id]
            event = pool.event("started", job.started_data())
            job.started_event = event.id
            pool.announce(event)
            # Not stored now: after a crash, the worker tells it again.

    def job_output(
        self,
        worker: str,
        pool_id: str,
        data: str,
        stream: str = "stdout",
        seq: int | None = None,
    ) -> None:
        job = self._running.get(worker, {}).get(pool_id)
        if job is None:
            return
        if seq is not None:
            if seq <= job.seq:
                return  # sent again after a reconnection: the master has it
            job.seq = seq
        self._add_output(job, data, stream)

    def _add_output(self, job: Job, text: str, stream: str) -> None:
        pool = self.pools[job.pool_id]
        event = pool.event("output", output_data(job, text, stream))
        job.output.append(text, stream, event.id)
        pool.announce(event)
        if self.output_total > self.max_output_total:
            self._reclaim_output()

    def job_ended(
        self, worker: str, pool_id: str, status: int, reason: str | None = None
    ) -> None:
        job = self._running.get(worker, {}).pop(pool_id, None)
        if job is None:
            self._ack(worker, pool_id)  # not ours (any more): let the worker forget it
            return
        if reason not in END_REASONS:
            state = OK if status == 0 else FAILED
        else:
            state = reason
        if state == END_CANCELLED:
            status = STATUS_CANCELLED
        elif state == TIMED_OUT:
            status = STATUS_TIMED_OUT
        self._end_job(job, status, state)
        self._ack(worker, pool_id)

    def _ack(self, worker: str, pool_id: str) -> None:
        """Tell the worker a job's end is kept, once the store holds it."""

        def ack(_: Any) -> None:
            link = self.workers.get(worker)
            if link is not None:
                link.ack_job(pool_id)

        if self.writer is None:
            ack(None)
        else:
            self.writer.committed(pool_id, hurry=False).addCallback(ack)

    def _end_job(self, job: Job, status: int, state: str) -> None:
        job.status = status
        job.state = state
        job.ended_at = self.wall()
        if job._started_clock is not None:
            job.duration = max(0.0, self.clock.seconds() - job._started_clock)
        elif job.started_at is not None:  # started before this master did
            job.duration = max(0.0, job.ended_at - job.started_at)
        else:  # it never ran
            job.started_at, job.duration = job.ended_at, 0.0
        pool = self.pools[job.pool_id]
        event = pool.event("ended", job.ended_data())
        job.ended_event = event.id
        pool.announce(event)
        for hook in self.job_end_hooks:
            hook(job)
        self._next_turn(pool, job)
        self._persist(pool)
        if not pool.finished or pool.end_event:
            return
        pool.ended_at = job.ended_at
        self._expiries[pool.id] = self.clock.callLater(
            self.retention, self._expire, pool.id
        )
        self._held.append(pool)
        for pool_hook in self.pool_end_hooks:
            pool_hook(pool)
        event = pool.event("pool", {})
        pool.end_event = event.id
        pool.announce(event)
        self._persist(pool)
        waiters, pool.waiters = pool.waiters, []
        for d in waiters:
            d.callback(pool)
        # Logged once those waiting have their answer.
        log.info("pool {pool} ended with status {status}", pool=pool.id, status=pool.status)
        if self.store is not None:
            while len(self._held) > self.cache:
                self._let_go(self._held.popleft())

    # The store

    def _persist(self, pool: Pool) -> None:
        if self.writer is not None:
            self.writer.mark(pool.id, pool.stored)

    def stored(self, pool: Pool) -> Deferred[None]:
        """Fires once the store holds the pool as it is now (at once without a store)."""
        if self.writer is None:
            return succeed(None)
        return self.writer.committed(pool.id)

    def _let_go(self, pool: Pool) -> None:
        """A finished pool leaves memory once the store holds it."""
        assert self.writer is not None

        def gone(_: Any) -> None:
            if self.pools.get(pool.id) is pool and not pool.listeners and not pool.waiters:
                call = self._expiries.pop(pool.id, None)
                if call is not None and call.active():
                    call.cancel()
                del self.pools[pool.id]
                for job in pool.jobs.values():
                    job.output.detach()  # an answer being written may still read it

        self.writer.committed(pool.id, hurry=False).addCallback(gone)

    def _expire_stored(self) -> None:
        assert self.store is not None
        self._expirer = self.clock.callLater(EXPIRE_INTERVAL, self._expire_stored)
        d = self.store.expire(self.wall() - self.retention)
        d.addCallback(
            lambda count: count and log.info("deleted {count} pools past the retention", count=count)
        )
        d.addErrback(lambda f: log.error("cannot delete old pools: {why}", why=f.getErrorMessage()))

    def _output_buffer(self, record: dict[str, Any] | None) -> OutputBuffer:
        if record is None:
            return OutputBuffer(self.max_output, self._resized)
        return OutputBuffer.from_record(record, self.max_output, self._resized)

    def find(self, pool_id: str) -> Deferred[Pool | None]:
        """A pool by id: from memory, else from the store (kept in memory a while)."""
        pool = self.pools.get(pool_id)
        if pool is not None or self.store is None:
            return succeed(pool)

        def loaded(record: dict[str, Any] | None) -> Pool | None:
            if record is None:
                return None
            if pool_id in self.pools:  # loaded meanwhile
                return self.pools[pool_id]
            if record["ended_at"] is None:
                return None  # ended meanwhile, or never ours: not kept in memory
            if record["ended_at"] < self.wall() - self.retention:
                return None  # past the retention, not yet deleted
            found = Pool.from_record(record, self._output_buffer)
            while self._held and len(self._held) >= self.cache:
                self._let_go(self._held.popleft())
            self.pools[pool_id] = found
            self._held.append(found)
            return found

        return self.store.get(pool_id).addCallback(loaded)

    def page(
        self, before: str | None, state: str | None, worker: str | None, cmd: str | None, limit: int
    ) -> Deferred[list[Pool | dict[str, Any]]]:
        """
        C{limit} pools newest first, filtered: running and cached pools as
        they are in memory, the others as their stored summaries.
        """
        if self.store is None or self.writer is None:
            return succeed(list(itertools.islice(self.list_pools(before, state, worker, cmd), limit)))
        store, writer = self.store, self.writer
        d = writer.flush()
        since = self.wall() - self.retention
        d.addCallback(lambda _: store.page(before, state, worker, cmd, limit, since))
        return d.addCallback(
            lambda summaries: [self.pools.get(summary["id"], summary) for summary in summaries]
        )

    def load(self, records: list[dict[str, Any]]) -> int:
        """Take back the pools that had not ended when the last master stopped."""
        for record in records:
            pool = Pool.from_record(record, self._output_buffer)
            self.pools[pool.id] = pool
            in_flight = 0
            for job in pool.jobs.values():
                if job.sent and job.status is None:
                    self._adopt(job)
                    in_flight += 1
            if pool.waiting and not pool.halted:
                # Its workers have to come back first.
                slots = pool.rollout.window(len(pool.jobs)) - in_flight
                pool.timers.append(self.clock.callLater(self.reconnect_grace, self._send, pool, slots))
        return len(records)

    def _expire(self, pool_id: str) -> None:
        del self._expiries[pool_id]
        self._drop(pool_id)

    def _drop(self, pool_id: str) -> None:
        pool = self.pools.pop(pool_id)
        for job in pool.jobs.values():
            job.output.release()

    # The total output budget

    def _resized(self, delta: int) -> None:
        self.output_total += delta

    def _reclaim_output(self) -> None:
        """
        Over the total budget: drop the output of finished pools, oldest
        first, then squeeze the largest running jobs' output, until the
        master holds at most nine tenths of the budget.
        """
        goal = self.max_output_total * 9 // 10
        freeing = 0  # bytes of pools let go, given back once the store has them
        while self.output_total - freeing > goal and self._held:
            pool = self._held.popleft()
            if self.pools.get(pool.id) is not pool:
                continue
            if self.writer is not None:
                freeing += sum(job.output.size for job in pool.jobs.values())
                self._let_go(pool)  # the store keeps it whole
            else:
                for job in pool.jobs.values():
                    job.output.release()
        if self.output_total - freeing <= goal:
            return
        running = sorted(
            (job for jobs in self._running.values() for job in jobs.values()),
            key=lambda job: job.output.size,
            reverse=True,
        )
        for job in running:
            if self.output_total <= goal or job.output.size <= MIN_SQUEEZED:
                break
            job.output.shrink(max(MIN_SQUEEZED, job.output.size // 2))
        log.warn(
            "output over the {budget}-byte budget: older output dropped",
            budget=self.max_output_total,
        )

    def stop(self) -> None:
        """Cancel timers: the master is shutting down."""
        timers = [t for pool in self.pools.values() for t in pool.timers]
        if self.writer is not None:
            self.writer.stop()
        for call in (
            *self._expiries.values(),
            *self._forgets.values(),
            *self._graces.values(),
            *timers,
            self._expirer,
        ):
            if call is None:
                continue
            if call.active():
                call.cancel()
        self._expiries.clear()
        self._forgets.clear()
