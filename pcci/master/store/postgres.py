"""
The pools in PostgreSQL, for several masters sharing one history.

The same L{pcci.master.store.base.PoolStore} as SQLite's, on psycopg 3: one
connection, used from the store's own thread (so calls keep their order
and the reactor never waits on the database).  A connection that breaks
(the server restarted, the network went) is dropped and made again at the
next call; until then calls fail, and the master's batched writer tries
again (see L{pcci.master.store.writer.BatchedWriter}).

C{--db} takes a libpq URI: C{postgresql://pcci@db.lab/pcci},
C{postgresql:///pcci?host=/run/postgresql}.  The schema is created on
first use, under an advisory lock so that masters starting together do not
race, and carries a version as SQLite's does.

Beside the pools, the tables masters share (see L{pcci.master.peers.peers}):
C{masters} (each one's lease), C{workers} (who holds which worker),
C{mail} (commands and reports between masters, woken by C{NOTIFY}) and
C{events} (the events of running pools, for masters that show them), and
C{tokens} (those made through the API, so every master knows them).
Each master holds a session advisory lock of its own on this connection
while it lives: another master tells a dead one by its lock gone and its
lease run out.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

from twisted.internet.defer import Deferred

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

#: The version of the tables below; a database of a newer one is refused.
#: 2: masters, workers, mail, events; 3: pools' C{submitted_by} and
#: C{schedule}, tokens, schedules, webhook deliveries.
SCHEMA_VERSION = 3

#: The first key of pcci's advisory locks (two-key form: this, then one below).
LOCKS = 0x7063_6369  # "pcci"
#: Second keys: the schema's; the one that makes once-only work once (a
#: master's own lock is L{master_lock} of its name).
SCHEMA_LOCK = 1
ONCE_LOCK = 2

#: Seconds to wait for a connection before the database counts as unreachable.
CONNECT_TIMEOUT = 5

#: libpq settings of every connection: a server gone silent (a power cut)
#: is noticed within seconds rather than TCP's hours.
CONNECTION_SETTINGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}

#: The channel masters C{NOTIFY} on; payloads name what changed (ids only):
#: C{m:<master>} mail for a master, C{e:<pool>} new events of a pool,
#: C{w} workers moved, C{t} API tokens made or revoked, C{s} schedules
#: made, changed or removed, C{i:<worker>} a worker's identity moved.
CHANNEL = "pcci"

#: Seconds an ended pool's events stay, for the masters still showing it.
EVENTS_KEPT = 60.0

#: The tables, as the data file C{schema/postgres-v{SCHEMA_VERSION}.sql} holds them.
SCHEMA = schema_text("postgres", SCHEMA_VERSION)

#: From schema 2 to 3: who submitted each pool, as a column.
SUBMITTED_BY = """
ALTER TABLE pools ADD COLUMN submitted_by TEXT;
UPDATE pools SET submitted_by = summary::jsonb ->> 'submitted_by';
CREATE INDEX pools_submitted_by ON pools (submitted_by, id);
"""

SAVE = """
INSERT INTO pools (id, started_at, ended_at, state, cmd, workers, summary, record, owner,
    submitted_by, schedule)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    ended_at = EXCLUDED.ended_at, state = EXCLUDED.state,
    summary = EXCLUDED.summary, record = EXCLUDED.record
WHERE pools.owner = EXCLUDED.owner
"""

#: The other masters that are dead.  One whose lock is gone (its
#: connection closed) is dead once its lease ran out; one whose lease ran
#: out long ago is dead even holding it (a session the server has not yet
#: found dead, after a power cut).
DEAD_MASTERS = f"""
SELECT id, pid FROM masters m
WHERE id <> %(me)s AND (
    seen < now() - make_interval(secs => %(lease)s * 5)
    OR (seen < now() - make_interval(secs => %(lease)s) AND NOT EXISTS (
        SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
        AND l.classid = {LOCKS} AND l.objid = m.lock AND l.objsubid = 2)))
"""


#: Marks the workers a master held offline (it stopped or died).
OFFLINE = """
UPDATE workers SET record = jsonb_set(record::jsonb, '{online}', 'false')::text,
    version = nextval('workers_version')
WHERE master = %s
"""


def master_lock(name: str) -> int:
    """The second key of the advisory lock a master named C{name} holds while it lives."""
    return zlib.crc32(name.encode()) & 0x7FFF_FFFF


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
    """
    L{pcci.master.store.base.PoolStore} on a PostgreSQL database, for the master
    named C{master}: the pools it writes are its own (C{owner}), and the
    calls past the store's (see L{pcci.master.peers.peers}) share the rest.
    """

    def __init__(self, url: str, reactor: Any, master: str) -> None:
        super().__init__(reactor, "pcci-store-pg")
        self.url = url
        self.master = master
        self.lock = master_lock(master)
        self._connection: Any = None
        self._opened = False

    # In the store's thread.

    def _open(self) -> None:
        connection = self._connect()
        _check_schema(connection, self.url)
        with connection.transaction():
            connection.execute(
                "INSERT INTO masters (id, lock, pid) VALUES (%s, %s, pg_backend_pid())"
                " ON CONFLICT (id) DO UPDATE SET lock = EXCLUDED.lock, pid = EXCLUDED.pid,"
                " seen = now()",
                (self.master, self.lock),
            )
            # The workers of this master's last run are gone with it.
            connection.execute(OFFLINE, (self.master,))
            connection.execute("SELECT pg_notify(%s, 'w')", (CHANNEL,))
        self._opened = True

    def _connect(self) -> Any:
        """
        The connection, made again if it broke, holding this master's lock.
        (Made again, it updates this master's row but does not make it
        again: a master judged dead meanwhile learns so from its lease.)
        """
        if self._connection is None or self._connection.closed:
            connection = _connect(self.url)
            try:
                self._hold_lock(connection)
                if self._opened:
                    with connection.transaction():
                        connection.execute(
                            "UPDATE masters SET pid = pg_backend_pid() WHERE id = %s",
                            (self.master,),
                        )
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _hold_lock(self, connection: Any) -> None:
        """
        Take this master's lock.  At start, a lock held means another master
        of this name lives; later, it is this master's own session from
        before the connection broke, which the server has not yet let go.
        """
        taken = "SELECT pg_try_advisory_lock(%s, %s)"
        if connection.execute(taken, (LOCKS, self.lock)).fetchone()[0]:
            connection.commit()
            return
        connection.rollback()
        if not self._opened:
            raise StoreError(_name_taken(self.master, self.url))
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND classid = %s AND objid = %s AND objsubid = 2 AND pid <> pg_backend_pid()",
            (LOCKS, self.lock),
        )
        for _ in range(50):  # the old session goes within moments
            if connection.execute(taken, (LOCKS, self.lock)).fetchone()[0]:
                connection.commit()
                return
            connection.rollback()
            time.sleep(0.1)
        raise StoreError(f"this master's lock on the {_safe(self.url)} stays taken")

    def _execute(self, query: str, args: Any = (), many: bool = False) -> Any:
        """Run a statement in a transaction of its own; a broken connection goes."""
        return self._transaction(lambda cursor: _run(cursor, query, args, many))

    def _transaction(self, work: Any) -> Any:
        """C{work(cursor)} in one transaction; a broken connection goes."""
        import psycopg

        connection = self._connect()
        try:
            with connection.transaction(), connection.cursor() as cursor:
                return work(cursor)
        except psycopg.OperationalError:
            connection.close()  # made again at the next call
            raise

    _mark = "%s"
    _lock = " FOR UPDATE"

    def _transact(self, work: Any) -> Any:
        return self._transaction(work)

    def _identity_changed(self, cursor: Any, name: str) -> None:
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"i:{name}"))

    def _ping(self) -> None:
        self._execute("SELECT 1")

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()  # its lock goes with it
            self._connection = None

    def _save(self, pools: list[StoredPool]) -> None:
        self._execute(
            SAVE,
            [
                (
                    p.id, p.started_at, p.ended_at, p.state, p.cmd, list(p.workers),
                    json.dumps(p.summary), json.dumps(p.record), self.master, p.submitted_by,
                    p.schedule,
                )
                for p in pools
            ],
            many=True,
        )

    def _unfinished(self) -> list[dict[str, Any]]:
        """This master's pools not ended, and those no master owns (written by pcci 1.x's schema)."""
        rows = self._execute(
            "UPDATE pools SET owner = %s WHERE ended_at IS NULL AND (owner IS NULL OR owner = %s)"
            " RETURNING id, record",
            (self.master, self.master),
        )
        return [json.loads(record) for _, record in sorted(rows)]

    def _get(self, pool_id: str) -> dict[str, Any] | None:
        rows = self._execute("SELECT record, owner FROM pools WHERE id = %s", (pool_id,))
        if not rows:
            return None
        record = json.loads(rows[0][0])
        record["owner"] = rows[0][1]
        return record

    def _claim(self, pool_id: str) -> dict[str, Any] | str | None:
        def claim(cursor: Any) -> dict[str, Any] | str | None:
            cursor.execute(
                "UPDATE pools SET owner = %s WHERE id = %s AND ended_at IS NULL"
                " AND (owner IS NULL OR owner = %s) RETURNING record",
                (self.master, pool_id, self.master),
            )
            row = cursor.fetchone()
            if row is not None:
                return json.loads(row[0])
            cursor.execute("SELECT owner FROM pools WHERE id = %s AND ended_at IS NULL", (pool_id,))
            row = cursor.fetchone()
            return None if row is None else row[0]  # another master runs it

        return self._transaction(claim)

    def _page(self, query: PoolQuery, limit: int, ended_since: float) -> list[dict[str, Any]]:
        where, args = page_filters(
            query, ended_since,
            mark="%s", worker_test="workers @> ARRAY[%s]::text[]", cmd_test="strpos(cmd, %s) > 0",
            worker=query.worker,
        )
        sql = f"SELECT summary FROM pools WHERE {where} ORDER BY id DESC LIMIT %s"
        return [json.loads(summary) for (summary,) in self._execute(sql, (*args, limit))]

    def _expire(self, ended_before: float) -> int:
        """Delete old pools, and the events of pools ended a while ago: one master at a time."""

        def expire(cursor: Any) -> int:
            if not _once(cursor):
                return 0  # another master is at it
            cursor.execute(
                "DELETE FROM events WHERE pool IN (SELECT id FROM pools WHERE ended_at < %s)"
                " OR pool NOT IN (SELECT id FROM pools)",
                (time.time() - EVENTS_KEPT,),
            )
            cursor.execute(
                "DELETE FROM pools WHERE ended_at IS NOT NULL AND ended_at < %s", (ended_before,)
            )
            return int(cursor.rowcount)

        return self._transaction(expire)

    def _tokens(self) -> list[StoredToken]:
        rows = self._execute("SELECT name, digest, record FROM tokens ORDER BY name")
        return [StoredToken(name, digest, json.loads(record)) for name, digest, record in rows]

    def _add_token(self, token: StoredToken) -> bool:
        def add(cursor: Any) -> bool:
            cursor.execute(
                "INSERT INTO tokens VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (token.name, token.digest, json.dumps(token.record)),
            )
            return _notify_if_changed(cursor, "t")

        return self._transaction(add)

    def _remove_token(self, name: str) -> bool:
        def remove(cursor: Any) -> bool:
            cursor.execute("DELETE FROM tokens WHERE name = %s", (name,))
            return _notify_if_changed(cursor, "t")

        return self._transaction(remove)

    def _schedules(self) -> list[Schedule]:
        rows = self._execute("SELECT name, record, last_run, skipped, runs FROM schedules ORDER BY name")
        return [
            Schedule.from_row(name, json.loads(record), last_run, skipped, json.loads(runs))
            for name, record, last_run, skipped, runs in rows
        ]

    def _put_schedule(self, schedule: Schedule, create: bool) -> bool:
        def put(cursor: Any) -> bool:
            record = json.dumps(schedule.record())
            if create:
                cursor.execute(
                    "INSERT INTO schedules (name, record) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (schedule.name, record),
                )
            else:
                cursor.execute("UPDATE schedules SET record = %s WHERE name = %s", (record, schedule.name))
            return _notify_if_changed(cursor, "s")

        return self._transaction(put)

    def _remove_schedule(self, name: str) -> bool:
        def remove(cursor: Any) -> bool:
            cursor.execute("DELETE FROM schedules WHERE name = %s", (name,))
            return _notify_if_changed(cursor, "s")

        return self._transaction(remove)

    def _claim_run(self, name: str, at: float) -> bool:
        updated = self._execute(
            "UPDATE schedules SET last_run = %s WHERE name = %s AND last_run < %s", (at, name, at)
        )
        return bool(updated)

    def _note_run(self, name: str, run: dict[str, Any]) -> None:
        def note(cursor: Any) -> None:
            cursor.execute("SELECT runs FROM schedules WHERE name = %s FOR UPDATE", (name,))
            row = cursor.fetchone()
            if row is not None:
                runs = (json.loads(row[0]) + [run])[-RUNS_KEPT:]
                cursor.execute(
                    "UPDATE schedules SET runs = %s, skipped = skipped + %s WHERE name = %s",
                    (json.dumps(runs), int(run["outcome"] == SKIPPED), name),
                )

        self._transaction(note)

    def _add_delivery(self, url: str, body: bytes, now: float, owner: str | None) -> None:
        self._execute(
            "INSERT INTO deliveries (url, body, created_at, next_at, owner) VALUES (%s, %s, %s, %s, %s)",
            (url, body, now, now, owner),
        )

    def _due_deliveries(
        self, now: float, lease: float, most: int, owned: bool, busy: tuple[str, ...]
    ) -> list[Delivery]:
        """Due deliveries, held for C{lease} seconds: no other master takes them meanwhile."""
        rows = self._execute(
            due_deliveries_query("%s", owned, busy, " FOR UPDATE SKIP LOCKED"), (now + lease, now, *busy, most)
        )
        return [Delivery(i, url, bytes(body), n, created, owner) for i, url, body, n, created, owner in rows]

    def _queued_deliveries(self, owner: str) -> int:
        return self._execute("SELECT count(*) FROM deliveries WHERE owner = %s", (owner,))[0][0]

    def _delivery_done(self, delivery_id: int) -> None:
        self._execute("DELETE FROM deliveries WHERE id = %s", (delivery_id,))

    def _delivery_later(self, delivery_id: int, attempts: int, at: float) -> None:
        self._execute(
            "UPDATE deliveries SET attempts = %s, next_at = %s WHERE id = %s", (attempts, at, delivery_id)
        )

    # What masters share besides pools (see pcci.master.peers.peers): each call
    # below runs its underscored namesake in the store's thread.

    def send(
        self,
        mail: list[tuple[str, dict[str, Any]]],
        events: list[tuple[str, int, str, dict[str, Any]]],
        workers: list[tuple[str, dict[str, Any] | None]],
    ) -> Deferred[None]:
        return self._run(self._send, mail, events, workers)

    def mail_owner(self, pool_id: str, body: dict[str, Any], lease: float) -> Deferred[str | None]:
        return self._run(self._mail_owner, pool_id, body, lease)

    def receive(self, most: int) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._receive, most)

    def events_after(self, pool_id: str, after: int) -> Deferred[list[tuple[int, str, dict[str, Any]]]]:
        return self._run(self._events_after, pool_id, after)

    def workers(self, since: int) -> Deferred[list[tuple[str, str, dict[str, Any], int]]]:
        return self._run(self._workers, since)

    def lease(self, lease: float, judge: bool) -> Deferred[tuple[bool, int, list[tuple[dict[str, Any], list[Any]]]]]:
        return self._run(self._lease, lease, judge)

    def _send(
        self,
        mail: list[tuple[str, dict[str, Any]]],
        events: list[tuple[str, int, str, dict[str, Any]]],
        workers: list[tuple[str, dict[str, Any] | None]],
    ) -> None:
        """
        In one transaction: mail for other masters, events of this master's
        pools, and the rows of workers it holds (None: forget it); then
        C{NOTIFY} each change, by id.
        """

        def send(cursor: Any) -> None:
            wake = {f"m:{dest}" for dest, _ in mail} | {f"e:{pool}" for pool, *_ in events}
            if mail:
                cursor.executemany(
                    "INSERT INTO mail (dest, body) VALUES (%s, %s)",
                    [(dest, json.dumps(body)) for dest, body in mail],
                )
            if events:
                cursor.executemany(
                    "INSERT INTO events VALUES (%s, %s, %s, %s) ON CONFLICT (pool, id) DO UPDATE"
                    " SET name = EXCLUDED.name, body = EXCLUDED.body",
                    [(pool, id, name, json.dumps(body)) for pool, id, name, body in events],
                )
            for name, record in workers:
                wake.add("w")
                if record is None:
                    cursor.execute(
                        "DELETE FROM workers WHERE name = %s AND master = %s", (name, self.master)
                    )
                else:
                    cursor.execute(
                        "INSERT INTO workers VALUES (%s, %s, %s, nextval('workers_version'))"
                        " ON CONFLICT (name) DO UPDATE SET master = EXCLUDED.master,"
                        " record = EXCLUDED.record, version = EXCLUDED.version",
                        (name, self.master, json.dumps(record)),
                    )
            for payload in sorted(wake):
                cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

        self._transaction(send)

    def _mail_owner(self, pool_id: str, body: dict[str, Any], lease: float) -> str | None:
        """
        Mail the master running a pool, if one does and is alive (its lease
        current); its name, or None.
        """

        def mail(cursor: Any) -> str | None:
            cursor.execute(
                "INSERT INTO mail (dest, body) SELECT p.owner, %s FROM pools p"
                " JOIN masters m ON m.id = p.owner WHERE p.id = %s AND p.ended_at IS NULL"
                " AND m.seen > now() - make_interval(secs => %s) RETURNING dest",
                (json.dumps(body), pool_id, lease),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"m:{row[0]}"))
            return str(row[0])

        return self._transaction(mail)

    def _receive(self, most: int) -> list[dict[str, Any]]:
        """This master's mail, oldest first, at most C{most}: taken off the table."""
        rows = self._execute(
            "DELETE FROM mail WHERE id IN (SELECT id FROM mail WHERE dest = %s ORDER BY id"
            " LIMIT %s) RETURNING id, body",
            (self.master, most),
        )
        return [json.loads(body) for _, body in sorted(rows)]

    def _events_after(self, pool_id: str, after: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The events another master wrote of a running pool, past C{after}."""
        rows = self._execute(
            "SELECT id, name, body FROM events WHERE pool = %s AND id > %s ORDER BY id",
            (pool_id, after),
        )
        return [(id, name, json.loads(body)) for id, name, body in rows]

    def _workers(self, since: int) -> list[tuple[str, str, dict[str, Any], int]]:
        """Workers' rows changed since version C{since}: name, master, record, version."""
        rows = self._execute(
            "SELECT name, master, record, version FROM workers WHERE version > %s ORDER BY version",
            (since,),
        )
        return [(name, master, json.loads(record), version) for name, master, record, version in rows]

    def _lease(self, lease: float, judge: bool) -> tuple[bool, int, list[tuple[dict[str, Any], list[Any]]]]:
        """
        Renew this master's lease; with C{judge}, find the masters dead
        and take their running pools (one master at a time, and each pool
        by exactly one: the C{UPDATE} moves it from its owner).

        @return: whether this master still has its row (none: another
            judged it dead), how many other masters there are, and the
            records of the pools taken over, each with its events written.
        """

        def lease_(cursor: Any) -> tuple[bool, int, list[tuple[dict[str, Any], list[Any]]]]:
            cursor.execute("UPDATE masters SET seen = now() WHERE id = %s", (self.master,))
            if cursor.rowcount == 0:
                return False, 0, []
            claimed: list[tuple[dict[str, Any], list[Any]]] = []
            if judge and _once(cursor):
                cursor.execute(DEAD_MASTERS, {"me": self.master, "lease": lease})
                for dead, pid in cursor.fetchall():
                    cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))  # a lingering session
                    cursor.execute(
                        "UPDATE pools SET owner = %s WHERE owner = %s AND ended_at IS NULL"
                        " RETURNING id, record",
                        (self.master, dead),
                    )
                    for pool_id, text in sorted(cursor.fetchall()):
                        record = json.loads(text)
                        cursor.execute(
                            "SELECT id, name, body FROM events WHERE pool = %s ORDER BY id",
                            (pool_id,),
                        )
                        events = [(id, name, json.loads(body)) for id, name, body in cursor]
                        # Events the dead master wrote past its last record
                        # keep their ids: this one numbers on from the last.
                        record["last_event"] = max([record["last_event"], *(e[0] for e in events)])
                        claimed.append((record, events))
                    cursor.execute("DELETE FROM mail WHERE dest = %s", (dead,))
                    cursor.execute(OFFLINE, (dead,))
                    cursor.execute("DELETE FROM masters WHERE id = %s", (dead,))
                    cursor.execute("SELECT pg_notify(%s, 'w')", (CHANNEL,))
            cursor.execute("SELECT count(*) FROM masters WHERE id <> %s", (self.master,))
            return True, cursor.fetchone()[0], claimed

        return self._transaction(lease_)


def _notify_if_changed(cursor: Any, payload: str) -> bool:
    """After a statement: whether it changed a row; if so, C{NOTIFY} C{payload} with the commit."""
    if cursor.rowcount == 0:
        return False
    cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
    return True


def _once(cursor: Any) -> bool:
    """Take the once-only lock for this transaction, if no other master holds it."""
    cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCKS, ONCE_LOCK))
    return bool(cursor.fetchone()[0])


def _run(cursor: Any, query: str, args: Any, many: bool) -> Any:
    if many:
        cursor.executemany(query, args)
        return cursor
    cursor.execute(query, args)
    return cursor.fetchall() if cursor.description else cursor.rowcount


def check_database(url: str, master: str | None = None) -> None:
    """
    Reach the database, and create or check its schema; with C{master},
    check no other master of that name uses it.

    @raise StoreError: unreachable, not a pcci database, one of a newer
        pcci, or a master of that name there; nothing is changed then.
    """
    connection = _connect(url)
    try:
        _check_schema(connection, url)
        if master is not None:
            lock = master_lock(master)
            if not connection.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCKS, lock)).fetchone()[0]:
                raise StoreError(_name_taken(master, url))
    finally:
        connection.close()


def _connect(url: str) -> Any:
    """A connection to the database; one that cannot be made is a L{StoreError}."""
    import psycopg

    try:
        return psycopg.connect(url, **CONNECTION_SETTINGS)
    except psycopg.Error as e:
        raise StoreError(f"cannot reach the {_safe(url)}: {_first_line(e)}") from None


def _check_schema(connection: Any, url: str) -> None:
    """Create the schema, or check the one there, under the schema lock."""
    import psycopg

    try:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, SCHEMA_LOCK))
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
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'pools' AND column_name = 'submitted_by'"
            )
            if cursor.fetchone() is None:
                cursor.execute(SUBMITTED_BY)
            cursor.execute(
                "INSERT INTO meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
    except psycopg.Error as e:
        raise StoreError(f"cannot use the {_safe(url)}: {_first_line(e)}") from None


def _name_taken(master: str, url: str) -> str:
    return f"another master named {master!r} uses the {_safe(url)}: give each master a --name of its own"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
