"""Schedules, each with its last run, its skips and its latest runs' outcomes."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.cluster.schedules import RUNS_KEPT, SKIPPED, Schedule
from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect, notify_if_changed

#: What the other masters are told when the schedules change (they read them again).
CHANGED = "s"


class Schedules:
    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> Deferred[list[Schedule]]:
        def read(cursor: Any, d: Dialect) -> list[Schedule]:
            d.execute(cursor, "SELECT name, record, last_run, skipped, runs FROM schedules ORDER BY name")
            return [
                Schedule.from_row(name, json.loads(record), last_run, skipped, json.loads(runs))
                for name, record, last_run, skipped, runs in cursor.fetchall()
            ]

        return self._db.run(read)

    def put(self, schedule: Schedule, create: bool) -> Deferred[bool]:
        """Keep a new schedule (false if one of its name exists), or change one (false if none)."""

        def put(cursor: Any, d: Dialect) -> bool:
            record = json.dumps(schedule.record())
            if create:
                d.execute(
                    cursor, "INSERT INTO schedules (name, record) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (schedule.name, record),
                )
            else:
                d.execute(cursor, "UPDATE schedules SET record = ? WHERE name = ?", (record, schedule.name))
            return notify_if_changed(cursor, d, CHANGED)

        return self._db.run(put)

    def remove(self, name: str) -> Deferred[bool]:
        """Forget a schedule; false if there is none."""

        def remove(cursor: Any, d: Dialect) -> bool:
            d.execute(cursor, "DELETE FROM schedules WHERE name = ?", (name,))
            return notify_if_changed(cursor, d, CHANGED)

        return self._db.run(remove)

    def claim_run(self, name: str, at: float) -> Deferred[bool]:
        """Move a schedule's C{last_run} to C{at} if earlier: true for the one caller that did."""

        def claim(cursor: Any, d: Dialect) -> bool:
            d.execute(cursor, "UPDATE schedules SET last_run = ? WHERE name = ? AND last_run < ?", (at, name, at))
            return bool(cursor.rowcount > 0)

        return self._db.run(claim)

    def note_run(self, name: str, run: dict[str, Any]) -> Deferred[None]:
        """Keep a run's outcome (the latest few); count it if skipped."""

        def note(cursor: Any, d: Dialect) -> None:
            row = d.execute(cursor, f"SELECT runs FROM schedules WHERE name = ?{d.lock}", (name,)).fetchone()
            if row is not None:
                runs = (json.loads(row[0]) + [run])[-RUNS_KEPT:]
                d.execute(
                    cursor, "UPDATE schedules SET runs = ?, skipped = skipped + ? WHERE name = ?",
                    (json.dumps(runs), int(run["outcome"] == SKIPPED), name),
                )

        return self._db.run(note)
