"""
Webhook deliveries waiting to be sent (see L{pcci.master.webhooks.notifier}):
each leased for a while by the master that sends it, so that no two
masters send one at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.base import Delivery
from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect


class Deliveries:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, url: str, body: bytes, now: float, owner: str | None = None) -> Deferred[None]:
        def add(cursor: Any, d: Dialect) -> None:
            d.execute(
                cursor, "INSERT INTO deliveries (url, body, created_at, next_at, owner) VALUES (?, ?, ?, ?, ?)",
                (url, body, now, now, owner),
            )

        return self._db.run(add)

    def due(
        self, now: float, lease: float, most: int, owned: bool = False, busy: tuple[str, ...] = ()
    ) -> Deferred[list[Delivery]]:
        """
        At most C{most} deliveries due of one lane (the users' when
        C{owned}, but not those of the C{busy} owners; else the master's
        own hooks), each held for C{lease} seconds: no master takes them
        meanwhile.
        """

        def lease_(cursor: Any, d: Dialect) -> list[Delivery]:
            owners = "owner IS NOT NULL" if owned else "owner IS NULL"
            if busy:
                owners += f" AND owner NOT IN ({', '.join(['?'] * len(busy))})"
            d.execute(
                cursor,
                "UPDATE deliveries SET next_at = ? WHERE id IN (SELECT id FROM deliveries"
                f" WHERE next_at <= ? AND {owners} ORDER BY next_at LIMIT ?{d.lock_free})"
                " RETURNING id, url, body, attempts, created_at, owner",
                (now + lease, now, *busy, most),
            )
            return [Delivery(i, url, bytes(body), n, at, owner) for i, url, body, n, at, owner in cursor.fetchall()]

        return self._db.run(lease_)

    def queued(self, owner: str) -> Deferred[int]:
        """How many deliveries of one owner wait."""

        def count(cursor: Any, d: Dialect) -> int:
            return int(d.execute(cursor, "SELECT count(*) FROM deliveries WHERE owner = ?", (owner,)).fetchone()[0])

        return self._db.run(count)

    def done(self, delivery_id: int) -> Deferred[None]:
        def done(cursor: Any, d: Dialect) -> None:
            d.execute(cursor, "DELETE FROM deliveries WHERE id = ?", (delivery_id,))

        return self._db.run(done)

    def later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]:
        """Try it again at C{at}, after C{attempts} attempts."""

        def later(cursor: Any, d: Dialect) -> None:
            d.execute(
                cursor, "UPDATE deliveries SET attempts = ?, next_at = ? WHERE id = ?", (attempts, at, delivery_id)
            )

        return self._db.run(later)
