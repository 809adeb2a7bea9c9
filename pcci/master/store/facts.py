"""
What each worker told of its machine (see L{pcci.worker.facts}), kept so
that a master knows it at its start, before the worker tells it again, and
for workers offline.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect


class Facts:
    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, told: list[tuple[str, float, dict[str, Any]]]) -> Deferred[None]:
        """Workers' facts (name, when told, facts), in one transaction: 10,000 join at once."""

        def put(cursor: Any, d: Dialect) -> None:
            for name, told_at, facts in told:
                d.execute(
                    cursor, "INSERT INTO facts (name, told_at, facts) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                    " SET told_at = excluded.told_at, facts = excluded.facts",
                    (name, told_at, json.dumps(facts)),
                )

        return self._db.run(put)

    def all(self) -> Deferred[dict[str, tuple[float, dict[str, Any]]]]:
        """Every worker's facts and when it told them, by name."""

        def read(cursor: Any, d: Dialect) -> dict[str, tuple[float, dict[str, Any]]]:
            d.execute(cursor, "SELECT name, told_at, facts FROM facts")
            return {name: (told_at, json.loads(facts)) for name, told_at, facts in cursor.fetchall()}

        return self._db.run(read)
