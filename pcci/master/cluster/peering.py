"""
What the master's state asks of the other masters sharing its store
(L{IPeers}), and the answer of a master alone (L{SingleMaster}).  The
state's parts are given their L{IPeers} when they are built; several
masters on PostgreSQL give them L{pcci.master.peers.peers.Peers}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

if TYPE_CHECKING:
    from pcci.master.cluster.events import Event
    from pcci.master.cluster.model import Pool, WorkerLink


class IPeers(Protocol):
    """The other masters on this master's store."""

    #: This master's name among them; None for a master alone.
    name: str | None

    def attach(self, state: Any) -> None:
        """
        The L{pcci.master.cluster.state.ClusterState} these peers serve,
        once built (its parts were given these peers when they were).
        """

    def start(self) -> None:
        """Begin: the lease, the figures, listening to the other masters."""

    def stop(self) -> Deferred[None]:
        """End: fires once the others were told this master's workers are offline."""

    def worker_changed(self, name: str) -> None:
        """A worker connected here joined, left or was forgotten: the others are told."""

    def forward(self, worker: str, pool_id: str, kind: str, fields: dict[str, Any]) -> bool:
        """
        A worker's report of a job: relayed to the master whose pool it
        is, if another (true), else left to this master (false).
        """

    def holds(self, link: WorkerLink, pool_id: str) -> bool:
        """Whether a worker connected here holds a job of that pool."""

    def forward_upgrade(self, worker: str, state: str, reason: str) -> bool:
        """
        A worker's news of its upgrade (C{upgrade_status}): relayed to the
        master whose rollout ordered it, if another (true).
        """

    def mirror(self, pool: Pool, event: Event) -> None:
        """An event of one of this master's pools, for the masters that show it."""

    def replica(self, record: dict[str, Any]) -> Deferred[Pool] | None:
        """Another master's running pool, shown live from its stored record; None: shown as stored."""

    def kill_elsewhere(self, pool: Pool, workers: list[str] | None) -> Deferred[list[str]]:
        """
        Ask the master running C{pool} to kill it (or its jobs on
        C{workers}); fires with the workers asked.

        @raise LookupError: (in the Deferred) no master alive runs it.
        """

    def announce(self, url: str) -> None:
        """This master's API as people reach it: where the others send those who ask them for it."""

    def url_of(self, master: str) -> Deferred[str | None]:
        """Where another master's API is reached, if it said (see L{announce})."""


class SingleMaster:
    """The peers of a master alone on its store: none."""

    name: str | None = None

    def attach(self, state: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def worker_changed(self, name: str) -> None:
        pass

    def forward(self, worker: str, pool_id: str, kind: str, fields: dict[str, Any]) -> bool:
        return False

    def holds(self, link: WorkerLink, pool_id: str) -> bool:
        return any(job["pool"] == pool_id for job in link.held_jobs)

    def forward_upgrade(self, worker: str, state: str, reason: str) -> bool:
        return False

    def mirror(self, pool: Pool, event: Event) -> None:
        pass

    def replica(self, record: dict[str, Any]) -> Deferred[Pool] | None:
        return None

    def kill_elsewhere(self, pool: Pool, workers: list[str] | None) -> Deferred[list[str]]:
        return fail(LookupError(f"pool {pool.id} runs on no master this one knows"))

    def announce(self, url: str) -> None:
        pass

    def url_of(self, master: str) -> Deferred[str | None]:
        return succeed(None)
