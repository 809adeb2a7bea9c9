"""
A store: a database and its tables, one object per table (see
L{pcci.master.store.base.PoolStore} for what the master needs of it).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.database import Database
from pcci.master.store.deliveries import Deliveries
from pcci.master.store.facts import Facts
from pcci.master.store.identities import Identities
from pcci.master.store.pools import Pools
from pcci.master.store.schedules import Schedules
from pcci.master.store.shells import ShellRecords
from pcci.master.store.tokens import Tokens
from pcci.master.store.upgrades import UpgradeRollouts


class Store:
    def __init__(self, db: Database, pools: Pools | None = None) -> None:
        self.db = db
        self.pools = pools or Pools(db)
        self.tokens = Tokens(db)
        self.schedules = Schedules(db)
        self.deliveries = Deliveries(db)
        self.identities = Identities(db)
        self.shells = ShellRecords(db)
        self.facts = Facts(db)
        self.upgrades = UpgradeRollouts(db)

    def open(self) -> list[dict[str, Any]]:
        """
        Open the database (at the master's start); answer the records of
        the pools that had not ended, read at once (the start waits for them).

        @raise StoreError: the store cannot be used.
        """
        self.db.open()
        return self.db.transact(self.pools.unfinished)

    def ping(self) -> Deferred[None]:
        return self.db.ping()

    def close(self) -> None:
        self.db.close()
