"""
The master's state: connected workers, pools and their jobs.

One L{ClusterState} holds it all.  The wire protocol reports to it what
workers say; the REST API reads it and asks it to start and kill pools.
Neither touches the other.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.master.history import HealthHistory, clean_figures
from pcci.ids import UUID7Generator

log = Logger()

DEFAULT_RETENTION = 300.0
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024
DEFAULT_MAX_POOLS = 10_000
DEFAULT_HISTORY = 3600.0

#: Most heartbeats kept per worker, whatever its interval: 3,600 rows of
#: twelve doubles are 340 KiB.
MAX_HISTORY_ROWS = 3600

#: Status of a job whose end pcci could not observe (its worker was lost).
STATUS_LOST = -1


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
    connected_at: float
    #: Seconds between the worker's heartbeats.
    heartbeat: float

    def run_job(self, pool_id: str, cmd: str) -> None: ...

    def kill_job(self, pool_id: str) -> None: ...

    def dismiss(self, reason: str) -> None:
        """Tell the worker why it is dropped, ask it not to reconnect, close."""


class SubmitError(ValueError):
    """A pool request that cannot be carried out; nothing was created."""


class TooManyPools(Exception):
    """Every pool kept is still running and there is no room for another."""


class OutputBuffer:
    """
    A job's output, capped at C{limit} bytes of UTF-8.

    Past the cap it keeps the beginning (up to half the cap) and the end,
    and counts what was dropped between them, so both how a command started
    and how it ended stay visible.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._head: list[str] = []
        self._head_size = 0
        self._tail: deque[tuple[str, int]] = deque()
        self._tail_size = 0
        self.dropped = 0

    def append(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if not self._tail and self._head_size + size <= self._limit // 2:
            self._head.append(text)
            self._head_size += size
            return
        self._tail.append((text, size))
        self._tail_size += size
        tail_limit = self._limit - self._head_size
        while self._tail_size > tail_limit:
            oldest, oldest_size = self._tail.popleft()
            excess = self._tail_size - tail_limit
            self._tail_size -= oldest_size
            if excess >= oldest_size:
                self.dropped += oldest_size
                continue
            # Keep the end of the oldest piece; drop a cut character whole.
            kept = oldest.encode("utf-8")[excess:].decode("utf-8", "ignore")
            kept_size = len(kept.encode("utf-8"))
            self.dropped += oldest_size - kept_size
            self._tail.appendleft((kept, kept_size))
            self._tail_size += kept_size

    def text(self) -> str:
        marker = ""
        if self.dropped:
            marker = f"\n[pcci: {self.dropped} bytes of output dropped]\n"
        return "".join(self._head) + marker + "".join(t for t, _ in self._tail)


@dataclass(eq=False)
class WorkerRecord:
    """What the master knows of a worker it has seen, online or not."""

    name: str
    address: str
    connected_at: float
    heartbeat: float
    history: HealthHistory
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
            "health": self.figures,
        }


@dataclass(eq=False)
class Job:
    """One command on one worker."""

    pool_id: str
    worker_id: str
    cmd: str
    started_at: float
    output: OutputBuffer
    pid: int | None = None
    status: int | None = None
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        time_to_calc = None
        if self.ended_at is not None:
            time_to_calc = round((self.ended_at - self.started_at) * 1000)
        return {
            "pool": self.pool_id,
            "worker_id": self.worker_id,
            "cmd": self.cmd,
            "pid": self.pid,
            "status": self.status,
            "result": self.output.text(),
            "time_to_calc": time_to_calc,
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
        }


@dataclass(eq=False)
class Pool:
    """The same command on a list of workers, under one id."""

    id: str
    cmd: str
    started_at: float
    jobs: dict[str, Job] = field(default_factory=dict)
    ended_at: float | None = None
    waiters: list[Deferred[Pool]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(job.status is not None for job in self.jobs.values())

    @property
    def status(self) -> int | None:
        """None while a job runs, 0 if every job exited 0, else 1."""
        if not self.finished:
            return None
        return 0 if all(job.status == 0 for job in self.jobs.values()) else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cmd": self.cmd,
            "status": self.status,
            "jobs": [job.to_json() for job in self.jobs.values()],
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
        }


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
    ) -> None:
        self.clock = clock
        self.retention = retention
        self.max_output = max_output
        self.max_pools = max_pools
        self.history = history
        self._new_id = new_id or UUID7Generator()
        self.workers: dict[str, WorkerLink] = {}
        #: Every worker seen since the master started, by name.
        self.records: dict[str, WorkerRecord] = {}
        #: Called with each job, and each pool, as it ends (for metrics).
        self.job_end_hooks: list[Callable[[Job], None]] = []
        self.pool_end_hooks: list[Callable[[Pool], None]] = []
        self.pools: dict[str, Pool] = {}
        self._running: dict[str, dict[str, Job]] = {}
        self._expiries: dict[str, IDelayedCall] = {}

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
        record = self.records.get(link.name)
        if record is None or record.heartbeat != link.heartbeat:
            size = min(MAX_HISTORY_ROWS, int(self.history // link.heartbeat) + 1)
            record = WorkerRecord(
                link.name, link.address, link.connected_at, link.heartbeat, HealthHistory(size)
            )
            self.records[link.name] = record
        record.address, record.connected_at = link.address, link.connected_at
        record.online, record.last_seen = True, self.clock.seconds()
        log.info("worker {name} joined from {peer}", name=link.name, peer=link.address)

    def remove_worker(self, link: WorkerLink, reason: str) -> None:
        """Forget a worker whose connection is gone; its running jobs fail."""
        if self.workers.get(link.name) is not link:
            return
        del self.workers[link.name]
        self.records[link.name].online = False
        log.info("worker {name} left: {reason}", name=link.name, reason=reason)
        for job in list(self._running.pop(link.name, {}).values()):
            job.output.append(f"\npcci: job lost: worker {reason}\n")
            self._end_job(job, STATUS_LOST)

    def running_jobs(self, worker: str) -> int:
        return len(self._running.get(worker, ()))

    def heartbeat(self, worker: str, figures: dict[str, Any]) -> None:
        """Keep a worker's latest figures, and add them to its history."""
        record = self.records.get(worker)
        if record is None or not record.online:
            return
        now = self.clock.seconds()
        record.figures = clean_figures(figures)
        record.last_seen = now
        record.history.add(now, record.figures)

    # Pools

    def submit(self, cmd: str, workers: Iterable[str]) -> Pool:
        """Start C{cmd} on each named worker, as one pool."""
        names = list(dict.fromkeys(workers))
        if not names:
            raise SubmitError("workers must name at least one worker")
        unknown = [name for name in names if name not in self.workers]
        if unknown:
            raise SubmitError(
                "unknown or disconnected workers: " + ", ".join(unknown)
            )
        self._make_room()
        now = self.clock.seconds()
        pool = Pool(id=self._new_id(), cmd=cmd, started_at=now)
        for name in names:
            job = Job(pool.id, name, cmd, now, OutputBuffer(self.max_output))
            pool.jobs[name] = job
            self._running[name][pool.id] = job
        self.pools[pool.id] = pool
        log.info(
            "pool {pool} started on {workers}: {cmd}",
            pool=pool.id,
            workers=", ".join(names),
            cmd=cmd,
        )
        for name in names:
            self.workers[name].run_job(pool.id, cmd)
        return pool

    def _make_room(self) -> None:
        """Drop the oldest finished pool if a new one would exceed C{max_pools}."""
        if len(self.pools) < self.max_pools:
            return
        for pool in self.pools.values():
            if pool.finished:
                self._expiries.pop(pool.id).cancel()
                del self.pools[pool.id]
                return
        raise TooManyPools(f"{len(self.pools)} pools are running, the most kept")

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
            if pool.jobs[name].status is None and name in self.workers:
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
        if job is not None:
            job.pid = pid

    def job_output(self, worker: str, pool_id: str, data: str) -> None:
        job = self._running.get(worker, {}).get(pool_id)
        if job is not None:
            job.output.append(data)

    def job_ended(self, worker: str, pool_id: str, status: int) -> None:
        job = self._running.get(worker, {}).pop(pool_id, None)
        if job is not None:
            self._end_job(job, status)

    def _end_job(self, job: Job, status: int) -> None:
        job.status = status
        job.ended_at = self.clock.seconds()
        for hook in self.job_end_hooks:
            hook(job)
        pool = self.pools[job.pool_id]
        if not pool.finished:
            return
        pool.ended_at = job.ended_at
        log.info(
            "pool {pool} ended with status {status}", pool=pool.id, status=pool.status
        )
        self._expiries[pool.id] = self.clock.callLater(
            self.retention, self._expire, pool.id
        )
        for pool_hook in self.pool_end_hooks:
            pool_hook(pool)
        waiters, pool.waiters = pool.waiters, []
        for d in waiters:
            d.callback(pool)

    def _expire(self, pool_id: str) -> None:
        del self._expiries[pool_id]
        del self.pools[pool_id]

    def stop(self) -> None:
        """Cancel retention timers: the master is shutting down."""
        for call in self._expiries.values():
            call.cancel()
        self._expiries.clear()
