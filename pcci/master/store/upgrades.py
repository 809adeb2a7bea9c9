"""
Workers' upgrade rollouts (see L{pcci.master.cluster.upgrades}), kept so
that one goes on from where it was when its master restarts, and that
`GET /workers/upgrade/<id>` still answers for it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect


class UpgradeRollouts:
    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, master: str, record: dict[str, Any]) -> Deferred[None]:
        """A rollout as it is now (see L{pcci.master.cluster.upgrades.Rollout.record})."""

        def put(cursor: Any, d: Dialect) -> None:
            d.execute(
                cursor, "INSERT INTO upgrades (id, started_at, ended_at, master, record) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, record = excluded.record",
                (record["id"], record["started_at"], record["ended_at"], master, json.dumps(record)),
            )

        return self._db.run(put)

    def of(self, master: str, ended: int) -> Deferred[list[dict[str, Any]]]:
        """A master's rollouts not ended, and its last C{ended} that did, oldest first."""

        def read(cursor: Any, d: Dialect) -> list[dict[str, Any]]:
            d.execute(
                cursor, "SELECT record FROM upgrades WHERE master = ? AND ended_at IS NULL ORDER BY started_at",
                (master,),
            )
            running = [json.loads(record) for (record,) in cursor.fetchall()]
            d.execute(
                cursor, "SELECT record FROM upgrades WHERE master = ? AND ended_at IS NOT NULL"
                " ORDER BY started_at DESC LIMIT ?", (master, ended),
            )
            done = [json.loads(record) for (record,) in cursor.fetchall()]
            return sorted(done + running, key=lambda record: record["started_at"])

        return self._db.run(read)
