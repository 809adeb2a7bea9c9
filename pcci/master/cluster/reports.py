"""
What workers report of their jobs (started, output, ended), and jobs
carried on across a worker's reconnection, a master's restart and
another master's death: matched with what the master thinks runs, and
asked again for what went missing.  The jobs end through the
L{Dispatcher}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from pcci.master.cluster import rollouts
from pcci.master.cluster.dispatch import Dispatcher
from pcci.master.cluster.model import (
    FAILED,
    LOST,
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
from pcci.master.cluster.peering import IPeers
from pcci.wire import END_CANCELLED, END_REASONS, STATUS_TIMED_OUT

log = Logger()


class JobReports:
    """The workers' side of the dispatcher: their reports, their coming and going."""

    def __init__(self, dispatcher: Dispatcher, peers: IPeers) -> None:
        self.dispatcher = dispatcher
        self.peers = peers
        self.clock = dispatcher.clock
        self.wall = dispatcher.wall
        self.roster = dispatcher.roster
        self.history = dispatcher.history

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
            self.dispatcher.expect(pool)
            for job in pool.jobs.values():
                link = self.roster.links.get(job.worker_id)
                if job.state == WAITING and link is not None:  # connected to another master already
                    self.dispatcher.arrived(link)
            self._adopt_in_flight(pool)
            if pool.waiting and not pool.halted:
                # Its workers have to come back first.
                pool.timers.append(self.clock.callLater(
                    self.roster.reconnect_grace, lambda p=pool: self.dispatcher.send(p, rollouts.slots(p))
                ))
        return len(records)

    def _adopt_in_flight(self, pool: Pool) -> None:
        """
        A pool this master did not start (it was running when this master
        started, or another master ran it): carry on with its jobs sent and
        not ended, on their workers connected (here or to another master);
        the others wait the grace for theirs.
        """
        for job in pool.jobs.values():
            if not job.sent or job.status is not None:
                continue
            running = self.roster.running(job.worker_id)
            if running.get(pool.id) is job:
                continue  # carried on already
            link = self.roster.links.get(job.worker_id)
            if link is None:
                self.roster.adopt(job)
            elif link.master is not None or self.peers.holds(link, pool.id):
                running[pool.id] = job
                self._attach(link, job)  # its holder says if it is gone
            elif self._ask_again(link, job):
                running[pool.id] = job
            else:
                self.dispatcher.note(job, "pcci: job lost: its worker does not hold it\n")
                self.dispatcher.end_job(job, STATUS_LOST, LOST)

    # Workers coming and going

    def reattach(self, link: WorkerLink) -> None:
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
            self.dispatcher.arrived(link)
            return
        held = {job["pool"]: job for job in link.held_jobs}
        for pool_id, job in list(running.items()):
            if pool_id in held:
                self._attach(link, job)
            elif not self._ask_again(link, job):
                del running[pool_id]
                self.dispatcher.note(job, "pcci: job lost: its worker came back without it (restarted?)\n")
                self.dispatcher.end_job(job, STATUS_LOST, LOST)
        for pool_id, report in held.items():
            if pool_id not in running:
                self.history.unfinished_job(pool_id, link.name).addCallback(
                    self._take_over, link, pool_id, bool(report.get("ended"))
                )
        self.dispatcher.arrived(link)

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
        self.dispatcher.note(job, f"pcci: {why}\n")
        self.dispatcher.end_job(job, 1, FAILED)

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
        self.dispatcher.note(job, "pcci: job lost: its worker no longer holds it\n")
        self.dispatcher.end_job(job, STATUS_LOST, LOST)

    def give_up(self, jobs: list[Job], reason: str) -> None:
        """A worker did not come back within the grace: its jobs are lost."""
        for job in jobs:
            self.dispatcher.note(job, f"pcci: job lost: worker {reason}\n")
            self.dispatcher.end_job(job, STATUS_LOST, LOST)

    # Reports from workers

    def job_started(self, worker: str, pool_id: str, pid: int | None) -> None:
        if self.peers.forward(worker, pool_id, "started", {"pid": pid}):
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
            self.dispatcher.announce(pool, event)
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
        if self.peers.forward(worker, pool_id, "output", fields):
            return
        job = self.roster.running(worker).get(pool_id)
        if job is None:
            return
        if seq is not None:
            if not self._in_order(job, seq if first is None else first, seq):
                return
            job.seq = max(job.seq, seq)
        self.dispatcher.add_output(job, data, stream)

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
        if self.peers.forward(worker, pool_id, "ended", {"status": status, "reason": reason, "seq": seq}):
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
        self.dispatcher.end_job(job, status, state)
        self._ack(worker, pool_id)

    def _ack(self, worker: str, pool_id: str) -> None:
        """Tell the worker a job's end is kept, once the store holds it."""

        def ack(_: Any) -> None:
            link = self.roster.links.get(worker)
            if link is not None:
                link.ack_job(pool_id)

        self.history.stored(pool_id, hurry=False).addCallback(ack)
