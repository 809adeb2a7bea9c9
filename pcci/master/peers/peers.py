"""
The other masters: several masters on one PostgreSQL database, showing and
running one cluster.

Each pool has one master, its owner (the one that started it, or took it
over from a master that died); only the owner moves its jobs through their
states, so every decision about a job (its end, C{lost}) is taken once.
A worker is held by the master it is connected to.  When a pool's job
runs on a worker another master holds, the two talk through the database:

  - the owner sees the worker in its roster as a L{RemoteLink}, from the
    C{workers} table every master writes of the workers it holds; asking
    it to run, attach, acknowledge or kill a job is mail to its holder;
  - the holder passes the request to the worker, and relays the worker's
    reports of that job (started, output, ended) back to the owner as mail
    (L{Peers.forward}); the owner acknowledges an end once it stored it,
    so a master dying anywhere on the way loses nothing: the worker keeps
    the job until then.

Mail is a table (C{mail}); a C{NOTIFY} carrying only the recipient's name
wakes it.  The owner also writes each event of its pools (C{events}),
unless no other master is there to read them, so that another master
shows a running pool live: a replica, built from its stored record and
the events since (L{Peers.replica}); a master showing a pool asks its
owner to write them (C{watch}), what happened so far first.

Each master renews a lease every second and holds an advisory lock while
it lives.  One whose lock went and lease ran out is dead: one master at a
time (under a once-only lock) takes its running pools over, and carries
on with their jobs as across a restart (see
L{pcci.master.cluster.dispatch.Dispatcher.carry_on}).  A master that finds its own
lease gone was judged dead by the others (cut off from the database too
long): it stops, and its workers move to masters that can store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.master.cluster.events import Event
from pcci.master.cluster.model import Pool, WorkerLink
from pcci.master.cluster.state import ClusterState
from pcci.master.peers.listener import NotifyListener
from pcci.master.peers.replicas import REPLICA_IDLE, Replicas
from pcci.master.peers.workers import RemoteWorkers
from pcci.master.store.postgres import PostgresStore
from pcci.master.store.shared import Lease
from pcci.master.store.writer import RETRY_INTERVAL, WRITE_DELAY

log = Logger()

#: Seconds between renewals of this master's lease.
LEASE_INTERVAL = 1.0
#: Seconds past its last renewal a master without its lock counts as dead.
LEASE = 5.0
#: Seconds between writes of the figures of the workers this master holds.
FIGURES_INTERVAL = 10.0
#: Seconds between reads of the stored record of each running replica,
#: for an end its events did not tell (written before anyone showed it).
REPLICA_REFRESH = 2.0
#: Mail read at once, at most.
MAIL_BATCH = 500


@dataclass(frozen=True)
class Notices:
    """What this master does when the other masters tell it something changed."""

    #: The others judged this master dead: it stops.
    fenced: Callable[[], None] = lambda: None
    #: A master made or revoked an API token: read them again.
    tokens: Callable[[], Deferred[None]] = lambda: succeed(None)
    #: A master made, changed or removed a schedule: read them again.
    schedules: Callable[[], Deferred[None]] = lambda: succeed(None)
    #: A master moved a worker's identity (its name).
    identity: Callable[[str], None] = lambda name: None


class Peers:
    """This master among the others sharing its PostgreSQL database."""

    def __init__(self, clock: IReactorTime, store: PostgresStore, notices: Notices) -> None:
        self.clock = clock
        self.store = store
        self.notices = notices
        self.name: str | None = store.master
        #: Seconds past its last renewal a master without its lock is dead.
        self.lease = LEASE
        self.workers = RemoteWorkers(self)
        self.replicas = Replicas(self)
        self._outbox: list[tuple[str, dict[str, Any]]] = []
        self._sending = False
        self._send_call: IDelayedCall | None = None
        self._reading: dict[str, bool] = {}  # what is being read -> read again after
        self._leased_since: float | None = None
        self._loops: list[LoopingCall] = []
        self.listener: NotifyListener | None = None

    def attach(self, state: ClusterState) -> None:
        """The master's state, built with these peers."""
        self.state = state
        self.roster = state.roster
        self.history = state.history
        self.dispatcher = state.dispatcher
        self.reports = state.reports

    # What the state asks (see pcci.master.cluster.peering.IPeers)

    def worker_changed(self, name: str) -> None:
        self.workers.changed(name)

    def forward(self, worker: str, pool_id: str, kind: str, fields: dict[str, Any]) -> bool:
        return self.workers.forward(worker, pool_id, kind, fields)

    def holds(self, link: WorkerLink, pool_id: str) -> bool:
        return self.workers.holds(link, pool_id)

    def forward_upgrade(self, worker: str, state: str, reason: str) -> bool:
        return self.workers.forward_upgrade(worker, state, reason)

    def replica(self, record: dict[str, Any]) -> Deferred[Pool]:
        return self.replicas.show(record)

    def mirror(self, pool: Pool, event: Event) -> None:
        self.replicas.mirror(pool, event)

    def announce(self, url: str) -> None:
        self.store.shared.url = url  # written with the next lease

    def url_of(self, master: str) -> Deferred[str | None]:
        return self.store.shared.url_of(master)

    @property
    def alone(self) -> bool:
        """No other master uses the database: nobody to show events to."""
        return self.replicas.alone

    # Starting and stopping

    def start(self, listen: bool = True) -> None:
        """Renew the lease, write figures, and (unless told not to) listen."""
        if listen:
            self.listener = NotifyListener(self.store.url, self.clock, self.heard, self.listening)
            self.listener.start()
        for interval, work, now in (
            (LEASE_INTERVAL, self._renew, True),
            (FIGURES_INTERVAL, self.workers.write_figures, False),
            (REPLICA_IDLE / 2, self.replicas.drop_idle, False),
            (REPLICA_REFRESH, self.replicas.refresh, False),
        ):
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(interval, now=now).addErrback(
                functools.partial(_stopped, work.__name__)
            )
            self._loops.append(loop)

    def stop(self) -> Deferred[None]:
        """Cancel the timers; the workers this master holds are marked offline."""
        if self.listener is not None:
            self.listener.stop()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()
        self._send_call = None
        for name in self.roster.links:
            self.workers.changed(name, online=False)
        return self._send()

    # The listening connection

    def listening(self) -> None:
        """A new listening connection: what was notified meanwhile is lost, so read all again."""
        self.workers.version = 0
        self.heard(f"m:{self.name}")
        self.heard("w")
        self.heard("t")
        self.heard("s")
        for pool_id in self.replicas.shown:
            self.heard(f"e:{pool_id}")

    def heard(self, payload: str) -> None:
        """A notification: mail for this master, a pool's events, workers moved, tokens, schedules."""
        kind, _, what = payload.partition(":")
        if kind == "m" and what == self.name:
            self.read("mail", self._read_mail)
        elif kind == "e" and what in self.replicas.shown:
            self.read(payload, lambda: self.replicas.catch_up(what))
        elif kind == "w":
            self.read("workers", self.workers.read)
        elif kind == "t":
            self.read("tokens", self.notices.tokens)
        elif kind == "s":
            self.read("schedules", self.notices.schedules)
        elif kind == "i":
            self.notices.identity(what)

    def read(self, key: str, read: Callable[[], Deferred[Any]]) -> None:
        """Read now, or once more after the read under way."""
        if key in self._reading:
            self._reading[key] = True
            return
        self._reading[key] = False

        def done(result: Any) -> None:
            again = self._reading.pop(key)
            if again or result is True:
                self.read(key, read)

        read().addErrback(self._failed, f"reading {key}").addCallback(done)

    def _failed(self, failure: Any, what: str) -> None:
        log.error("{what} from the database failed: {why}", what=what, why=failure.getErrorMessage())

    # Mail

    def mail(self, dest: str, kind: str, **fields: Any) -> None:
        """Send another master a request or a report, in the next write."""
        self._outbox.append((dest, {"kind": kind, "from": self.name, **fields}))
        self.schedule()

    def schedule(self, delay: float = WRITE_DELAY) -> None:
        if self._send_call is None and not self._sending:
            self._send_call = self.clock.callLater(delay, self._send)

    def _send(self) -> Deferred[None]:
        self._send_call = None
        if self._sending or not (self._outbox or self.replicas.events or self.workers.rows):
            return succeed(None)
        mail, events, rows = self._outbox, self.replicas.events, self.workers.rows
        self._outbox, self.replicas.events, self.workers.rows = [], [], {}
        self._sending = True

        def sent(_: Any) -> None:
            self._sending = False
            if self._outbox or self.replicas.events or self.workers.rows:
                self.schedule()

        def failed(failure: Any) -> None:
            self._sending = False
            log.error("cannot write to the other masters: {why}; trying again",
                      why=failure.getErrorMessage())
            self._outbox[:0], self.replicas.events[:0] = mail, events
            self.workers.rows = {**rows, **self.workers.rows}
            self.schedule(RETRY_INTERVAL)

        return self.store.shared.send(mail, events, list(rows.items())).addCallbacks(sent, failed)

    def _read_mail(self) -> Deferred[bool]:
        def handle(letters: list[dict[str, Any]]) -> bool:
            for letter in letters:
                try:
                    self._handle(letter)
                except Exception:
                    log.failure("mail from master {sender}", sender=letter.get("from"))
            return len(letters) == MAIL_BATCH  # more wait

        return self.store.shared.receive(MAIL_BATCH).addCallback(handle)

    def _handle(self, letter: dict[str, Any]) -> None:
        kind, worker, pool_id = letter["kind"], letter.get("worker", ""), letter.get("pool", "")
        reports = self.reports
        # To the holder of a worker, from the owner of a pool:
        if kind in ("run", "attach", "ack", "kill"):
            self.workers.carry(letter)
        # To the owner of a pool, from the holder of a worker:
        elif kind == "started":
            reports.job_started(worker, pool_id, letter["pid"])
        elif kind == "output":
            reports.job_output(worker, pool_id, letter["data"], letter["stream"], letter["seq"], letter.get("first"))
        elif kind == "ended":
            reports.job_ended(worker, pool_id, letter["status"], letter["reason"], letter.get("seq"))
        elif kind == "gone":
            reports.job_gone(worker, pool_id, letter.get("of") == "run")
        elif kind == "watch":
            self.replicas.watched(pool_id)
        # Upgrades: to the holder of a worker, from a master's rollout; and back.
        elif kind == "upgrade":
            self.workers.upgrade(letter)
        elif kind == "upgrade_status":
            self.state.upgrades.status(worker, letter["state"], letter["reason"])
        elif kind == "facts_refresh":
            self.workers.refresh_facts(letter)
        elif kind == "kill_pool" and pool_id in self.history.pools:
            self.dispatcher.kill(pool_id, letter["workers"])

    def kill_elsewhere(self, pool: Pool, workers: list[str] | None) -> Deferred[list[str]]:
        """
        Ask the master running a pool shown here to kill it (or the jobs of
        C{workers}); fires with the workers asked, as far as this master
        can tell.

        @raise LookupError: (in the Deferred) no master alive runs it just
            now: its master died, and its pool is not yet taken over.
        """
        letter = {"kind": "kill_pool", "from": self.name, "pool": pool.id, "workers": workers}

        def sent(owner: str | None) -> list[str]:
            if owner is None:
                raise LookupError(f"pool {pool.id} has no live master just now")
            names = list(pool.jobs) if workers is None else workers
            return [name for name in names if pool.jobs[name].status is None]

        return self.store.shared.mail_owner(pool.id, letter, self.lease).addCallback(sent)

    # The lease

    def _renew(self) -> None:
        now = self.clock.seconds()
        judge = self._leased_since is not None and now - self._leased_since >= 2 * self.lease

        def renewed(result: Lease) -> None:
            kept, others, claimed, rollouts = result
            if not kept:
                log.critical(
                    "the other masters judged this one dead (cut off from the database"
                    " for more than {lease:g} s): stopping, so its workers move", lease=self.lease,
                )
                self.notices.fenced()
                return
            if self._leased_since is None:
                self._leased_since = now
            self.replicas.alone = not others
            if claimed:
                log.info("took over {count} pools of masters gone", count=len(claimed))
                for record, _ in claimed:
                    # Streams that follow its replica here carry on: this
                    # master's own events of it go there too (see _mirror).
                    self.history.elsewhere.pop(record["id"], None)
                events = {record["id"]: events for record, events in claimed}
                self.reports.carry_on(
                    [record for record, _ in claimed],
                    lambda pool: _resume(pool, events[pool.id]),
                )
            if rollouts:
                log.info("took over {count} workers' upgrades of masters gone", count=len(rollouts))
                self.state.upgrades.resume(rollouts)

        def failed(failure: Any) -> None:
            if self._leased_since is not None:
                log.error("cannot renew this master's lease: {why}", why=failure.getErrorMessage())
            self._leased_since = None

        self.store.shared.lease(self.lease, judge).addCallbacks(renewed, failed)


def _stopped(name: str, failure: Failure) -> None:
    log.failure("peers' {name} stopped", failure, name=name)


def _resume(pool: Pool, events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """
    A pool taken over from a master that died: its running jobs' output so
    far, from the events that master wrote, so that each job carries on
    after the last chunk written rather than from its start.
    """
    chunks: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for event_id, name, body in events:
        if name == "output" and event_id > 0:
            chunks.setdefault(body["worker"], []).append((event_id, body))
    for worker, written in chunks.items():
        job = pool.jobs.get(worker)
        seq = max(body.get("seq", 0) for _, body in written)
        if job is None or job.status is not None or job.output.size or not seq:
            continue
        for event_id, body in written:
            job.output.append(body["data"], body["stream"], event_id)
        job.seq = seq
