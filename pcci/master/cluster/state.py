"""
The master's state: its three rooms, built together.

  - the L{Roster} (L{pcci.master.cluster.roster}): who is connected, what each
    worker runs, the timers that wait for those that left;
  - the L{PoolHistory} (L{pcci.master.cluster.history}): pools in memory and in
    the store, within their budgets;
  - the L{Dispatcher} (L{pcci.master.cluster.dispatch}): pools from submission to
    their end, and L{JobReports} (L{pcci.master.cluster.reports}): the
    workers' reports of their jobs, and jobs carried on across reconnections.

Each is given the master's L{IPeers} (L{pcci.master.cluster.peering}): the
other masters on its store, or none.

The wire protocol reports to the roster and the reports; the REST API
reads the rooms and asks the dispatcher to start and kill pools.  Neither
touches the other.  Timers and durations use the C{clock} (the reactor,
on monotonic time); the times shown to people come from C{wall}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from twisted.internet.interfaces import IReactorTime

from pcci.master.cluster.dispatch import Dispatcher
from pcci.master.cluster.history import DEFAULT_CACHE, DEFAULT_MAX_POOLS, DEFAULT_RETENTION, PoolHistory
from pcci.master.cluster.peering import IPeers, SingleMaster
from pcci.master.cluster.reports import JobReports
from pcci.master.cluster.roster import (
    DEFAULT_FORGET_AFTER,
    DEFAULT_HISTORY,
    DEFAULT_RECONNECT_GRACE,
    Roster,
)
from pcci.master.cluster.shells import Shells, ShellSettings
from pcci.master.cluster.upgrades import Upgrades
from pcci.master.store.base import PoolStore

if TYPE_CHECKING:
    from pcci.master.cluster.model import Pool
    from pcci.master.transfers.fetches import Fetch
    from pcci.master.transfers.pushes import Push
from pcci.output import DEFAULT_MAX_OUTPUT, DEFAULT_MAX_OUTPUT_TOTAL


@dataclass(frozen=True)
class Settings:
    """What the master's options set of its state (see C{twistd pcci-master --help})."""

    retention: float = DEFAULT_RETENTION
    max_pools: int = DEFAULT_MAX_POOLS
    max_output: int = DEFAULT_MAX_OUTPUT
    max_output_total: int = DEFAULT_MAX_OUTPUT_TOTAL
    #: Finished pools kept in memory when a store keeps them all.
    cache: int = DEFAULT_CACHE
    #: Seconds of health figures kept per worker.
    history: float = DEFAULT_HISTORY
    forget_after: float = DEFAULT_FORGET_AFTER
    reconnect_grace: float = DEFAULT_RECONNECT_GRACE
    shells: ShellSettings = ShellSettings()


class ClusterState:
    """The roster, the pools' history and the dispatcher of one master."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: Settings = Settings(),
        store: PoolStore | None = None,
        wall: Callable[[], float] | None = None,
        new_id: Callable[[], str] | None = None,
        peers: IPeers | None = None,
    ) -> None:
        self.clock = clock
        #: Wall-clock time for what people read; the clock's own in tests.
        self.wall = wall or clock.seconds
        self.settings = settings
        #: The other masters on the same PostgreSQL store, if any.
        self.peers: IPeers = peers or SingleMaster()
        self.roster = Roster(
            clock,
            self.wall,
            self.peers,
            history=settings.history,
            forget_after=settings.forget_after,
            reconnect_grace=settings.reconnect_grace,
        )
        self.history = PoolHistory(clock, self.wall, store, self.peers, settings)
        self.dispatcher = Dispatcher(clock, self.wall, self.roster, self.history, self.peers, new_id)
        self.reports = JobReports(self.dispatcher, self.peers)
        # Workers coming back and given up on are the reports' to match.
        self.roster.on_join = self.reports.reattach
        self.roster.on_give_up = self.reports.give_up
        #: Workers upgraded from this master (POST /workers/upgrade).
        self.upgrades = Upgrades(clock, self.wall, self.roster, self.peers)
        #: Pushes under way (see L{pcci.master.transfers.pushes}), and fetches with
        #: their archives (L{pcci.master.transfers.fetches}), by pool id.
        self.pushes: dict[str, Push] = {}
        self.fetches: dict[str, Fetch] = {}
        #: Shells open through this master (see L{pcci.master.cluster.shells}).
        self.shells = Shells(
            clock, self.wall, self.roster, settings.shells, None if store is None else store.shells, settings.retention
        )
        self.dispatcher.pool_end_hooks.append(self._transfer_ended)
        self.peers.attach(self)

    def _transfer_ended(self, pool: Pool) -> None:
        push = self.pushes.pop(pool.id, None)
        if push is not None:
            push.ended()
        fetch = self.fetches.get(pool.id)
        if fetch is not None:
            fetch.ended()

    def stop(self) -> None:
        """Cancel every timer: the master is shutting down."""
        self.dispatcher.stop()
        self.roster.stop()
        self.history.stop()
        self.shells.stop("the master is shutting down")
        for fetch in list(self.fetches.values()):
            fetch.forget()
