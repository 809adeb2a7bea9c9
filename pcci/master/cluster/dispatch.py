"""
The dispatcher: starts pools, rolls them out, kills them, and takes the
workers' reports of their jobs.

It moves jobs through their states (see L{pcci.master.cluster.model}) and numbers
their events; the roster says who is there and what each worker runs, the
history keeps the pools and writes them to the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pcci.ids import UUID7Generator
from pcci.master.cluster.events import Event, output_data
from pcci.master.cluster.history import PoolHistory
from pcci.master.cluster.jobspec import JobOptions, Rollout
from pcci.master.cluster.model import (
    CANCELLED,
    FAILED,
    LOST,
    NOT_STARTED,
    OK,
    PENDING,
    RUNNING,
    STATUS_CANCELLED,
    STATUS_LOST,
    TIMED_OUT,
    WAITING,
    Job,
    Pool,
    WorkerLink,
)
from pcci.master.cluster.roster import Roster
from pcci.output import on_own_line
from pcci.wire import END_CANCELLED, END_REASONS, STATUS_NOT_STARTED, STATUS_TIMED_OUT

log = Logger()


class SubmitError(ValueError):
    """A pool request that cannot be carried out; nothing was created."""


class Dispatcher:
    """Pools from submission to their end, and the reports of their jobs."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        roster: Roster,
        history: PoolHistory,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.roster = roster
        self.history = history
        self._new_id = new_id or UUID7Generator(lambda: int(self.wall() * 1000))
        #: Called with each job, and each pool, as it ends (for metrics).
        self.job_end_hooks: list[Callable[[Job], None]] = []
        self.pool_end_hooks: list[Callable[[Pool], None]] = []
        #: Called with each event of a pool of this master's, as it happens.
        self.event_hooks: list[Callable[[Pool, Event], None]] = []
        #: Relays a worker's report of a job this master carries for another
        #: (see L{pcci.master.peers.peers}): C{(worker, pool, code, fields)},
        #: false for a job of this master's own.
        self.relay: Callable[[str, str, str, dict[str, Any]], bool] = lambda *report: False
        #: Whether a worker connected here holds a job of a pool.
        self.holds: Callable[[WorkerLink, str], bool] = lambda link, pool_id: any(
            job["pool"] == pool_id for job in link.held_jobs
        )
        #: Jobs waiting for their offline worker to connect: worker -> pool -> job.
        self.expected: dict[str, dict[str, Job]] = {}
        roster.on_join = self._reattach
        roster.on_give_up = self._give_up

    # Pools

    def submit(
        self,
        cmd: str,
        workers: Iterable[str],
        options: JobOptions | None = None,
        rollout: Rollout | None = None,
        submitted_by: str | None = None,
        start: Callable[[Job, WorkerLink], None] | None = None,
        kind: str = "run",
        retry_of: str | None = None,
        wait_offline: float | None = None,
        schedule: str | None = None,
        notify: list[str] | None = None,
        notify_on: str = "failed",
    ) -> Deferred[Pool]:
        """
        Start C{cmd} on each named worker, as one pool: all at once, or as
        C{rollout} says (or, with C{start}, start each job so: C{cmd} then
        only says what the pool does, and C{kind} what kind of pool it
        is).  With C{wait_offline} seconds, a job on a worker known but
        offline waits for it that long.  C{schedule} names the schedule
        that starts it, C{notify} where its end is told, and C{notify_on}
        on which ends.  Fires with the pool once the store holds it.

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
        unknown = [name for name in names if name in offline and (
            wait_offline is None or name not in self.roster.records)]
        if unknown:
            raise SubmitError("unknown or disconnected workers: " + ", ".join(unknown))
        self.history.check_store()
        self.history.make_room()
        now = self.wall()
        pool = Pool(
            id=self._new_id(),
            cmd=cmd,
            started_at=now,
            options=options or JobOptions(),
            rollout=rollout or Rollout(),
            submitted_by=submitted_by,
            start=start,
            kind=kind,
            retry_of=retry_of,
            wait_offline=wait_offline,
            wait_until=None if wait_offline is None else now + wait_offline,
            schedule=schedule,
            notify=notify or [],
            notify_on=notify_on,
        )
        for name in names:
            job = Job(pool.id, name, cmd, self.history.new_output())
            pool.jobs[name] = job
            if name in offline:
                job.state = WAITING
            else:
                pool.waiting.append(job)
        self._expect(pool)
        self.history.add(pool)
        self._send(pool, pool.rollout.window(len(names)))
        return self.history.stored(pool.id).addCallback(lambda _: pool)

    # Jobs waiting for their workers (wait_offline)

    def _expect(self, pool: Pool) -> None:
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

    def _arrived(self, link: WorkerLink) -> None:
        """A worker connected: the jobs waiting for it start, as their pools' rollouts allow."""
        for pool_id, job in list(self.expected.pop(link.name, {}).items()):
            pool = self.history.pools[pool_id]
            job.state = PENDING
            pool.waiting.append(job)
            in_flight = sum(1 for j in pool.jobs.values() if j.sent and j.status is None)
            self._send(pool, pool.rollout.window(len(pool.jobs)) - in_flight)
            self.history.changed(pool)

    def _waited_out(self, pool: Pool) -> None:
        """The pool's C{wait_offline} is over: the jobs still waiting end not started."""
        for job in [job for job in pool.jobs.values() if job.state == WAITING]:
            self._unexpect(job)
            self._note(job, f"pcci: not started: worker {job.worker_id} did not connect"
                            f" within {pool.wait_offline:g} s (wait_offline)\n")
            self._end_job(job, STATUS_NOT_STARTED, NOT_STARTED)

    def carry_on(
        self, records: list[dict[str, Any]], prepare: Callable[[Pool], None] = lambda pool: None
    ) -> int:
        """
        Take back the pools that had not ended when the last master stopped,
        or that a master gone ran (see L{pcci.master.peers.peers}); C{prepare}
        each before its jobs carry on.
        """
        for pool in self.history.load(records):
            prepare(pool)
            self._expect(pool)
            for job in pool.jobs.values():
                link = self.roster.links.get(job.worker_id)
                if job.state == WAITING and link is not None:  # connected to another master already
                    self._arrived(link)
            in_flight = self._adopt_in_flight(pool)
            if pool.waiting and not pool.halted:
                # Its workers have to come back first.
                slots = pool.rollout.window(len(pool.jobs)) - in_flight
                pool.timers.append(
                    self.clock.callLater(self.roster.reconnect_grace, self._send, pool, slots)
                )
        return len(records)

    def _adopt_in_flight(self, pool: Pool) -> int:
        """
        A pool this master did not start (it was running when this master
        started, or another master ran it): carry on with its jobs sent and
        not ended, on their workers connected (here or to another master);
        the others wait the grace for theirs.  How many are in flight.
        """
        in_flight = 0
        for job in pool.jobs.values():
            if not job.sent or job.status is not None:
                continue
            in_flight += 1
            running = self.roster.running(job.worker_id)
            if running.get(pool.id) is job:
                continue  # carried on already
            link = self.roster.links.get(job.worker_id)
            if link is None:
                self.roster.adopt(job)
            elif link.master is not None or self.holds(link, pool.id):
                running[pool.id] = job
                self._attach(link, job)  # its holder says if it is gone
            elif self._ask_again(link, job):
                running[pool.id] = job
            else:
                self._note(job, "pcci: job lost: its worker does not hold it\n")
                self._end_job(job, STATUS_LOST, LOST)
        return in_flight

    def _send(self, pool: Pool, slots: int) -> None:
        """Send up to C{slots} of C{pool}'s waiting jobs to their workers."""
        while slots > 0 and pool.waiting:
            job = pool.waiting.popleft()
            link = self.roster.links.get(job.worker_id)
            if link is None:
                self._note(job, f"pcci: job lost: worker {job.worker_id} left before its turn\n")
                self._end_job(job, STATUS_LOST, LOST)
                continue
            job.sent, job.sent_at = True, self.wall()
            self.roster.running(job.worker_id)[pool.id] = job
            if pool.start is not None:
                pool.start(job, link)
            else:
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
        pool.cancel_timers()
        waiting, pool.waiting = list(pool.waiting), deque()
        waiting += [job for job in pool.jobs.values() if job.state == WAITING]
        for job in waiting:
            self._unexpect(job)
            self._end_job(job, STATUS_CANCELLED, CANCELLED)
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
                self._end_job(job, STATUS_CANCELLED, CANCELLED)
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

    # Workers coming and going

    def _reattach(self, link: WorkerLink) -> None:
        """
        Match the jobs a (re)connected worker holds with those the master
        thinks it runs: carry on with each held one; a job it no longer
        holds is lost.  A job this master does not know may be of a pool
        another master started on the same store (that master died, its
        worker came here): the store tells, and this master carries on
        with it.  Otherwise it is let go.
        """
        running = self.roster.running(link.name)
        if link.master is not None:
            # Another master holds it: that one tells if a job is gone.
            for job in running.values():
                self._attach(link, job)
            self._arrived(link)
            return
        held = {job["pool"]: job for job in link.held_jobs}
        for pool_id, job in list(running.items()):
            if pool_id in held:
                self._attach(link, job)
            elif not self._ask_again(link, job):
                del running[pool_id]
                self._note(job, "pcci: job lost: its worker came back without it (restarted?)\n")
                self._end_job(job, STATUS_LOST, LOST)
        for pool_id, report in held.items():
            if pool_id not in running:
                self.history.unfinished_job(pool_id, link.name).addCallback(
                    self._take_over, link, pool_id, bool(report.get("ended"))
                )
        self._arrived(link)

    def _ask_again(self, link: WorkerLink, job: Job) -> bool:
        """
        A worker came back without a job it was sent: it may never have had
        it (its C{run} went through a master that died).  One that remembers
        every job it was sent is asked again: it runs the job if it surely
        never had it, else says it is lost.  False for a worker that cannot
        tell (an older one), or a job that moves files.
        """
        pool = self.history.pools.get(job.pool_id)
        if pool is None or pool.kind != "run" or job.sent_at is None or not link.remembers_jobs:
            return False
        sent_ago = max(0.0, self.wall() - job.sent_at)
        log.info(
            "pool {pool}: {worker} came back without its job: asked again (sent {ago:.1f} s ago)",
            pool=pool.id, worker=link.name, ago=sent_ago,
        )
        link.run_job(pool.id, pool.cmd, {**pool.options.wire(), "sent_ago": round(sent_ago, 3)})
        return True

    def _take_over(self, job: Job | str | None, link: WorkerLink, pool_id: str, ended: bool) -> None:
        """
        A held job this master did not run: carry on with it, leave it to
        the master that runs its pool (named), or let it go.
        """
        if self.roster.links.get(link.name) is not link:
            return  # the worker left meanwhile
        running = self.roster.running(link.name)
        if isinstance(job, str):
            log.info(
                "pool {pool}: its job on {worker} is master {master}'s to carry on with",
                pool=pool_id,
                worker=link.name,
                master=job,
            )
        elif job is not None and pool_id not in running:
            log.info(
                "pool {pool}: carrying on with its job on {worker}, started by another master",
                pool=pool_id,
                worker=link.name,
            )
            running[pool_id] = job
            self._attach(link, job)
            # Its other jobs' workers may come here too, or end lost after the grace.
            self._adopt_in_flight(self.history.pools[pool_id])
        elif pool_id not in running:
            if ended:
                link.ack_job(pool_id)
            else:
                link.kill_job(pool_id)

    def fail(self, job: Job, why: str) -> None:
        """A job this master cannot carry out: it ends failed, saying why."""
        self.roster.running(job.worker_id).pop(job.pool_id, None)
        self._note(job, f"pcci: {why}\n")
        self._end_job(job, 1, FAILED)

    def job_gone(self, worker: str, pool_id: str, not_there: bool = False) -> None:
        """
        The master holding a worker says the worker does not hold this job;
        C{not_there}: that master no longer holds the worker (it answers a
        C{run}), which joins another, or is given up after the grace.
        """
        running = self.roster.running(worker)
        job = running.get(pool_id)
        if job is None or not_there:
            return
        link = self.roster.links.get(worker)
        if link is not None and self._ask_again(link, job):
            return
        del running[pool_id]
        self._note(job, "pcci: job lost: its worker no longer holds it\n")
        self._end_job(job, STATUS_LOST, LOST)

    def _give_up(self, jobs: list[Job], reason: str) -> None:
        """A worker did not come back within the grace: its jobs are lost."""
        for job in jobs:
            self._note(job, f"pcci: job lost: worker {reason}\n")
            self._end_job(job, STATUS_LOST, LOST)

    # Reports from workers

    def job_started(self, worker: str, pool_id: str, pid: int | None) -> None:
        if self.relay(worker, pool_id, "started", {"pid": pid}):
            return
        job = self.roster.running(worker).get(pool_id)
        if job is not None and job.state == PENDING:
            job.pid = pid
            job.state = RUNNING
            job.started_at = self.wall()
            job.started_clock = self.clock.seconds()
            pool = self.history.pools[pool_id]
            event = pool.event("started", job.started_data())
            job.started_event = event.id
            self._announce(pool, event)
            # Not stored now: after a crash, the worker tells it again.

    def job_output(
        self,
        worker: str,
        pool_id: str,
        data: str,
        stream: str = "stdout",
        seq: int | None = None,
        first: int | None = None,
    ) -> None:
        """
        A piece of a job's output, numbered C{seq} (C{first}..C{seq} for a
        note standing for pieces its worker dropped); a note of pcci's has
        no number.
        """
        fields = {"data": data, "stream": stream, "seq": seq, "first": first}
        if self.relay(worker, pool_id, "output", fields):
            return
        job = self.roster.running(worker).get(pool_id)
        if job is None:
            return
        if seq is not None:
            if not self._in_order(job, seq if first is None else first, seq):
                return
            job.seq = max(job.seq, seq)
        self._add_output(job, data, stream)

    def _in_order(self, job: Job, first: int, last: int) -> bool:
        """
        Whether the piece numbered C{first}..C{last} is the next of its
        job's output.  One the master has (sent again after a reconnection)
        is not.  Neither is one past a gap, from a worker whose pieces run
        without one: pieces were lost on their way (a master that died
        had read them, or a letter of a master gone comes late), so the
        worker is asked again for all after the last one in order.
        """
        if last <= job.seq and first != job.seq + 1:
            return False  # had (a note for an empty stretch is numbered first = last + 1)
        if first <= job.seq + 1:
            return True
        link = self.roster.links.get(job.worker_id)
        if link is not None and not link.contiguous_seq:
            return True  # an older worker: its pieces can skip numbers
        self._ask_again_after(job)
        return False

    def _ask_again_after(self, job: Job) -> None:
        """Ask a job's worker for its output after the last piece in order, unless asked already."""
        link = self.roster.links.get(job.worker_id)
        if link is None or job.asked_after == job.seq:
            return  # when it comes back, it is asked (see _reattach)
        log.info(
            "pool {pool}: pieces of {worker}'s output arrived past a gap: asked again for all after {seq}",
            pool=job.pool_id, worker=job.worker_id, seq=job.seq,
        )
        self._attach(link, job)

    def _attach(self, link: WorkerLink, job: Job) -> None:
        """Carry on with a job its worker holds: its output after the last piece the master has."""
        job.asked_after = job.seq
        link.attach_job(job.pool_id, job.seq)

    def job_ended(
        self, worker: str, pool_id: str, status: int, reason: str | None = None, seq: int | None = None
    ) -> None:
        """A job ended; C{seq}, when its worker says it, numbers its last piece of output."""
        if self.relay(worker, pool_id, "ended", {"status": status, "reason": reason, "seq": seq}):
            return
        running = self.roster.running(worker)
        job = running.get(pool_id)
        if job is None:
            link = self.roster.links.get(worker)
            if pool_id in self.history.pools or (link is not None and link.master is None):
                self._ack(worker, pool_id)  # not ours (any more): let the worker forget it
            return  # else another master's, told late: that one acks it
        if seq is not None and seq > job.seq:
            self._ask_again_after(job)  # pieces it sums up are missing: they come again with it
            return
        del running[pool_id]
        state = reason if reason in END_REASONS else (OK if status == 0 else FAILED)
        if state == END_CANCELLED:
            status = STATUS_CANCELLED
        elif state == LOST:
            status = STATUS_LOST
        elif state == TIMED_OUT:
            status = STATUS_TIMED_OUT
        self._end_job(job, status, state)
        self._ack(worker, pool_id)

    def _ack(self, worker: str, pool_id: str) -> None:
        """Tell the worker a job's end is kept, once the store holds it."""

        def ack(_: Any) -> None:
            link = self.roster.links.get(worker)
            if link is not None:
                link.ack_job(pool_id)

        self.history.stored(pool_id, hurry=False).addCallback(ack)

    def _add_output(self, job: Job, text: str, stream: str) -> None:
        pool = self.history.pools[job.pool_id]
        event = pool.event("output", output_data(job, text, stream))
        job.output.append(text, stream, event.id)
        self._announce(pool, event)
        self.history.reclaim_output()

    def _note(self, job: Job, text: str) -> None:
        """A note of pcci's in the job's output, on a line of its own."""
        self._add_output(job, on_own_line(text, job.output.last_text), "stderr")

    def _end_job(self, job: Job, status: int, state: str) -> None:
        job.end(status, state, self.wall(), self.clock.seconds())
        pool = self.history.pools[job.pool_id]
        event = pool.event("ended", job.ended_data())
        job.ended_event = event.id
        self._announce(pool, event)
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
        self._announce(pool, event)
        self.history.changed(pool)
        waiters, pool.waiters = pool.waiters, []
        for d in waiters:
            d.callback(pool)
        # Logged once those waiting have their answer.
        log.info("pool {pool} ended with status {status}", pool=pool.id, status=pool.status)
        self.history.trim()

    def _announce(self, pool: Pool, event: Event) -> None:
        pool.announce(event)
        for hook in self.event_hooks:
            hook(pool, event)

    def stop(self) -> None:
        """Cancel the pools' timers: the master is shutting down."""
        for pool in self.history.pools.values():
            pool.cancel_timers()
