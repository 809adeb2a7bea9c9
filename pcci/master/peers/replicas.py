"""
Pools shown across masters: other masters' running pools shown on this
one, each a replica built from its stored record and the events its owner
writes since (see L{pcci.master.peers.peers}), dropped once nobody follows
it; and the events of this master's own pools, written for the masters
that show them.
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet.defer import Deferred, succeed

from pcci.master.cluster.events import Event, pool_events
from pcci.master.cluster.model import Pool
from pcci.master.peers.postbox import Postbox

#: Seconds a replica nobody asked for or follows is kept.
REPLICA_IDLE = 60.0
#: Events waiting to be written, at most (the database away): past it the
#: oldest go, and other masters show those pools' output once they end.
MAX_WAITING_EVENTS = 100_000


class _Replica:
    def __init__(self, pool: Pool, asked: float) -> None:
        self.pool = pool
        self.asked = asked


class Replicas:
    """The replicas this master shows (by pool id), and its own pools' events written for the others."""

    def __init__(self, peers: Postbox) -> None:
        self.peers = peers
        self.clock = peers.clock
        self.store = peers.store
        self.shown: dict[str, _Replica] = {}
        #: Events of this master's pools waiting to be written for the others.
        self.events: list[tuple[str, int, str, dict[str, Any]]] = []
        #: Bytes of output mirrored per job: past --max-output, the rest
        #: shows elsewhere once the job ends.
        self.mirrored: dict[tuple[str, str], int] = {}
        #: No other master uses the database: nobody to show events to.
        self.alone = False

    def show(self, record: dict[str, Any]) -> Deferred[Pool]:
        """A running pool of another master, shown live: its record, then its events."""
        pool_id = record["id"]
        known = self.shown.get(pool_id)
        if known is not None:
            known.asked = self.clock.seconds()
            return succeed(known.pool)
        pool = Pool.from_record(record, self.peers.history.read_only_output)
        self.shown[pool_id] = _Replica(pool, self.clock.seconds())
        self.peers.history.elsewhere[pool_id] = pool
        if record.get("owner"):
            self.peers.mail(record["owner"], "watch", pool=pool_id)
        return self.catch_up(pool_id).addCallback(lambda _: pool)

    def catch_up(self, pool_id: str) -> Deferred[None]:
        replica = self.shown.get(pool_id)
        if replica is None:
            return succeed(None)

        def apply(events: list[tuple[int, str, dict[str, Any]]]) -> None:
            for event_id, name, body in events:
                apply_event(replica.pool, event_id, name, body)

        return self.store.shared.events_after(pool_id, replica.pool.last_event).addCallback(apply)

    def refresh(self) -> None:
        for pool_id, replica in list(self.shown.items()):
            if not replica.pool.end_event:
                self.peers.read(f"end:{pool_id}", functools.partial(self._refresh_one, pool_id))

    def _refresh_one(self, pool_id: str) -> Deferred[None]:
        """
        Read a replica's record again (its events come notified): ended,
        it replaces what the events told.
        """

        def read(record: dict[str, Any] | None) -> None:
            replica = self.shown.get(pool_id)
            if replica is None or record is None or record["ended_at"] is None:
                return
            if not replica.pool.end_event:
                _end(replica.pool, Pool.from_record(record, self.peers.history.read_only_output))

        return self.store.pools.get(pool_id).addCallback(read)

    def drop_idle(self) -> None:
        idle = self.clock.seconds() - REPLICA_IDLE
        for pool_id, replica in list(self.shown.items()):
            pool = replica.pool
            if not pool.listeners and not pool.waiters and (replica.asked < idle or pool.end_event):
                del self.shown[pool_id]
                self.peers.history.elsewhere.pop(pool_id, None)

    # This master's pools, shown on the others

    def watched(self, pool_id: str) -> None:
        """
        Another master shows this pool: write its events so far (this master
        was alone when they happened), and every event from now on.
        """
        self.alone = False
        pool = self.peers.history.pools.get(pool_id)
        if pool is None or pool.end_event:
            return
        events = list(pool_events(pool))
        # Only each job's last chunk is known to be its worker's latest.
        last = {e.data["worker"]: e.id for e in events if e.name == "output"}
        for event in events:
            worker = event.data["worker"]
            self.mirror(pool, event, pool.jobs[worker].seq if last.get(worker) == event.id else 0)

    def mirror(self, pool: Pool, event: Event, seq: int | None = None) -> None:
        """
        An event of this master's pool: written for the masters that show it
        (none while this master is alone, until one asks: see L{watched}).
        An output event carries its job's C{seq} then (or C{seq}), so that a
        master taking the pool over knows where its worker is.
        """
        replica = self.shown.get(pool.id)
        if self.alone and replica is None:
            return
        worker = event.data.get("worker", "")
        if event.name == "output":
            key = (pool.id, worker)
            size = self.mirrored.get(key, 0) + len(event.data["data"])
            self.mirrored[key] = size
            if size > self.peers.history.budgets.max_output:
                return
            job_seq = pool.jobs[worker].seq if seq is None else seq
            body: dict[str, Any] = {**event.data, "seq": job_seq}
        elif event.name in ("started", "ended"):
            job = pool.jobs[worker]
            body = {"worker": worker, "job": {k: v for k, v in job.to_record().items() if k != "output"}}
        elif event.name == "pool":
            body = {"ended_at": pool.ended_at}
            for key in [key for key in self.mirrored if key[0] == pool.id]:
                del self.mirrored[key]
        else:
            return
        self.events.append((pool.id, event.id, event.name, body))
        if len(self.events) > MAX_WAITING_EVENTS:
            del self.events[: MAX_WAITING_EVENTS // 10]
        self.peers.schedule()
        if replica is not None:  # a pool taken over while shown here
            apply_event(replica.pool, event.id, event.name, body)


def apply_event(pool: Pool, event_id: int, name: str, body: dict[str, Any]) -> None:
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
