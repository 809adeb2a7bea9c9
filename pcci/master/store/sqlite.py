"""
The store in SQLite, for one master: the standard library's C{sqlite3} in
WAL mode, in a thread of its own (L{ThreadedStore}), so every call runs in
the order it was made.

A pool is stored as its summary, for listing, and its whole record (jobs,
their states and kept output, event ids), written again as it changes
(see L{pcci.master.store.writer}).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from twisted.logger import Logger

from pcci.master.cluster.schedules import RUNS_KEPT, SKIPPED, Schedule
from pcci.master.store.base import (
    Delivery,
    PoolQuery,
    StoredPool,
    StoredToken,
    StoreError,
    due_deliveries_query,
    page_filters,
    schema_text,
)
from pcci.master.store.threaded import ThreadedStore

log = Logger()

T = TypeVar("T")

#: The version of the tables below; a database of a newer one is refused.
#: 2: pools' C{submitted_by} and C{schedule} columns; the C{tokens},
#: C{schedules} and C{deliveries} tables.
SCHEMA_VERSION = 2

#: The tables, as the data file C{schema/sqlite-v{SCHEMA_VERSION}.sql} holds them.
SCHEMA = schema_text("sqlite", SCHEMA_VERSION)

#: Whose pool a delivery tells of (NULL: the master's own hook), added
#: without a new schema version: a master that does not know it leaves it NULL.
DELIVERY_OWNER = "ALTER TABLE deliveries ADD COLUMN owner TEXT"

#: From schema 1 to 2: who submitted each pool and the schedule that
#: started it, as columns; by column, those missing.
NEW_COLUMNS = {
    "submitted_by": """
        ALTER TABLE pools ADD COLUMN submitted_by TEXT;
        UPDATE pools SET submitted_by = json_extract(summary, '$.submitted_by');
        CREATE INDEX IF NOT EXISTS pools_submitted_by ON pools (submitted_by, id);
    """,
    "schedule": """
        ALTER TABLE pools ADD COLUMN schedule TEXT;
        CREATE INDEX IF NOT EXISTS pools_schedule ON pools (schedule, id);
    """,
}


class SQLiteStore(ThreadedStore):
    """L{PoolStore} on an SQLite database file (see L{open_database})."""

    def __init__(self, path: str, reactor: Any) -> None:
        super().__init__(reactor, "pcci-store")
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _open(self) -> None:
        self._db = open_database(self.path)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # Each call below runs in the store's thread, once open.

    _mark = "?"
    _lock = ""  # BEGIN IMMEDIATE locks the database for the transaction

    def _transact(self, work: Any) -> Any:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # what it reads stays so until it commits
            return work(self.db.cursor())

    def _identity_changed(self, cursor: Any, name: str) -> None:
        pass  # no other master to tell

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "the store is not open"
        return self._db

    def _ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    def _save(self, pools: list[StoredPool]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO pools (id, started_at, ended_at, state, cmd, workers,"
                " summary, record, submitted_by, schedule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.id,
                        p.started_at,
                        p.ended_at,
                        p.state,
                        p.cmd,
                        " " + " ".join(p.workers) + " ",
                        json.dumps(p.summary),
                        json.dumps(p.record),
                        p.submitted_by,
                        p.schedule,
                    )
                    for p in pools
                ],
            )

    def _unfinished(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT record FROM pools WHERE ended_at IS NULL ORDER BY id"
        ).fetchall()
        return [json.loads(record) for (record,) in rows]

    def _get(self, pool_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM pools WHERE id = ?", (pool_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _claim(self, pool_id: str) -> dict[str, Any] | None:
        record = self._get(pool_id)
        return record if record is not None and record["ended_at"] is None else None

    def _page(self, query: PoolQuery, limit: int, ended_since: float) -> list[dict[str, Any]]:
        where, args = page_filters(
            query, ended_since,
            mark="?", worker_test="instr(workers, ?) > 0", cmd_test="instr(cmd, ?) > 0",
            worker=None if query.worker is None else f" {query.worker} ",
        )
        sql = f"SELECT summary FROM pools WHERE {where} ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(sql, (*args, limit)).fetchall()
        return [json.loads(summary) for (summary,) in rows]

    def _expire(self, ended_before: float) -> int:
        with self.db:
            cursor = self.db.execute(
                "DELETE FROM pools WHERE ended_at IS NOT NULL AND ended_at < ?",
                (ended_before,),
            )
        return cursor.rowcount

    def _tokens(self) -> list[StoredToken]:
        rows = self.db.execute("SELECT name, digest, record FROM tokens ORDER BY name")
        return [StoredToken(name, digest, json.loads(record)) for name, digest, record in rows]

    def _add_token(self, token: StoredToken) -> bool:
        try:
            with self.db:
                self.db.execute(
                    "INSERT INTO tokens VALUES (?, ?, ?)",
                    (token.name, token.digest, json.dumps(token.record)),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def _remove_token(self, name: str) -> bool:
        with self.db:
            return self.db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0

    def _schedules(self) -> list[Schedule]:
        rows = self.db.execute(
            "SELECT name, record, last_run, skipped, runs FROM schedules ORDER BY name"
        )
        return [
            Schedule.from_row(name, json.loads(record), last_run, skipped, json.loads(runs))
            for name, record, last_run, skipped, runs in rows
        ]

    def _put_schedule(self, schedule: Schedule, create: bool) -> bool:
        record = json.dumps(schedule.record())
        with self.db:
            if create:
                cursor = self.db.execute(
                    "INSERT INTO schedules (name, record) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (schedule.name, record),
                )
            else:
                cursor = self.db.execute(
                    "UPDATE schedules SET record = ? WHERE name = ?", (record, schedule.name)
                )
        return cursor.rowcount > 0

    def _remove_schedule(self, name: str) -> bool:
        with self.db:
            return self.db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount > 0

    def _claim_run(self, name: str, at: float) -> bool:
        with self.db:
            return self.db.execute(
                "UPDATE schedules SET last_run = ? WHERE name = ? AND last_run < ?", (at, name, at)
            ).rowcount > 0

    def _note_run(self, name: str, run: dict[str, Any]) -> None:
        with self.db:
            row = self.db.execute("SELECT runs FROM schedules WHERE name = ?", (name,)).fetchone()
            if row is not None:
                runs = (json.loads(row[0]) + [run])[-RUNS_KEPT:]
                self.db.execute(
                    "UPDATE schedules SET runs = ?, skipped = skipped + ? WHERE name = ?",
                    (json.dumps(runs), int(run["outcome"] == SKIPPED), name),
                )

    def _add_delivery(self, url: str, body: bytes, now: float, owner: str | None) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO deliveries (url, body, created_at, next_at, owner) VALUES (?, ?, ?, ?, ?)",
                (url, body, now, now, owner),
            )

    def _due_deliveries(
        self, now: float, lease: float, most: int, owned: bool, busy: tuple[str, ...]
    ) -> list[Delivery]:
        with self.db:
            rows = self.db.execute(
                due_deliveries_query("?", owned, busy), (now + lease, now, *busy, most)
            ).fetchall()
        return [Delivery(i, url, bytes(body), n, created, owner) for i, url, body, n, created, owner in rows]

    def _queued_deliveries(self, owner: str) -> int:
        return self.db.execute("SELECT count(*) FROM deliveries WHERE owner = ?", (owner,)).fetchone()[0]

    def _delivery_done(self, delivery_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def _delivery_later(self, delivery_id: int, attempts: int, at: float) -> None:
        with self.db:
            self.db.execute(
                "UPDATE deliveries SET attempts = ?, next_at = ? WHERE id = ?", (attempts, at, delivery_id)
            )


def open_database(path: str) -> sqlite3.Connection:
    """
    Open (or create) the database at C{path} and check its schema.

    @raise StoreError: a file that is not a pcci database, one of a newer
        pcci, or one that cannot be written; nothing is changed then.
    """
    if path != ":memory:":
        parent = Path(path).parent
        if not parent.is_dir():
            raise StoreError(f"cannot open the database {path}: {parent} is not a directory")
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the database {path}: {e}") from None
    try:
        version = _schema_version(db)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"the database {path} was written by a newer pcci (schema {version},"
                f" this one knows {SCHEMA_VERSION}): upgrade pcci, or start with"
                " another --db"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")  # fails at once on a read-only file
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        columns = {row[1] for row in db.execute("PRAGMA table_info(pools)")}
        for column, migration in NEW_COLUMNS.items():
            if column not in columns:
                for statement in migration.split(";"):
                    if statement.strip():
                        db.execute(statement)
        if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}:
            db.execute(DELIVERY_OWNER)
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        db.execute("COMMIT")
    except StoreError:
        db.close()
        raise
    except sqlite3.Error as e:
        db.close()
        raise StoreError(f"cannot use the database {path}: {e}") from None
    db.isolation_level = "DEFERRED"
    return db


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The database's schema version; None for a new, empty one."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise StoreError(f"{_file(db)} is not a pcci database (it has other tables)")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise StoreError(f"{_file(db)} has no pcci schema version")
    return int(row[0])


def _file(db: sqlite3.Connection) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


