"""
The pools in PostgreSQL, for several masters sharing one history.

The same L{pcci.master.store.PoolStore} as SQLite's, on psycopg 3: one
connection, used from the store's own thread (so calls keep their order
and the reactor never waits on the database).  A connection that breaks
(the server restarted, the network went) is dropped and made again at the
next call; until then calls fail, and the master's batched writer tries
again (see L{pcci.master.store.BatchedWriter}).

C{--db} takes a libpq URI: C{postgresql://pcci@db.lab/pcci},
C{postgresql:///pcci?host=/run/postgresql}.  The schema is created on
first use, under an advisory lock so that masters starting together do not
race, and carries a version as SQLite's does.
"""

from __future__ import annotations

import json
from typing import Any

from pcci.master.store import SCHEMA_VERSION, StoreError, StoredPool, ThreadedStore, page_filters

#: The advisory lock key held while the schema is checked or created.
SCHEMA_LOCK = 0x7063_6369  # "pcci"

#: Seconds to wait for a connection before the database counts as unreachable.
CONNECT_TIMEOUT = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    state TEXT NOT NULL,
    cmd TEXT NOT NULL,
    workers TEXT[] NOT NULL,
    summary TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pools_ended ON pools (ended_at);
CREATE INDEX IF NOT EXISTS pools_workers ON pools USING GIN (workers);
"""

SAVE = """
INSERT INTO pools (id, started_at, ended_at, state, cmd, workers, summary, record)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    ended_at = EXCLUDED.ended_at, state = EXCLUDED.state,
    summary = EXCLUDED.summary, record = EXCLUDED.record
"""


def is_postgres_url(db: str) -> bool:
    """Whether C{--db} names a PostgreSQL database rather than an SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        return "the --db URL"
    host = parts.get("host", "localhost")
    return f"postgresql database {parts.get('dbname', '?')} on {host}"


class PostgresStore(ThreadedStore):
    """L{pcci.master.store.PoolStore} on a PostgreSQL database."""

    def __init__(self, url: str, reactor: Any) -> None:
        super().__init__(reactor, "pcci-store-pg")
        self.url = url
        self._connection: Any = None

    # In the store's thread.

    def _open(self) -> None:
        _check_schema(self._connect(), self.url)

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = _connect(self.url)
        return self._connection

    def _execute(self, query: str, args: Any = (), many: bool = False) -> Any:
        """Run a statement in a transaction of its own; a broken connection goes."""
        import psycopg

        connection = self._connect()
        try:
            with connection.transaction(), connection.cursor() as cursor:
                if many:
                    cursor.executemany(query, args)
                    return cursor
                cursor.execute(query, args)
                return cursor.fetchall() if cursor.description else cursor.rowcount
        except psycopg.OperationalError:
            connection.close()  # made again at the next call
            raise

    def _ping(self) -> None:
        self._execute("SELECT 1")

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _save(self, pools: list[StoredPool]) -> None:
        self._execute(
            SAVE,
            [
                (
                    p.id, p.started_at, p.ended_at, p.state, p.cmd, list(p.workers),
                    json.dumps(p.summary), json.dumps(p.record),
                )
                for p in pools
            ],
            many=True,
        )

    def _unfinished(self) -> list[dict[str, Any]]:
        rows = self._execute("SELECT record FROM pools WHERE ended_at IS NULL ORDER BY id")
        return [json.loads(record) for (record,) in rows]

    def _get(self, pool_id: str) -> dict[str, Any] | None:
        rows = self._execute("SELECT record FROM pools WHERE id = %s", (pool_id,))
        return json.loads(rows[0][0]) if rows else None

    def _page(
        self,
        before: str | None,
        state: str | None,
        worker: str | None,
        cmd: str | None,
        limit: int,
        ended_since: float,
    ) -> list[dict[str, Any]]:
        where, args = page_filters(
            before, state, worker, cmd, ended_since,
            mark="%s", worker_test="workers @> ARRAY[%s]::text[]", cmd_test="strpos(cmd, %s) > 0",
        )
        query = f"SELECT summary FROM pools WHERE {where} ORDER BY id DESC LIMIT %s"
        return [json.loads(summary) for (summary,) in self._execute(query, (*args, limit))]

    def _expire(self, ended_before: float) -> int:
        return int(
            self._execute("DELETE FROM pools WHERE ended_at IS NOT NULL AND ended_at < %s", (ended_before,))
        )


def check_database(url: str) -> None:
    """
    Reach the database, and create or check its schema.

    @raise StoreError: unreachable, not a pcci database, or one of a newer
        pcci; nothing is changed then.
    """
    connection = _connect(url)
    try:
        _check_schema(connection, url)
    finally:
        connection.close()


def _connect(url: str) -> Any:
    """A connection to the database; one that cannot be made is a L{StoreError}."""
    import psycopg

    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as e:
        raise StoreError(f"cannot reach the {_safe(url)}: {_first_line(e)}") from None


def _check_schema(connection: Any, url: str) -> None:
    """Create the schema, or check the one there, under the schema lock."""
    import psycopg

    try:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cursor.execute("SELECT to_regclass('meta'), to_regclass('pools')")
            meta, pools = cursor.fetchone()
            if meta is None and pools is not None:
                raise StoreError(f"the {_safe(url)} has a pools table that is not pcci's")
            if meta is not None:
                cursor.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                row = cursor.fetchone()
                if row is None:
                    raise StoreError(f"the {_safe(url)} has no pcci schema version")
                if int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"the {_safe(url)} was written by a newer pcci (schema {row[0]},"
                        f" this one knows {SCHEMA_VERSION}): upgrade pcci"
                    )
            cursor.execute(SCHEMA)
            cursor.execute(
                "INSERT INTO meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
    except psycopg.Error as e:
        raise StoreError(f"cannot use the {_safe(url)}: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
