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
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.master.cluster.events import Event, pool_events
from pcci.master.cluster.model import Pool, WorkerLink
from pcci.master.cluster.state import ClusterState
from pcci.master.peers.listener import NotifyListener
from pcci.master.store.postgres import PostgresStore
from pcci.master.store.writer import RETRY_INTERVAL, WRITE_DELAY

log = Logger()

#: Seconds between renewals of this master's lease.
LEASE_INTERVAL = 1.0
#: Seconds past its last renewal a master without its lock counts as dead.
LEASE = 5.0
#: Seconds between writes of the figures of the workers this master holds.
FIGURES_INTERVAL = 10.0
#: Seconds a replica nobody asked for or follows is kept.
REPLICA_IDLE = 60.0
#: Seconds between reads of the stored record of each running replica,
#: for an end its events did not tell (written before anyone showed it).
REPLICA_REFRESH = 2.0
#: Mail read at once, at most.
MAIL_BATCH = 500
#: Versions of the workers table read again, for writes committed out of order.
WORKERS_LOOKBACK = 100
#: Events waiting to be written, at most (the database away): past it the
#: oldest go, and other masters show those pools' output once they end.
MAX_WAITING_EVENTS = 100_000


class RemoteLink:
    """
    A worker another master holds, as this master's roster sees it: what
    this master asks of it goes to its holder by mail.
    """

    def __init__(self, peers: Peers, name: str, master: str, row: dict[str, Any]) -> None:
        self.peers = peers
        self.name = name
        #: The master holding it.
        self.master = master
        self.address = row["address"]
        self.connected_at = row["connected_at"]
        self.heartbeat = row["heartbeat"]
        self.labels = dict(row["labels"])
        self.remembers_jobs = bool(row.get("remembers_jobs"))
        self.contiguous_seq = bool(row.get("contiguous_seq"))
        self.auth = str(row.get("auth", ""))
        self.pcci_version = str(row.get("pcci_version", ""))
        self.python_version = str(row.get("python_version", ""))
        #: Upgraded by the master holding it, not by this one.
        self.upgrades = False
        self.held_jobs: list[dict[str, Any]] = []

    def run_job(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None:
        self.peers.mail(self.master, "run", worker=self.name, pool=pool_id, cmd=cmd, options=options)

    def attach_job(self, pool_id: str, after: int) -> None:
        self.peers.mail(self.master, "attach", worker=self.name, pool=pool_id, after=after)

    def ack_job(self, pool_id: str) -> None:
        self.peers.mail(self.master, "ack", worker=self.name, pool=pool_id)

    def kill_job(self, pool_id: str) -> None:
        self.peers.mail(self.master, "kill", worker=self.name, pool=pool_id)

    def dismiss(self, reason: str) -> None:
        """Another master's connection: not this one's to close."""

    def revoke(self, reason: str) -> None:
        """Another master's connection: it closes it, told by the store (C{i:<name>})."""

    def upgrade(self, order: dict[str, Any]) -> None:
        """Another master's connection: a rollout there upgrades it."""


class Peers:
    """This master among the others sharing its PostgreSQL database."""

    def __init__(self, clock: IReactorTime, store: PostgresStore, state: ClusterState) -> None:
        self.clock = clock
        self.store = store
        self.state = state
        self.name = store.master
        #: Seconds past its last renewal a master without its lock is dead.
        self.lease = LEASE
        self.roster = state.roster
        self.history = state.history
        self.dispatcher = state.dispatcher
        #: Jobs of other masters' pools this master carries for them, on
        #: workers it holds: (worker, pool) -> the pool's owner.
        self.relays: dict[tuple[str, str], str] = {}
        #: Running pools of other masters shown here, by id.
        self.replicas: dict[str, _Replica] = {}
        #: Called when another master judged this one dead.
        self.on_fenced: Callable[[], None] = lambda: None
        #: Reads the API tokens again: a master made or revoked one.
        self.on_tokens: Callable[[], Deferred[None]] = lambda: succeed(None)
        #: Called with the name of a worker whose identity another master moved.
        self.on_identity: Callable[[str], None] = lambda name: None
        #: Reads the schedules again: a master made, changed or removed one.
        self.on_schedules: Callable[[], Deferred[None]] = lambda: succeed(None)
        self._outbox: list[tuple[str, dict[str, Any]]] = []
        self._events: list[tuple[str, int, str, dict[str, Any]]] = []
        self._rows: dict[str, dict[str, Any] | None] = {}
        self._sending = False
        self._send_call: IDelayedCall | None = None
        #: Bytes of output mirrored per job: past --max-output, the rest
        #: shows elsewhere once the job ends.
        self._mirrored: dict[tuple[str, str], int] = {}
        self._reading: dict[str, bool] = {}  # what is being read -> read again after
        self._version = 0
        self._leased_since: float | None = None
        self._loops: list[LoopingCall] = []
        self.listener: NotifyListener | None = None
        #: No other master uses the database: nobody to show events to.
        self.alone = False
        state.peers = self
        self.roster.name = self.name
        self.roster.on_change = self._worker_changed
        self.dispatcher.relay = self.forward
        self.dispatcher.holds = self.holds
        self.dispatcher.event_hooks.append(self._mirror)
        self.history.replicate = self.replica

    # Starting and stopping

    def start(self, listen: bool = True) -> None:
        """Renew the lease, write figures, and (unless told not to) listen."""
        if listen:
            self.listener = NotifyListener(self.store.url, self.clock, self.heard, self.listening)
            self.listener.start()
        for interval, work, now in (
            (LEASE_INTERVAL, self._renew, True),
            (FIGURES_INTERVAL, self._write_figures, False),
            (REPLICA_IDLE / 2, self._drop_idle_replicas, False),
            (REPLICA_REFRESH, self._refresh_replicas, False),
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
            self._worker_changed(name, online=False)
        return self._send()

    # The listening connection

    def listening(self) -> None:
        """A new listening connection: what was notified meanwhile is lost, so read all again."""
        self._version = 0
        self.heard(f"m:{self.name}")
        self.heard("w")
        self.heard("t")
        self.heard("s")
        for pool_id in self.replicas:
            self.heard(f"e:{pool_id}")

    def heard(self, payload: str) -> None:
        """A notification: mail for this master, a pool's events, workers moved, tokens, schedules."""
        kind, _, what = payload.partition(":")
        if kind == "m" and what == self.name:
            self._read("mail", self._read_mail)
        elif kind == "e" and what in self.replicas:
            self._read(payload, lambda: self._catch_up(what))
        elif kind == "w":
            self._read("workers", self._read_workers)
        elif kind == "t":
            self._read("tokens", self.on_tokens)
        elif kind == "s":
            self._read("schedules", self.on_schedules)
        elif kind == "i":
            self.on_identity(what)

    def _read(self, key: str, read: Callable[[], Deferred[Any]]) -> None:
        """Read now, or once more after the read under way."""
        if key in self._reading:
            self._reading[key] = True
            return
        self._reading[key] = False

        def done(result: Any) -> None:
            again = self._reading.pop(key)
            if again or result is True:
                self._read(key, read)

        read().addErrback(self._failed, f"reading {key}").addCallback(done)

    def _failed(self, failure: Any, what: str) -> None:
        log.error("{what} from the database failed: {why}", what=what, why=failure.getErrorMessage())

    # Mail

    def mail(self, dest: str, kind: str, **fields: Any) -> None:
        """Send another master a request or a report, in the next write."""
        self._outbox.append((dest, {"kind": kind, "from": self.name, **fields}))
        self._schedule()

    def _schedule(self, delay: float = WRITE_DELAY) -> None:
        if self._send_call is None and not self._sending:
            self._send_call = self.clock.callLater(delay, self._send)

    def _send(self) -> Deferred[None]:
        self._send_call = None
        if self._sending or not (self._outbox or self._events or self._rows):
            return succeed(None)
        mail, events, rows = self._outbox, self._events, self._rows
        self._outbox, self._events, self._rows = [], [], {}
        self._sending = True

        def sent(_: Any) -> None:
            self._sending = False
            if self._outbox or self._events or self._rows:
                self._schedule()

        def failed(failure: Any) -> None:
            self._sending = False
            log.error("cannot write to the other masters: {why}; trying again",
                      why=failure.getErrorMessage())
            self._outbox[:0], self._events[:0] = mail, events
            self._rows = {**rows, **self._rows}
            self._schedule(RETRY_INTERVAL)

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
        kind, sender = letter["kind"], letter["from"]
        worker, pool_id = letter.get("worker", ""), letter["pool"]
        dispatcher = self.dispatcher
        # To the holder of a worker, from the owner of a pool:
        if kind in ("run", "attach", "ack", "kill"):
            found = self.roster.links.get(worker)
            link = found if found is not None and found.master is None else None
            if kind == "ack":
                self.relays.pop((worker, pool_id), None)
                if link is not None:
                    link.ack_job(pool_id)
            elif kind == "kill":
                if link is not None:
                    link.kill_job(pool_id)
            elif link is None or (kind == "attach" and not self.holds(link, pool_id)):
                self.mail(sender, "gone", worker=worker, pool=pool_id, of=kind)
            else:
                self.relays[(worker, pool_id)] = sender
                if kind == "run":
                    link.run_job(pool_id, letter["cmd"], letter["options"])
                else:
                    link.attach_job(pool_id, letter["after"])
        # To the owner of a pool, from the holder of a worker:
        elif kind == "started":
            dispatcher.job_started(worker, pool_id, letter["pid"])
        elif kind == "output":
            dispatcher.job_output(
                worker, pool_id, letter["data"], letter["stream"], letter["seq"], letter.get("first")
            )
        elif kind == "ended":
            dispatcher.job_ended(worker, pool_id, letter["status"], letter["reason"], letter.get("seq"))
        elif kind == "gone":
            dispatcher.job_gone(worker, pool_id, letter.get("of") == "run")
        elif kind == "watch":
            self._watched(pool_id)
        elif kind == "kill_pool" and pool_id in self.history.pools:
            dispatcher.kill(pool_id, letter["workers"])

    def forward(self, worker: str, pool_id: str, kind: str, fields: dict[str, Any]) -> bool:
        """
        A worker's report of a job this master carries for another: relay
        it to the pool's owner.  False for a job of this master's own.
        """
        owner = self.relays.get((worker, pool_id))
        if owner is None:
            return False
        if pool_id in self.history.pools:  # this master took the pool over
            del self.relays[(worker, pool_id)]
            return False
        self.mail(owner, kind, worker=worker, pool=pool_id, **fields)
        return True

    def holds(self, link: WorkerLink, pool_id: str) -> bool:
        """Whether the worker, connected here, holds a job of that pool."""
        return (link.name, pool_id) in self.relays or any(
            job["pool"] == pool_id for job in link.held_jobs
        )

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

    # Workers

    def _worker_changed(self, name: str, online: bool | None = None) -> None:
        """A worker connected here joined, left or was forgotten: write its row."""
        record = self.roster.records.get(name)
        if record is None:
            self._rows[name] = None
        else:
            link = self.roster.links.get(name)
            self._rows[name] = {
                "address": record.address,
                "connected_at": record.connected_at,
                "heartbeat": record.heartbeat,
                "labels": record.labels,
                "figures": record.figures,
                "last_seen": record.last_seen,
                "online": record.online if online is None else online,
                "jobs_running": self.roster.running_jobs(name)
                + sum(1 for (w, _) in self.relays if w == name),
                "remembers_jobs": bool(getattr(link, "remembers_jobs", False)),
                "contiguous_seq": bool(getattr(link, "contiguous_seq", False)),
                "auth": record.auth,
                "left": record.left,
                "pcci_version": record.pcci_version,
                "python_version": record.python_version,
            }
            if link is None:  # its connection is gone: so are the jobs carried on it
                for key in [key for key in self.relays if key[0] == name]:
                    del self.relays[key]
        self._schedule()

    def _write_figures(self) -> None:
        for name, link in self.roster.links.items():
            if link.master is None:
                self._worker_changed(name)

    def _read_workers(self) -> Deferred[None]:
        since = max(0, self._version - WORKERS_LOOKBACK)
        return self.store.shared.workers(since).addCallback(self._workers_read)

    def _workers_read(self, rows: list[tuple[str, str, dict[str, Any], int]]) -> None:
        for name, master, row, version in rows:
            self._version = max(self._version, version)
            if master == self.name:
                continue
            link = self.roster.links.get(name)
            if link is not None and link.master is None:
                continue  # connected here: this master's own row wins
            if row["online"]:
                current = link is not None and link.master == master
                if not current or getattr(link, "connected_at", None) != row["connected_at"]:
                    self.roster.join(RemoteLink(self, name, master, row))
                record = self.roster.records[name]
                record.jobs_elsewhere = row["jobs_running"]
                if row["figures"] and row["last_seen"] != record.last_seen:
                    self.roster.heartbeat(name, row["figures"])
            elif link is not None and link.master == master:
                why = row.get("left")
                self.roster.leave(link, f"left master {master}" + (f": {why}" if why else ""))

    # Replicas of other masters' running pools

    def replica(self, record: dict[str, Any]) -> Deferred[Pool]:
        """A running pool of another master, shown live: its record, then its events."""
        pool_id = record["id"]
        known = self.replicas.get(pool_id)
        if known is not None:
            known.asked = self.clock.seconds()
            return succeed(known.pool)
        pool = Pool.from_record(record, self.history.read_only_output)
        self.replicas[pool_id] = _Replica(pool, self.clock.seconds())
        self.history.elsewhere[pool_id] = pool
        if record.get("owner"):
            self.mail(record["owner"], "watch", pool=pool_id)
        return self._catch_up(pool_id).addCallback(lambda _: pool)

    def _catch_up(self, pool_id: str) -> Deferred[None]:
        replica = self.replicas.get(pool_id)
        if replica is None:
            return succeed(None)

        def apply(events: list[tuple[int, str, dict[str, Any]]]) -> None:
            for event_id, name, body in events:
                _apply(replica.pool, event_id, name, body)

        return self.store.shared.events_after(pool_id, replica.pool.last_event).addCallback(apply)

    def _watched(self, pool_id: str) -> None:
        """
        Another master shows this pool: write its events so far (this master
        was alone when they happened), and every event from now on.
        """
        self.alone = False
        pool = self.history.pools.get(pool_id)
        if pool is None or pool.end_event:
            return
        events = list(pool_events(pool))
        # Only each job's last chunk is known to be its worker's latest.
        last = {e.data["worker"]: e.id for e in events if e.name == "output"}
        for event in events:
            worker = event.data["worker"]
            self._mirror(pool, event, pool.jobs[worker].seq if last.get(worker) == event.id else 0)

    def _refresh_replicas(self) -> None:
        for pool_id, replica in list(self.replicas.items()):
            if not replica.pool.end_event:
                self._read(f"end:{pool_id}", functools.partial(self._refresh, pool_id))

    def _refresh(self, pool_id: str) -> Deferred[None]:
        """
        Read a replica's record again (its events come notified): ended,
        it replaces what the events told.
        """

        def read(record: dict[str, Any] | None) -> None:
            replica = self.replicas.get(pool_id)
            if replica is None or record is None or record["ended_at"] is None:
                return
            if not replica.pool.end_event:
                _end(replica.pool, Pool.from_record(record, self.history.read_only_output))

        return self.store.pools.get(pool_id).addCallback(read)

    def _drop_idle_replicas(self) -> None:
        idle = self.clock.seconds() - REPLICA_IDLE
        for pool_id, replica in list(self.replicas.items()):
            pool = replica.pool
            if not pool.listeners and not pool.waiters and (replica.asked < idle or pool.end_event):
                del self.replicas[pool_id]
                self.history.elsewhere.pop(pool_id, None)

    def _mirror(self, pool: Pool, event: Event, seq: int | None = None) -> None:
        """
        An event of this master's pool: written for the masters that show it
        (none while this master is alone, until one asks: see L{_watched}).
        An output event carries its job's C{seq} then (or C{seq}), so that a
        master taking the pool over knows where its worker is.
        """
        replica = self.replicas.get(pool.id)
        if self.alone and replica is None:
            return
        worker = event.data.get("worker", "")
        if event.name == "output":
            key = (pool.id, worker)
            size = self._mirrored.get(key, 0) + len(event.data["data"])
            self._mirrored[key] = size
            if size > self.history.max_output:
                return
            job_seq = pool.jobs[worker].seq if seq is None else seq
            body: dict[str, Any] = {**event.data, "seq": job_seq}
        elif event.name in ("started", "ended"):
            job = pool.jobs[worker]
            body = {"worker": worker, "job": {k: v for k, v in job.to_record().items() if k != "output"}}
        elif event.name == "pool":
            body = {"ended_at": pool.ended_at}
            for key in [key for key in self._mirrored if key[0] == pool.id]:
                del self._mirrored[key]
        else:
            return
        self._events.append((pool.id, event.id, event.name, body))
        if len(self._events) > MAX_WAITING_EVENTS:
            del self._events[: MAX_WAITING_EVENTS // 10]
        self._schedule()
        if replica is not None:  # a pool taken over while shown here
            _apply(replica.pool, event.id, event.name, body)

    # The lease

    def _renew(self) -> None:
        now = self.clock.seconds()
        judge = self._leased_since is not None and now - self._leased_since >= 2 * self.lease

        def renewed(result: tuple[bool, int, list[tuple[dict[str, Any], list[Any]]]]) -> None:
            kept, others, claimed = result
            if not kept:
                log.critical(
                    "the other masters judged this one dead (cut off from the database"
                    " for more than {lease:g} s): stopping, so its workers move", lease=self.lease,
                )
                self.on_fenced()
                return
            if self._leased_since is None:
                self._leased_since = now
            self.alone = not others
            if claimed:
                log.info("took over {count} pools of masters gone", count=len(claimed))
                for record, _ in claimed:
                    # Streams that follow its replica here carry on: this
                    # master's own events of it go there too (see _mirror).
                    self.history.elsewhere.pop(record["id"], None)
                events = {record["id"]: events for record, events in claimed}
                self.dispatcher.carry_on(
                    [record for record, _ in claimed],
                    lambda pool: _resume(pool, events[pool.id]),
                )

        def failed(failure: Any) -> None:
            if self._leased_since is not None:
                log.error("cannot renew this master's lease: {why}", why=failure.getErrorMessage())
            self._leased_since = None

        self.store.shared.lease(self.lease, judge).addCallbacks(renewed, failed)


class _Replica:
    def __init__(self, pool: Pool, asked: float) -> None:
        self.pool = pool
        self.asked = asked


def _stopped(name: str, failure: Failure) -> None:
    log.failure("peers' {name} stopped", failure, name=name)


def _apply(pool: Pool, event_id: int, name: str, body: dict[str, Any]) -> None:
    """One event of another master's pool, on its replica here."""
    if event_id <= pool.last_event:
        return
    pool.last_event = event_id
    if name == "pool":
        pool.ended_at = body["ended_at"]
        pool.end_event = event_id
        _ended(pool)
        return
    else:
        job = pool.jobs.get(body["worker"])
        if job is None:
            return
        if name == "output":
            job.seq = max(job.seq, body.get("seq", 0))
            job.output.append(body["data"], body["stream"], event_id)
            data: dict[str, Any] = {key: body[key] for key in ("worker", "stream", "data")}
        else:
            for key, value in body["job"].items():
                setattr(job, key, value)
            data = job.started_data() if name == "started" else job.ended_data()
    pool.announce(Event(event_id, name, data))


def _end(pool: Pool, final: Pool) -> None:
    """A replica's pool ended as C{final}, read from the store: its jobs become those."""
    pool.jobs.update(final.jobs)
    pool.ended_at, pool.end_event = final.ended_at, final.end_event
    pool.last_event = max(pool.last_event, final.last_event)
    _ended(pool)


def _ended(pool: Pool) -> None:
    pool.announce(Event(pool.end_event, "pool", {}))
    waiters, pool.waiters = pool.waiters, []
    for d in waiters:
        d.callback(pool)


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
