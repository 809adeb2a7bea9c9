"""
Shells opened through the masters of a store (C{pcci shell}): a row each,
its fields as JSON, and its recording (asciicast v2) in pieces, written
as the session goes so that no master holds a long one in memory.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect


class ShellRecords:
    def __init__(self, db: Database) -> None:
        self._db = db

    def opened(self, shell_id: str, opened_at: float, by: str, record: dict[str, Any]) -> Deferred[None]:
        def opened(cursor: Any, d: Dialect) -> None:
            d.execute(cursor, "INSERT INTO shells (id, opened_at, opened_by, record) VALUES (?, ?, ?, ?)",
                      (shell_id, opened_at, by, json.dumps(record)))

        return self._db.run(opened)

    def record(self, shell_id: str, seq: int, data: bytes) -> Deferred[None]:
        def record(cursor: Any, d: Dialect) -> None:
            d.execute(cursor, "INSERT INTO shell_recordings (shell, seq, data) VALUES (?, ?, ?)",
                      (shell_id, seq, data))

        return self._db.run(record)

    def ended(self, shell_id: str, ended_at: float, record: dict[str, Any]) -> Deferred[None]:
        def ended(cursor: Any, d: Dialect) -> None:
            d.execute(cursor, "UPDATE shells SET ended_at = ?, record = ? WHERE id = ?",
                      (ended_at, json.dumps(record), shell_id))

        return self._db.run(ended)

    def page(self, limit: int, by: str | None = None) -> Deferred[list[dict[str, Any]]]:
        def page(cursor: Any, d: Dialect) -> list[dict[str, Any]]:
            where, args = ("WHERE opened_by = ?", (by,)) if by is not None else ("", ())
            d.execute(cursor, f"SELECT record FROM shells {where} ORDER BY opened_at DESC LIMIT ?", (*args, limit))
            return [json.loads(record) for (record,) in cursor.fetchall()]

        return self._db.run(page)

    def get(self, shell_id: str) -> Deferred[dict[str, Any] | None]:
        def get(cursor: Any, d: Dialect) -> dict[str, Any] | None:
            row = d.execute(cursor, "SELECT record FROM shells WHERE id = ?", (shell_id,)).fetchone()
            return None if row is None else json.loads(row[0])

        return self._db.run(get)

    def recording(self, shell_id: str) -> Deferred[bytes]:
        def recording(cursor: Any, d: Dialect) -> bytes:
            d.execute(cursor, "SELECT data FROM shell_recordings WHERE shell = ? ORDER BY seq", (shell_id,))
            return b"".join(bytes(data) for (data,) in cursor.fetchall())

        return self._db.run(recording)

    def expire(self, before: float) -> Deferred[int]:
        def expire(cursor: Any, d: Dialect) -> int:
            d.execute(cursor, "DELETE FROM shell_recordings WHERE shell IN"
                              " (SELECT id FROM shells WHERE ended_at IS NOT NULL AND ended_at < ?)", (before,))
            d.execute(cursor, "DELETE FROM shells WHERE ended_at IS NOT NULL AND ended_at < ?", (before,))
            return int(cursor.rowcount)

        return self._db.run(expire)
