"""API tokens made through the API, as their SHA-256 (never their value)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.base import StoredToken
from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect, notify_if_changed

#: What the other masters are told when the tokens change (they read them again).
CHANGED = "t"


class Tokens:
    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> Deferred[list[StoredToken]]:
        def read(cursor: Any, d: Dialect) -> list[StoredToken]:
            d.execute(cursor, "SELECT name, digest, record FROM tokens ORDER BY name")
            return [StoredToken(name, digest, json.loads(record)) for name, digest, record in cursor.fetchall()]

        return self._db.run(read)

    def add(self, token: StoredToken) -> Deferred[bool]:
        """Keep a new token; false if one of that name is kept already."""

        def add(cursor: Any, d: Dialect) -> bool:
            d.execute(
                cursor, "INSERT INTO tokens VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (token.name, token.digest, json.dumps(token.record)),
            )
            return notify_if_changed(cursor, d, CHANGED)

        return self._db.run(add)

    def remove(self, name: str) -> Deferred[bool]:
        """Forget the token of this name; false if there is none."""

        def remove(cursor: Any, d: Dialect) -> bool:
            d.execute(cursor, "DELETE FROM tokens WHERE name = ?", (name,))
            return notify_if_changed(cursor, d, CHANGED)

        return self._db.run(remove)
