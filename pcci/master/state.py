"""
The master's state: connected workers, pools and their jobs.

One L{ClusterState} holds it all.  The wire protocol reports to it what
workers say; the REST API reads it and asks it to start and kill pools.
Neither touches the other.

Two clocks: timers and durations use the state's C{clock} (the reactor,
on monotonic time), while the times shown to people come from C{wall}.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.ids import UUID7Generator
from pcci.master.events import Event, output_data
from pcci.master.history import HealthHistory, clean_figures
from pcci.master.jobspec import JobOptions, Rollout
from pcci.master.output import (
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

    def run_job(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None: ...

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
        #: Finished pools whose output is still held, in the order they ended.
        self._held: deque[Pool] = deque()

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
        forget = self._forgets.pop(link.name, None)
        if forget is not None and forget.active():
            forget.cancel()
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
        for job in list(self._running.pop(link.name, {}).values()):
            self._add_output(job, f"\npcci: job lost: worker {reason}\n", "stderr")
            self._end_job(job, STATUS_LOST, LOST)

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
        )
        for name in names:
            job = Job(pool.id, name, cmd, OutputBuffer(self.max_output, self._resized))
            pool.jobs[name] = job
            pool.waiting.append(job)
        self.pools[pool.id] = pool
        log.info(
            "pool {pool} started on {workers}: {cmd}",
            pool=pool.id,
            workers=", ".join(names),
            cmd=cmd,
        )
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

    def job_output(
        self, worker: str, pool_id: str, data: str, stream: str = "stdout"
    ) -> None:
        job = self._running.get(worker, {}).get(pool_id)
        if job is not None:
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

    def _end_job(self, job: Job, status: int, state: str) -> None:
        job.status = status
        job.state = state
        job.ended_at = self.wall()
        if job._started_clock is None:  # it never ran
            job.started_at, job.duration = job.ended_at, 0.0
        else:
            job.duration = max(0.0, self.clock.seconds() - job._started_clock)
        pool = self.pools[job.pool_id]
        event = pool.event("ended", job.ended_data())
        job.ended_event = event.id
        pool.announce(event)
        for hook in self.job_end_hooks:
            hook(job)
        self._next_turn(pool, job)
        if not pool.finished or pool.end_event:
            return
        pool.ended_at = job.ended_at
        log.info(
            "pool {pool} ended with status {status}", pool=pool.id, status=pool.status
        )
        self._expiries[pool.id] = self.clock.callLater(
            self.retention, self._expire, pool.id
        )
        self._held.append(pool)
        for pool_hook in self.pool_end_hooks:
            pool_hook(pool)
        event = pool.event("pool", {})
        pool.end_event = event.id
        pool.announce(event)
        waiters, pool.waiters = pool.waiters, []
        for d in waiters:
            d.callback(pool)

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
        while self.output_total > goal and self._held:
            pool = self._held.popleft()
            if self.pools.get(pool.id) is pool:
                for job in pool.jobs.values():
                    job.output.release()
        if self.output_total <= goal:
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
        for call in (*self._expiries.values(), *self._forgets.values(), *timers):
            if call.active():
                call.cancel()
        self._expiries.clear()
        self._forgets.clear()
