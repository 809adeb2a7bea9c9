"""
Workers across masters: the rows this master writes of the workers it
holds, the others' workers as L{RemoteLink}s in its roster, and the jobs
of other masters' pools it carries on the workers it holds (relayed both
ways by mail; see L{pcci.master.peers.peers}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.cluster.model import WorkerLink
from pcci.master.cluster.upgrades import UNDER_WAY
from pcci.master.peers.postbox import Postbox

#: Versions of the workers table read again, for writes committed out of order.
WORKERS_LOOKBACK = 100


class RemoteLink:
    """
    A worker another master holds, as this master's roster sees it: what
    this master asks of it goes to its holder by mail.
    """

    def __init__(self, peers: Postbox, name: str, master: str, row: dict[str, Any]) -> None:
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
        #: Whether it can upgrade itself: a rollout here orders it through its holder.
        self.upgrades = bool(row.get("upgrades"))
        #: Whether it tells facts (a pcci too old to leaves them empty).
        self.tells_facts = bool(row.get("facts"))
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
        self.peers.mail(self.master, "upgrade", worker=self.name, order=order)

    def refresh_facts(self) -> bool:
        if self.tells_facts:
            self.peers.mail(self.master, "facts_refresh", worker=self.name)
        return self.tells_facts


class RemoteWorkers:
    """This master's side of the workers table and of the relayed jobs."""

    def __init__(self, peers: Postbox) -> None:
        self.peers = peers
        self.store = peers.store
        #: Jobs of other masters' pools this master carries for them, on
        #: workers it holds: (worker, pool) -> the pool's owner.
        self.relays: dict[tuple[str, str], str] = {}
        #: Workers held here upgrading on another master's order: worker -> that master.
        self.upgrade_orders: dict[str, str] = {}
        #: Rows of workers held here to write (None: forget it).
        self.rows: dict[str, dict[str, Any] | None] = {}
        self.version = 0

    def upgrade(self, letter: dict[str, Any]) -> None:
        """A rollout of another master orders a worker held here to upgrade: passed on, its news relayed back."""
        sender, worker = letter["from"], letter["worker"]
        found = self.peers.roster.links.get(worker)
        if found is None or found.master is not None:
            self.peers.mail(sender, "upgrade_status", worker=worker, state="failed",
                            reason=f"no longer connected to master {self.peers.name}")
            return
        self.upgrade_orders[worker] = sender
        found.upgrade(letter["order"])

    def refresh_facts(self, letter: dict[str, Any]) -> None:
        """Another master asks a worker held here to look at its facts now (they reach it through the store)."""
        found = self.peers.roster.links.get(letter["worker"])
        if found is not None and found.master is None:
            found.refresh_facts()

    def forward_upgrade(self, worker: str, state: str, reason: str) -> bool:
        """A worker's news of an upgrade another master ordered: relayed to that master."""
        owner = self.upgrade_orders.get(worker)
        if owner is None:
            return False
        if state not in UNDER_WAY:
            del self.upgrade_orders[worker]
        self.peers.mail(owner, "upgrade_status", worker=worker, state=state, reason=reason)
        return True

    def carry(self, letter: dict[str, Any]) -> None:
        """A master asks this one, holding a worker, to run, attach, acknowledge or kill a job on it."""
        kind, sender = letter["kind"], letter["from"]
        worker, pool_id = letter["worker"], letter["pool"]
        found = self.peers.roster.links.get(worker)
        link = found if found is not None and found.master is None else None
        if kind == "ack":
            self.relays.pop((worker, pool_id), None)
            if link is not None:
                link.ack_job(pool_id)
        elif kind == "kill":
            if link is not None:
                link.kill_job(pool_id)
        elif link is None or (kind == "attach" and not self.holds(link, pool_id)):
            self.peers.mail(sender, "gone", worker=worker, pool=pool_id, of=kind)
        else:
            self.relays[(worker, pool_id)] = sender
            if kind == "run":
                link.run_job(pool_id, letter["cmd"], letter["options"])
            else:
                link.attach_job(pool_id, letter["after"])

    def forward(self, worker: str, pool_id: str, kind: str, fields: dict[str, Any]) -> bool:
        """
        A worker's report of a job this master carries for another: relay
        it to the pool's owner.  False for a job of this master's own.
        """
        owner = self.relays.get((worker, pool_id))
        if owner is None:
            return False
        if pool_id in self.peers.history.pools:  # this master took the pool over
            del self.relays[(worker, pool_id)]
            return False
        self.peers.mail(owner, kind, worker=worker, pool=pool_id, **fields)
        return True

    def holds(self, link: WorkerLink, pool_id: str) -> bool:
        """Whether the worker, connected here, holds a job of that pool."""
        return (link.name, pool_id) in self.relays or any(
            job["pool"] == pool_id for job in link.held_jobs
        )

    def changed(self, name: str, online: bool | None = None) -> None:
        """A worker connected here joined, left or was forgotten: write its row."""
        record = self.peers.roster.records.get(name)
        if record is None:
            self.rows[name] = None
        else:
            link = self.peers.roster.links.get(name)
            self.rows[name] = {
                "address": record.address,
                "connected_at": record.connected_at,
                "heartbeat": record.heartbeat,
                "labels": record.labels,
                "figures": record.figures,
                "last_seen": record.last_seen,
                "online": record.online if online is None else online,
                "jobs_running": self.peers.roster.running_jobs(name)
                + sum(1 for (w, _) in self.relays if w == name),
                "remembers_jobs": bool(getattr(link, "remembers_jobs", False)),
                "contiguous_seq": bool(getattr(link, "contiguous_seq", False)),
                "auth": record.auth,
                "left": record.left,
                "pcci_version": record.pcci_version,
                "python_version": record.python_version,
                "upgrades": bool(getattr(link, "upgrades", False)),
                "facts": record.facts,
                "facts_at": record.facts_at,
            }
            if link is None:  # its connection is gone: so are the jobs carried on it
                for key in [key for key in self.relays if key[0] == name]:
                    del self.relays[key]
        self.peers.schedule()

    def write_figures(self) -> None:
        for name, link in self.peers.roster.links.items():
            if link.master is None:
                self.changed(name)

    def read(self) -> Deferred[None]:
        since = max(0, self.version - WORKERS_LOOKBACK)
        return self.store.shared.workers(since).addCallback(self._read)

    def _read(self, rows: list[tuple[str, str, dict[str, Any], int]]) -> None:
        for name, master, row, version in rows:
            self.version = max(self.version, version)
            if master == self.peers.name:
                continue
            link = self.peers.roster.links.get(name)
            if link is not None and link.master is None:
                continue  # connected here: this master's own row wins
            if row["online"]:
                current = link is not None and link.master == master
                if not current or getattr(link, "connected_at", None) != row["connected_at"]:
                    self.peers.roster.join(RemoteLink(self.peers, name, master, row))
                record = self.peers.roster.records[name]
                record.jobs_elsewhere = row["jobs_running"]
                if row.get("facts_at") != record.facts_at:
                    self.peers.roster.set_facts(name, row.get("facts") or {}, row.get("facts_at"))
                if row["figures"] and row["last_seen"] != record.last_seen:
                    self.peers.roster.heartbeat(name, row["figures"])
            elif link is not None and link.master == master:
                why = row.get("left")
                self.peers.roster.leave(link, f"left master {master}" + (f": {why}" if why else ""))
