"""
Pools: each stored as its summary, for listing, and its whole record (jobs,
their states and kept output, event ids), written again as it changes
(see L{pcci.master.store.writer}).

L{Pools} is one master's; L{SharedPools}, on PostgreSQL, is that of
several masters, where each running pool has an owner: the master that
moves it (see L{pcci.master.peers.peers}).
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.base import PoolQuery, StoredPool
from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect

#: Seconds an ended pool's events stay, for the masters still showing it.
EVENTS_KEPT = 60.0

_COLUMNS = "id, started_at, ended_at, state, cmd, workers, summary, record, submitted_by, schedule"

#: Only what changes as a pool runs is written again.
_UPDATE = (
    " ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, state = excluded.state,"
    " summary = excluded.summary, record = excluded.record"
)


def _row(p: StoredPool, d: Dialect) -> tuple[Any, ...]:
    """A pool's values for the columns of L{_COLUMNS}, in their order."""
    return (
        p.id, p.started_at, p.ended_at, p.state, p.cmd, d.workers(p.workers),
        json.dumps(p.summary), json.dumps(p.record), p.submitted_by, p.schedule,
    )


class Pools:
    """The pools of a store one master uses."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, pools: list[StoredPool]) -> Deferred[None]:
        """Write these pools (new or changed) in one transaction."""
        return self._db.run(self._save, pools)

    def _save(self, cursor: Any, d: Dialect, pools: list[StoredPool]) -> None:
        rows = [_row(p, d) for p in pools]
        cursor.executemany(d.sql(f"INSERT INTO pools ({_COLUMNS}) VALUES ({', '.join(['?'] * 10)}){_UPDATE}"), rows)

    def unfinished(self, cursor: Any, d: Dialect) -> list[dict[str, Any]]:
        """The records of the pools that had not ended (read at the master's start)."""
        d.execute(cursor, "SELECT record FROM pools WHERE ended_at IS NULL ORDER BY id")
        return [json.loads(record) for (record,) in cursor.fetchall()]

    def get(self, pool_id: str) -> Deferred[dict[str, Any] | None]:
        """A pool's record, or None."""

        def get(cursor: Any, d: Dialect) -> dict[str, Any] | None:
            row = d.execute(cursor, "SELECT record FROM pools WHERE id = ?", (pool_id,)).fetchone()
            return None if row is None else json.loads(row[0])

        return self._db.run(get)

    def claim(self, pool_id: str) -> Deferred[dict[str, Any] | str | None]:
        """
        The record of a pool not ended, for this master to carry on with;
        the name of the master that runs it, if another; None if it ended
        or is unknown.
        """

        def claim(cursor: Any, d: Dialect) -> dict[str, Any] | None:
            row = d.execute(cursor, "SELECT record FROM pools WHERE id = ? AND ended_at IS NULL", (pool_id,)).fetchone()
            return None if row is None else json.loads(row[0])

        return self._db.run(claim)

    def page(self, query: PoolQuery, limit: int, ended_since: float = 0.0) -> Deferred[list[dict[str, Any]]]:
        """
        Summaries of pools, newest first, filtered as C{GET /pools} says,
        leaving out those that ended before C{ended_since}.
        """

        def page(cursor: Any, d: Dialect) -> list[dict[str, Any]]:
            tests = [
                ("id < ?", query.before), ("state = ?", query.state), (d.contains("cmd"), query.cmd),
                ("submitted_by = ?", query.submitted_by), ("schedule = ?", query.schedule),
            ]
            if query.worker is not None:
                tests.append(d.has_worker(query.worker))
            where = ["(ended_at IS NULL OR ended_at >= ?)"]
            args: list[Any] = [ended_since]
            for test, value in tests:
                if value is not None:
                    where.append(test)
                    args.append(value)
            d.execute(cursor, f"SELECT summary FROM pools WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                  (*args, limit))
            return [json.loads(summary) for (summary,) in cursor.fetchall()]

        return self._db.run(page)

    def expire(self, ended_before: float) -> Deferred[int]:
        """Delete the pools that ended before this time; how many."""
        return self._db.run(self._expire, ended_before)

    def _expire(self, cursor: Any, d: Dialect, ended_before: float) -> int:
        d.execute(cursor, "DELETE FROM pools WHERE ended_at IS NOT NULL AND ended_at < ?", (ended_before,))
        return int(cursor.rowcount)


class SharedPools(Pools):
    """
    The pools of a store several masters share, for the master named
    C{master}: the pools it writes are its own, and it carries on only with
    those it owns or that no master owns.
    """

    def __init__(self, db: Database, master: str) -> None:
        super().__init__(db)
        self.master = master

    def _save(self, cursor: Any, d: Dialect, pools: list[StoredPool]) -> None:
        rows = [(*_row(p, d), self.master) for p in pools]
        cursor.executemany(
            d.sql(f"INSERT INTO pools ({_COLUMNS}, owner) VALUES ({', '.join(['?'] * 11)}){_UPDATE}"
                  " WHERE pools.owner = excluded.owner"),
            rows,
        )

    def unfinished(self, cursor: Any, d: Dialect) -> list[dict[str, Any]]:
        """This master's pools not ended, and those no master owns (written by pcci 1.x's schema)."""
        d.execute(
            cursor,
            "UPDATE pools SET owner = ? WHERE ended_at IS NULL AND (owner IS NULL OR owner = ?) RETURNING id, record",
            (self.master, self.master),
        )
        return [json.loads(record) for _, record in sorted(cursor.fetchall())]

    def get(self, pool_id: str) -> Deferred[dict[str, Any] | None]:
        """A pool's record, with the master that owns it (C{owner})."""

        def get(cursor: Any, d: Dialect) -> dict[str, Any] | None:
            row = d.execute(cursor, "SELECT record, owner FROM pools WHERE id = ?", (pool_id,)).fetchone()
            return None if row is None else {**json.loads(row[0]), "owner": row[1]}

        return self._db.run(get)

    def claim(self, pool_id: str) -> Deferred[dict[str, Any] | str | None]:
        def claim(cursor: Any, d: Dialect) -> dict[str, Any] | str | None:
            row = d.execute(
                cursor,
                "UPDATE pools SET owner = ? WHERE id = ? AND ended_at IS NULL"
                " AND (owner IS NULL OR owner = ?) RETURNING record",
                (self.master, pool_id, self.master),
            ).fetchone()
            if row is not None:
                return json.loads(row[0])
            row = d.execute(cursor, "SELECT owner FROM pools WHERE id = ? AND ended_at IS NULL", (pool_id,)).fetchone()
            return None if row is None else str(row[0])  # another master runs it

        return self._db.run(claim)

    def _expire(self, cursor: Any, d: Dialect, ended_before: float) -> int:
        """Old pools, and the events of pools ended a while ago: one master at a time."""
        if not d.once(cursor):
            return 0  # another master is at it
        d.execute(
            cursor,
            "DELETE FROM events WHERE pool IN (SELECT id FROM pools WHERE ended_at < ?)"
            " OR pool NOT IN (SELECT id FROM pools)",
            (time.time() - EVENTS_KEPT,),
        )
        return super()._expire(cursor, d, ended_before)
