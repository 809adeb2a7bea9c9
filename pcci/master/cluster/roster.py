"""
The roster: which workers are connected, what each one runs, and the
timers that wait for those that left.

A worker that leaves keeps its running jobs for C{reconnect_grace}
seconds: it may come back (a master restart, a network blip) and carry
on with them.  Past the grace, the roster hands them to whoever ends them
(L{Roster.on_give_up}).  A worker offline for C{forget_after} is
forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.master.cluster.factindex import FactIndex
from pcci.master.cluster.health import HealthHistory, clean_figures
from pcci.master.cluster.model import Job, WorkerLink, WorkerRecord
from pcci.master.cluster.peering import IPeers

log = Logger()
audit = Logger(namespace="pcci.audit")

DEFAULT_HISTORY = 3600.0
DEFAULT_FORGET_AFTER = 7 * 24 * 3600.0
DEFAULT_RECONNECT_GRACE = 30.0

#: Most heartbeats kept per worker, whatever its interval: 3,600 rows of
#: twelve doubles are 340 KiB.
MAX_HISTORY_ROWS = 3600


class Roster:
    """Workers by name: their links, records, running jobs and grace timers."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        peers: IPeers,
        history: float = DEFAULT_HISTORY,
        forget_after: float = DEFAULT_FORGET_AFTER,
        reconnect_grace: float = DEFAULT_RECONNECT_GRACE,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.history = history
        self.forget_after = forget_after
        #: Seconds a disconnected worker's jobs wait for it to come back.
        self.reconnect_grace = reconnect_grace
        #: The connected workers, by name.
        self.links: dict[str, WorkerLink] = {}
        #: Every worker seen and not yet forgotten, by name.
        self.records: dict[str, WorkerRecord] = {}
        #: The other masters on this master's store, told of its workers.
        self.peers = peers
        #: Called with each worker that joined, once it is listed.
        self.on_join: Callable[[WorkerLink], None] = lambda link: None
        #: Called after C{on_join}, each with each worker that joined.
        self.join_hooks: list[Callable[[WorkerLink], None]] = []
        #: Called with the jobs of a worker that did not come back in time,
        #: and why it left.
        self.on_give_up: Callable[[list[Job], str], None] = lambda jobs, reason: None
        #: Called with each worker's facts as it tells them, and when (the store keeps them).
        self.facts_hooks: list[Callable[[str, float, dict[str, Any]], None]] = []
        #: The facts each worker last told, and when, kept while its record comes and goes.
        self.known_facts: dict[str, tuple[float, dict[str, Any]]] = {}
        #: Every known worker's facts and labels by value, for queries.
        self.index = FactIndex(lambda: self.records, self._document)
        self._running: dict[str, dict[str, Job]] = {}
        self._forgets: dict[str, IDelayedCall] = {}
        self._graces: dict[str, IDelayedCall] = {}

    def join(self, link: WorkerLink) -> None:
        """Register a worker; a connection under a connected name replaces it."""
        old = self.links.get(link.name)
        if old is not None and old is not link:
            # The same worker back before its old connection was seen to
            # close, or another machine holding the cluster secret: the
            # audit log names both, and the old one may come back.
            audit.warn(
                "worker {name} connected from {new} while connected from {old}:"
                " the connection from {old} is replaced",
                name=link.name,
                new=link.address,
                old=old.address,
            )
            self.leave(old, f"replaced by a new connection from {link.address}")
            old.dismiss(f"another worker connected as {link.name!r} from {link.address}")
        self.links[link.name] = link
        self._running.setdefault(link.name, {})
        for call in (self._forgets.pop(link.name, None), self._graces.pop(link.name, None)):
            _cancel(call)
        now = self.wall()
        record = self.records.get(link.name)
        if record is None or record.heartbeat != link.heartbeat:
            size = min(MAX_HISTORY_ROWS, int(self.history // link.heartbeat) + 1)
            record = WorkerRecord(link.name, link.address, now, link.heartbeat, HealthHistory(size))
            self.records[link.name] = record
        record.address, record.connected_at = link.address, now
        record.labels = dict(link.labels)
        record.auth = link.auth
        record.pcci_version, record.python_version = link.pcci_version, link.python_version
        if record.facts_at is None and link.name in self.known_facts:
            record.facts_at, record.facts = self.known_facts[link.name]
        record.online, record.last_seen = True, now
        self.index.changed(link.name)
        record.master, record.jobs_elsewhere = link.master or self.peers.name, None
        if link.master is None:
            log.info("worker {name} joined from {peer}", name=link.name, peer=link.address)
            self.peers.worker_changed(link.name)
        else:
            log.info("worker {name} joined master {master}", name=link.name, master=link.master)
        self.on_join(link)
        for hook in self.join_hooks:
            hook(link)

    def leave(self, link: WorkerLink, reason: str) -> None:
        """A worker's connection is gone: its running jobs wait the grace for it."""
        if self.links.get(link.name) is not link:
            return
        del self.links[link.name]
        self.records[link.name].online = False
        self.records[link.name].left = reason
        self._forgets[link.name] = self.clock.callLater(
            self.forget_after, self._forget, link.name
        )
        log.info("worker {name} left: {reason}", name=link.name, reason=reason)
        if link.master is None:
            self.peers.worker_changed(link.name)
        self._wait_for(link.name, reason)

    def revoke(self, name: str, reason: str) -> None:
        """
        A worker's identity was revoked or denied: its connection here goes,
        and its running jobs end lost at once (it may not come back for
        them).  One another master holds is that master's to close.
        """
        link = self.links.get(name)
        if link is not None:
            if link.master is not None:
                return
            self.leave(link, reason)
            link.revoke(reason)
        _cancel(self._graces.pop(name, None))
        self._give_up_on(name, reason)

    def _wait_for(self, name: str, reason: str) -> None:
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
        jobs = list(self._running.pop(name, {}).values())
        if jobs:
            self.on_give_up(jobs, reason)

    def _forget(self, name: str) -> None:
        """An offline worker unseen for C{forget_after}: its record goes."""
        del self._forgets[name]
        record = self.records.pop(name, None)
        self.index.changed(name)
        if record is not None and record.master == self.peers.name:
            self.peers.worker_changed(name)
        log.info("forgot worker {name}: offline since long", name=name)

    # What each worker runs

    def running(self, name: str) -> dict[str, Job]:
        """The jobs sent to worker C{name} and not ended, by pool id (a live map)."""
        return self._running.setdefault(name, {})

    def running_jobs(self, name: str) -> int:
        return len(self._running.get(name, ()))

    def adopt(self, job: Job) -> None:
        """A job that runs on its worker since before this master started."""
        self.running(job.worker_id)[job.pool_id] = job
        if job.worker_id not in self.links:
            self._wait_for(
                job.worker_id,
                f"did not come back within {self.reconnect_grace:g} s of the master's start",
            )

    # Figures

    def online_labels(self) -> dict[str, dict[str, str]]:
        """The connected workers, each with its labels."""
        return {name: link.labels for name, link in self.links.items()}

    def known_labels(self) -> dict[str, dict[str, str]]:
        """Every worker known, online or not, each with its labels."""
        return {name: record.labels for name, record in self.records.items()}

    def set_facts(self, name: str, facts: dict[str, Any], at: float | None = None) -> None:
        """Keep what a worker told of its machine (the store, and the other masters, are told too)."""
        record = self.records.get(name)
        if record is None:
            return
        told = at is None
        record.facts, record.facts_at = facts, self.wall() if at is None else at
        self.known_facts[name] = (record.facts_at, facts)
        self.index.changed(name)
        if told and record.master == self.peers.name:
            self.peers.worker_changed(name)
        if told:
            for hook in self.facts_hooks:
                hook(name, record.facts_at, facts)

    def remember_facts(self, known: dict[str, tuple[float, dict[str, Any]]]) -> None:
        """Facts kept from before this master started: each worker's until it tells them anew."""
        for name, told in known.items():
            self.known_facts.setdefault(name, told)
            record = self.records.get(name)
            if record is not None and record.facts_at is None:
                record.facts_at, record.facts = told
                self.index.changed(name)

    def _document(self, name: str) -> Mapping[str, Any] | None:
        record = self.records.get(name)
        return None if record is None else record.document()

    def heartbeat(self, name: str, figures: dict[str, Any]) -> None:
        """Keep a worker's latest figures, and add them to its history."""
        record = self.records.get(name)
        if record is None or not record.online:
            return
        now = self.wall()
        record.figures = clean_figures(figures)
        record.last_seen = now
        record.history.add(now, record.figures)

    def stop(self) -> None:
        """Cancel every timer: the master is shutting down."""
        for call in (*self._forgets.values(), *self._graces.values()):
            _cancel(call)
        self._forgets.clear()
        self._graces.clear()


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()
