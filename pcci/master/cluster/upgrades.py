"""
Upgrading workers from the master (C{POST /workers/upgrade}): a rollout
sends the chosen workers C{upgrade}, a batch at a time, and follows each
until it is back with the master's version, or says why it is not.

A worker installed by C{install.sh} (it says C{upgrades} in its hello)
fetches the master's wheel, installs it beside the version it runs, waits
until the master has every job's end, and restarts into the new version,
its running jobs carried on across the restart (jobs sent meanwhile wait,
for the new version); one that does not reach a
master within the order's C{deadline} goes back to the old version by
itself and says why once it is back (see L{pcci.worker.upgrade}).  The
next batch starts when every worker of this one has ended, one way or
another.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.master.cluster.model import WorkerLink, rfc3339
from pcci.master.cluster.peering import IPeers
from pcci.master.cluster.roster import Roster

log = Logger()

#: Seconds a worker has to come back from the moment it is sent its order:
#: to fetch and install (pip), wait for its jobs, and restart.
INSTALL_TIME = 600.0
#: Seconds the new version has to reach a master before it goes back.
DEFAULT_DEADLINE = 60.0

#: What a worker's upgrade says on the way, as the worker reports it.
UNDER_WAY = ("sent", "installing", "draining", "restarting")
#: How a worker's upgrade ends.
ENDED = ("done", "current", "failed", "rolled_back", "unsupported", "offline")
#: Rollouts kept once ended, for GET /workers/upgrade/<id>.
KEPT = 20


def batch_size(text: str | int, total: int) -> int:
    """C{--batch}: a number of workers (C{5}) or a share of them (C{20%}), at least 1."""
    spec = str(text).strip()
    try:
        if spec.endswith("%"):
            share = float(spec[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return max(1, math.ceil(total * share / 100))
        count = int(spec)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(f"batch is a number of workers (5) or a share of them (20%), not {text!r}") from None


@dataclass
class WorkerUpgrade:
    """One worker's part in a rollout."""

    name: str
    state: str = "waiting"
    #: The version it ran when its order was sent, and the one it runs now.
    before: str = ""
    now: str = ""
    reason: str = ""
    timer: IDelayedCall | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "from": self.before, "version": self.now, "reason": self.reason}


class Rollout:
    """Workers upgraded to this master's version, C{size} at a time."""

    def __init__(
        self, upgrades: Upgrades, rollout_id: str, names: list[str], size: int, order: dict[str, Any],
        who: str,
    ) -> None:
        self.upgrades = upgrades
        self.id = rollout_id
        self.version = str(order["version"])
        self.size = size
        self.order = order
        self.who = who
        self.started_at = upgrades.wall()
        self.ended_at: float | None = None
        self.workers = {name: WorkerUpgrade(name) for name in names}
        self._waiting = list(names)
        #: No batch starts before (on the monotonic clock): a master back from a restart lets its workers return.
        self.hold_until = 0.0

    def record(self) -> dict[str, Any]:
        """All it is, for the store (see L{from_record})."""
        return {
            "id": self.id, "version": self.version, "size": self.size, "order": self.order, "who": self.who,
            "started_at": self.started_at, "ended_at": self.ended_at, "waiting": self._waiting,
            "workers": {name: {"state": w.state, "before": w.before, "now": w.now, "reason": w.reason}
                        for name, w in self.workers.items()},
        }

    @classmethod
    def from_record(cls, upgrades: Upgrades, record: dict[str, Any]) -> Rollout:
        """A rollout kept before this master's restart: those under way given their time again."""
        kept = record["workers"]
        rollout = cls(upgrades, record["id"], list(kept), int(record["size"]), record["order"], record["who"])
        rollout.started_at, rollout.ended_at = record["started_at"], record["ended_at"]
        rollout._waiting = list(record["waiting"])
        for name, was in kept.items():
            worker = rollout.workers[name]
            worker.state, worker.before, worker.now, worker.reason = was["state"], was["before"], was["now"], \
                was["reason"]
            if worker.state in UNDER_WAY:
                rollout._give_time(worker)
        return rollout

    @property
    def ended(self) -> bool:
        return all(worker.state in ENDED for worker in self.workers.values())

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for worker in self.workers.values():
            counts[worker.state] = counts.get(worker.state, 0) + 1
        return {
            "id": self.id,
            "version": self.version,
            "batch": self.size,
            "state": "ended" if self.ended else "running",
            "started_at": rfc3339(self.started_at),
            "ended_at": None if self.ended_at is None else rfc3339(self.ended_at),
            "started_by": self.who,
            "counts": counts,
            "workers": {name: worker.to_json() for name, worker in self.workers.items()},
        }

    def next_batch(self) -> None:
        """Send the next workers their order, once none of the last batch is under way; the store is told."""
        self._next_batch()
        self.upgrades.changed(self)

    def _next_batch(self) -> None:
        if any(worker.state in UNDER_WAY for worker in self.workers.values()):
            return
        if self.upgrades.clock.seconds() < self.hold_until:
            return
        sent = 0
        while self._waiting and sent < self.size:
            worker = self.workers[self._waiting.pop(0)]
            if self._send(worker):
                sent += 1
        if self.ended and self.ended_at is None:
            self.ended_at = self.upgrades.wall()
            log.info("upgrade {id} to {version} ended: {counts}", id=self.id, version=self.version,
                     counts=self.to_json()["counts"])

    def _send(self, worker: WorkerUpgrade) -> bool:
        """Order one worker to upgrade; False when it ended at once (current, offline, unsupported)."""
        link = self.upgrades.roster.links.get(worker.name)
        if link is None:
            self._end(worker, "offline", "not connected to a master")
            return False
        worker.before = worker.now = link.pcci_version
        if link.pcci_version == self.version:
            self._end(worker, "current", "")
            return False
        if not link.upgrades:
            why = (
                "it runs a pcci too old to upgrade itself: run the install line on it again"
                if not link.pcci_version
                else "it was not installed by install.sh: run the install line on it"
            )
            self._end(worker, "unsupported", why)
            return False
        worker.state = "sent"
        link.upgrade(self.order)
        self._give_time(worker)
        log.info("worker {name}: upgrading from {old} to {new}", name=worker.name, old=worker.before,
                 new=self.version)
        return True

    def _give_time(self, worker: WorkerUpgrade) -> None:
        worker.timer = self.upgrades.clock.callLater(
            INSTALL_TIME + float(self.order["deadline"]), self._timed_out, worker
        )

    def _timed_out(self, worker: WorkerUpgrade) -> None:
        worker.timer = None
        if worker.state in UNDER_WAY:
            waited = INSTALL_TIME + float(self.order["deadline"])
            why = f"not back with {self.version} after {waited:.0f} s"
            if worker.state == "draining":
                why += (f" (it waits for the master to have its jobs' ends, or for a job being killed:"
                        f" it restarts into {self.version} when it may)")
            self._end(worker, "failed", why)
            self.next_batch()

    def _end(self, worker: WorkerUpgrade, state: str, reason: str) -> None:
        worker.state, worker.reason = state, reason
        if worker.timer is not None and worker.timer.active():
            worker.timer.cancel()
        worker.timer = None
        if state in ("failed", "rolled_back"):
            log.warn("worker {name}: upgrade to {version} {state}: {reason}", name=worker.name,
                     version=self.version, state=state, reason=reason)

    def status(self, name: str, state: str, reason: str) -> None:
        """What the worker says of its upgrade."""
        worker = self.workers[name]
        if worker.state not in UNDER_WAY:
            return
        if state in UNDER_WAY:
            worker.state = state
            self.upgrades.changed(self)
            return
        self._end(worker, state if state in ("failed", "rolled_back") else "failed", reason)
        self.next_batch()

    def joined(self, link: WorkerLink) -> None:
        """A worker connected: back with the new version, or not yet."""
        worker = self.workers[link.name]
        worker.now = link.pcci_version
        if worker.state in UNDER_WAY and link.pcci_version == self.version:
            self._end(worker, "done", "")
            self.next_batch()


class Upgrades:
    """The rollouts of this master, the running ones and the last ended ones."""

    def __init__(self, clock: IReactorTime, wall: Callable[[], float], roster: Roster, peers: IPeers) -> None:
        self.clock = clock
        self.wall = wall
        self.roster = roster
        self.peers = peers
        self.rollouts: dict[str, Rollout] = {}
        self._ids = itertools.count(1)
        roster.join_hooks.append(self._joined)
        #: Called with each rollout that changed (the store keeps it).
        self.change_hooks: list[Callable[[Rollout], None]] = []

    def changed(self, rollout: Rollout) -> None:
        for hook in self.change_hooks:
            hook(rollout)

    def resume(self, records: list[dict[str, Any]]) -> None:
        """
        The rollouts kept from before this master's restart: each not ended
        goes on once its workers have had C{reconnect_grace} to come back.
        """
        for record in records:
            try:
                rollout = Rollout.from_record(self, record)
            except (KeyError, TypeError, ValueError) as e:
                log.warn("an upgrade kept in the store cannot go on: {why}", why=e)
                continue
            self.rollouts.setdefault(rollout.id, rollout)
            if not rollout.ended:
                wait = self.roster.reconnect_grace
                rollout.hold_until = self.clock.seconds() + wait
                self.clock.callLater(wait, rollout.next_batch)
                log.info("upgrade {id} to {version} goes on from where it was: {counts}", id=rollout.id,
                         version=rollout.version, counts=rollout.to_json()["counts"])

    def start(self, names: list[str], size: int, order: dict[str, Any], who: str) -> Rollout:
        rollout_id = f"u{int(self.wall())}-{next(self._ids)}"
        rollout = self.rollouts[rollout_id] = Rollout(self, rollout_id, names, size, order, who)
        log.info("upgrade {id}: {count} workers to {version}, {size} at a time, by {who}", id=rollout_id,
                 count=len(names), version=rollout.version, size=size, who=who)
        rollout.next_batch()
        self._forget_old()
        return rollout

    def status(self, name: str, state: str, reason: str) -> None:
        """
        A worker's C{upgrade_status}: for the rollouts it is part of, here
        or on the master whose rollout ordered it (see L{IPeers.forward_upgrade}).
        """
        if self.peers.forward_upgrade(name, state, reason):
            return
        for rollout in self._running_with(name):
            rollout.status(name, state, reason)

    def _joined(self, link: WorkerLink) -> None:
        for rollout in self._running_with(link.name):
            rollout.joined(link)

    def _running_with(self, name: str) -> list[Rollout]:
        return [r for r in self.rollouts.values() if not r.ended and name in r.workers]

    def _forget_old(self) -> None:
        ended = [key for key, rollout in self.rollouts.items() if rollout.ended]
        for key in ended[: max(0, len(ended) - KEPT)]:
            del self.rollouts[key]
