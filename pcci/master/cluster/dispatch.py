"""
The dispatcher: starts pools, rolls them out, kills them, and ends their
jobs (the workers' reports come through L{pcci.master.cluster.reports}).

It moves jobs through their states (see L{pcci.master.cluster.model}) and numbers
their events; the roster says who is there and what each worker runs, the
history keeps the pools and writes them to the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pcci.ids import UUID7Generator
from pcci.master.cluster import rollouts
from pcci.master.cluster.events import Event, output_data
from pcci.master.cluster.history import PoolHistory
from pcci.master.cluster.jobspec import JobOptions, Rollout
from pcci.master.cluster.model import (
    CANCELLED,
    LOST,
    NOT_STARTED,
    PENDING,
    STATUS_CANCELLED,
    STATUS_LOST,
    WAITING,
    Job,
    Pool,
    WorkerLink,
)
from pcci.master.cluster.peering import IPeers
from pcci.master.cluster.roster import Roster
from pcci.output import on_own_line
from pcci.wire import STATUS_NOT_STARTED

log = Logger()


class SubmitError(ValueError):
    """A pool request that cannot be carried out; nothing was created."""


@dataclass(frozen=True)
class PoolOrder:
    """
    What a pool is to do, whoever asks: C{POST /job} or a schedule (see
    L{pcci.master.cluster.launch}), a retry, a push or a fetch.
    """

    cmd: str
    options: JobOptions = field(default_factory=JobOptions)
    #: All jobs at once, or in batches (see L{Rollout}).
    rollout: Rollout = field(default_factory=Rollout)
    #: The name of the API token that asked.
    submitted_by: str | None = None
    #: How each job starts, when not by running C{cmd} (which then only
    #: says what the pool does), and what kind of pool that makes.
    start: Callable[[Job, WorkerLink], None] | None = None
    kind: str = "run"
    retry_of: str | None = None
    #: Seconds a job on a worker known but offline waits for it.
    wait_offline: float | None = None
    #: The schedule that starts it.
    schedule: str | None = None
    #: Where its end is told, and on which ends.
    notify: list[str] = field(default_factory=list)
    notify_on: str = "failed"


class Dispatcher:
    """Pools from submission to their end, and the reports of their jobs."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        roster: Roster,
        history: PoolHistory,
        peers: IPeers,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.roster = roster
        self.history = history
        self.peers = peers
        self._new_id = new_id or UUID7Generator(lambda: int(self.wall() * 1000))
        #: Called with each job, and each pool, as it ends (for metrics).
        self.job_end_hooks: list[Callable[[Job], None]] = []
        self.pool_end_hooks: list[Callable[[Pool], None]] = []
        #: Jobs waiting for their offline worker to connect: worker -> pool -> job.
        self.expected: dict[str, dict[str, Job]] = {}

    # Pools

    def submit(self, order: PoolOrder, workers: Iterable[str]) -> Deferred[Pool]:
        """
        Start C{order} on each named worker, as one pool: all at once, or
        as its rollout says.  Fires with the pool once the store holds it.

        @raise SubmitError: no worker, or one that is not connected (nor,
            with C{wait_offline}, known).
        @raise TooManyPools: no room for another pool.
        @raise StoreUnavailable: the store does not answer: the pool could
            not be kept.
        Either way nothing was created.
        """
        names = list(dict.fromkeys(workers))
        if not names:
            raise SubmitError("workers must name at least one worker")
        offline = {name for name in names if name not in self.roster.links}
        wait_offline = order.wait_offline
        unknown = [name for name in names if name in offline and (
            wait_offline is None or name not in self.roster.records)]
        if unknown:
            raise SubmitError("unknown or disconnected workers: " + ", ".join(unknown))
        self.history.check_store()
        self.history.make_room()
        now = self.wall()
        pool = Pool(
            id=self._new_id(),
            cmd=order.cmd,
            started_at=now,
            options=order.options,
            rollout=order.rollout,
            submitted_by=order.submitted_by,
            start=order.start,
            kind=order.kind,
            retry_of=order.retry_of,
            wait_offline=wait_offline,
            wait_until=None if wait_offline is None else now + wait_offline,
            schedule=order.schedule,
            notify=list(order.notify),
            notify_on=order.notify_on,
        )
        for name in names:
            job = Job(pool.id, name, order.cmd, self.history.new_output())
            pool.jobs[name] = job
            if name in offline:
                job.state = WAITING
            else:
                pool.waiting.append(job)
        self.expect(pool)
        self.history.add(pool)
        self.send(pool, rollouts.slots(pool))
        return self.history.stored(pool.id).addCallback(lambda _: pool)

    # Jobs waiting for their workers (wait_offline)

    def expect(self, pool: Pool) -> None:
        """The pool's L{WAITING} jobs wait for their workers until its C{wait_until}."""
        waiting = [job for job in pool.jobs.values() if job.state == WAITING]
        if not waiting:
            return
        for job in waiting:
            self.expected.setdefault(job.worker_id, {})[pool.id] = job
        assert pool.wait_until is not None
        delay = max(0.0, pool.wait_until - self.wall())
        pool.timers.append(self.clock.callLater(delay, self._waited_out, pool))

    def _unexpect(self, job: Job) -> None:
        jobs = self.expected.get(job.worker_id, {})
        jobs.pop(job.pool_id, None)
        if not jobs:
            self.expected.pop(job.worker_id, None)

    def arrived(self, link: WorkerLink) -> None:
        """A worker connected: the jobs waiting for it start, as their pools' rollouts allow."""
        for pool_id, job in list(self.expected.pop(link.name, {}).items()):
            pool = self.history.pools[pool_id]
            job.state = PENDING
            pool.waiting.append(job)
            self.send(pool, rollouts.slots(pool))
            self.history.changed(pool)

    def _waited_out(self, pool: Pool) -> None:
        """The pool's C{wait_offline} is over: the jobs still waiting end not started."""
        for job in [job for job in pool.jobs.values() if job.state == WAITING]:
            self._unexpect(job)
            self.note(job, f"pcci: not started: worker {job.worker_id} did not connect"
                            f" within {pool.wait_offline:g} s (wait_offline)\n")
            self.end_job(job, STATUS_NOT_STARTED, NOT_STARTED)

    def send(self, pool: Pool, slots: int) -> None:
        """Send up to C{slots} of C{pool}'s waiting jobs to their workers."""
        while slots > 0 and pool.waiting:
            job = pool.waiting.popleft()
            link = self.roster.links.get(job.worker_id)
            if link is None:
                self.note(job, f"pcci: job lost: worker {job.worker_id} left before its turn\n")
                self.end_job(job, STATUS_LOST, LOST)
                continue
            pool.job_sent(job)
            job.sent_at = self.wall()
            self.roster.running(job.worker_id)[pool.id] = job
            if pool.start is not None:
                pool.start(job, link)
            else:
                link.run_job(pool.id, pool.cmd, pool.options.wire())
            slots -= 1

    def _next_turn(self, pool: Pool, job: Job) -> None:
        """A job ended: its pool's rollout says what comes next (see L{rollouts})."""
        decided = rollouts.turn(pool, job)
        if decided.stop:
            log.info("pool {pool} stops: {why}: cancelling the rest", pool=pool.id, why=decided.stop)
            pool.stopped = decided.stop
            self._rollout_changed(pool)
            self._halt(pool)
            return
        if pool.paused:
            log.info("pool {pool} paused after {n} ends: it goes on when continued", pool=pool.id,
                     n=pool.ended_since_pause)
            self._rollout_changed(pool)
        if decided.send <= 0 or not pool.waiting:
            return
        wait = pool.rollout.batch_wait
        if wait > 0:
            pool.timers = [t for t in pool.timers if t.active()]
            pool.timers.append(self.clock.callLater(wait, lambda: self.send(pool, min(decided.send,
                                                                                       rollouts.slots(pool)))))
        else:
            self.send(pool, decided.send)

    def resume(self, pool_id: str) -> int:
        """
        A paused pool goes on (C{POST /pools/<id>/continue}): how many jobs start.

        @raise KeyError: a pool not in memory.
        @raise SubmitError: it is not paused.
        """
        pool = self.history.pools[pool_id]
        if not pool.paused:
            raise SubmitError(f"pool {pool_id} is not paused")
        slots = rollouts.resume(pool)
        log.info("pool {pool} continues", pool=pool.id)
        self._rollout_changed(pool)
        self.send(pool, slots)
        self.history.changed(pool)
        return slots

    def _halt(self, pool: Pool) -> None:
        """No more jobs of C{pool} start: those held back end cancelled, and
        those sent but not started are called back."""
        pool.halted = True
        pool.cancel_timers()
        waiting, pool.waiting = list(pool.waiting), deque()
        waiting += [job for job in pool.jobs.values() if job.state == WAITING]
        for job in waiting:
            self._unexpect(job)
            self.end_job(job, STATUS_CANCELLED, CANCELLED)
        for job in pool.jobs.values():
            link = self.roster.links.get(job.worker_id)
            if job.sent and job.state == PENDING and link is not None:
                link.kill_job(pool.id)

    def kill(self, pool_id: str, workers: Iterable[str] | None = None) -> list[str]:
        """
        Ask the workers running C{pool_id}'s jobs to kill them; jobs not
        yet sent end cancelled.

        @return: the workers asked, in pool order.
        @raise KeyError: a pool not in memory (see L{PoolHistory.find}).
        @raise SubmitError: workers named that are not in the pool.
        """
        pool = self.history.pools[pool_id]
        names = list(pool.jobs) if workers is None else list(dict.fromkeys(workers))
        strangers = [name for name in names if name not in pool.jobs]
        if strangers:
            raise SubmitError("workers not in pool " + pool_id + ": " + ", ".join(strangers))
        asked = []
        for name in names:
            job = pool.jobs[name]
            link = self.roster.links.get(name)
            if job in pool.waiting or job.state == WAITING:
                if job in pool.waiting:
                    pool.waiting.remove(job)
                self._unexpect(job)
                self.end_job(job, STATUS_CANCELLED, CANCELLED)
                asked.append(name)
            elif job.status is None and link is not None:
                link.kill_job(pool_id)
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

    def add_output(self, job: Job, text: str, stream: str) -> None:
        pool = self.history.pools[job.pool_id]
        event = pool.event("output", output_data(job, text, stream))
        job.output.append(text, stream, event.id)
        self.announce(pool, event)
        self.history.reclaim_output()

    def note(self, job: Job, text: str) -> None:
        """A note of pcci's in the job's output, on a line of its own."""
        self.add_output(job, on_own_line(text, job.output.last_text), "stderr")

    def end_job(self, job: Job, status: int, state: str) -> None:
        pool = self.history.pools[job.pool_id]
        pool.job_ending(job)
        job.end(status, state, self.wall(), self.clock.seconds())
        event = pool.event("ended", job.ended_data())
        job.ended_event = event.id
        self.announce(pool, event)
        for hook in self.job_end_hooks:
            hook(job)
        self._next_turn(pool, job)
        self.history.changed(pool)
        if not pool.finished or pool.end_event:
            return
        pool.ended_at = job.ended_at
        self.history.ended(pool)
        for pool_hook in self.pool_end_hooks:
            pool_hook(pool)
        event = pool.event("pool", {})
        pool.end_event = event.id
        self.announce(pool, event)
        self.history.changed(pool)
        waiters, pool.waiters = pool.waiters, []
        for d in waiters:
            d.callback(pool)
        # Logged once those waiting have their answer.
        log.info("pool {pool} ended with status {status}", pool=pool.id, status=pool.status)
        self.history.trim()

    def _rollout_changed(self, pool: Pool) -> None:
        """Its rollout paused, went on, or stopped it: those following the pool are told."""
        self.announce(pool, pool.event("rollout", {"state": pool.state, "stopped": pool.stopped}))

    def announce(self, pool: Pool, event: Event) -> None:
        pool.announce(event)
        self.peers.mirror(pool, event)

    def stop(self) -> None:
        """Cancel the pools' timers: the master is shutting down."""
        for pool in self.history.pools.values():
            pool.cancel_timers()
