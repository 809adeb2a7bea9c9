"""
What the parts of L{pcci.master.peers.peers.Peers} (its workers and its
replicas) use of it: this master's name, its store and state, and its
mail to the other masters.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pcci.master.cluster.history import PoolHistory
from pcci.master.cluster.roster import Roster
from pcci.master.store.postgres import PostgresStore


class Postbox(Protocol):
    name: str | None
    clock: IReactorTime
    store: PostgresStore
    roster: Roster
    history: PoolHistory

    def mail(self, dest: str, kind: str, **fields: Any) -> None:
        """Send another master a request or a report, in the next write."""

    def schedule(self) -> None:
        """Write what waits (rows, mail, events) soon."""

    def read(self, key: str, read: Callable[[], Deferred[Any]]) -> None:
        """Read now, or once more after the read under way."""
