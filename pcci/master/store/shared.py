"""
What masters on one PostgreSQL database share besides pools (see
L{pcci.master.peers.peers}): each master's lease (C{masters}), the workers
each holds (C{workers}), mail between them (C{mail}, woken by C{NOTIFY})
and the events of running pools (C{events}), for masters that show them.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect

#: The first key of pcci's advisory locks (two-key form: this, then one below).
LOCKS = 0x7063_6369  # "pcci"
#: Second keys: the schema's; the one that makes once-only work once (a
#: master's own lock is L{pcci.master.store.postgres.master_lock} of its name).
SCHEMA_LOCK = 1
ONCE_LOCK = 2

#: The channel masters C{NOTIFY} on; payloads name what changed (ids only):
#: C{m:<master>} mail for a master, C{e:<pool>} new events of a pool,
#: C{w} workers moved, C{t} API tokens made or revoked, C{s} schedules
#: made, changed or removed, C{i:<worker>} a worker's identity moved.
CHANNEL = "pcci"

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

#: What a renewal of the lease finds: whether this master still has its
#: row, how many other masters there are, the pools taken over from dead
#: ones (each record with its events), and their workers' upgrade rollouts.
Lease = tuple[bool, int, list[tuple[dict[str, Any], list[Any]]], list[dict[str, Any]]]


class Shared:
    """The shared tables, as the master named C{master} uses them."""

    def __init__(self, db: Database, master: str) -> None:
        self._db = db
        self.master = master
        #: This master's API as people reach it, written with each lease.
        self.url: str | None = None

    def send(
        self,
        mail: list[tuple[str, dict[str, Any]]],
        events: list[tuple[str, int, str, dict[str, Any]]],
        workers: list[tuple[str, dict[str, Any] | None]],
    ) -> Deferred[None]:
        """
        In one transaction: mail for other masters, events of this master's
        pools, and the rows of workers it holds (None: forget it); then
        C{NOTIFY} each change, by id.
        """

        def send(cursor: Any, d: Dialect) -> None:
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

        return self._db.run(send)

    def mail_owner(self, pool_id: str, body: dict[str, Any], lease: float) -> Deferred[str | None]:
        """
        Mail the master running a pool, if one does and is alive (its lease
        current); its name, or None.
        """

        def mail(cursor: Any, d: Dialect) -> str | None:
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

        return self._db.run(mail)

    def receive(self, most: int) -> Deferred[list[dict[str, Any]]]:
        """This master's mail, oldest first, at most C{most}: taken off the table."""

        def receive(cursor: Any, d: Dialect) -> list[dict[str, Any]]:
            cursor.execute(
                "DELETE FROM mail WHERE id IN (SELECT id FROM mail WHERE dest = %s ORDER BY id"
                " LIMIT %s) RETURNING id, body",
                (self.master, most),
            )
            return [json.loads(body) for _, body in sorted(cursor.fetchall())]

        return self._db.run(receive)

    def events_after(self, pool_id: str, after: int) -> Deferred[list[tuple[int, str, dict[str, Any]]]]:
        """The events another master wrote of a running pool, past C{after}."""

        def read(cursor: Any, d: Dialect) -> list[tuple[int, str, dict[str, Any]]]:
            cursor.execute(
                "SELECT id, name, body FROM events WHERE pool = %s AND id > %s ORDER BY id", (pool_id, after)
            )
            return [(id, name, json.loads(body)) for id, name, body in cursor.fetchall()]

        return self._db.run(read)

    def workers(self, since: int) -> Deferred[list[tuple[str, str, dict[str, Any], int]]]:
        """Workers' rows changed since version C{since}: name, master, record, version."""

        def read(cursor: Any, d: Dialect) -> list[tuple[str, str, dict[str, Any], int]]:
            cursor.execute(
                "SELECT name, master, record, version FROM workers WHERE version > %s ORDER BY version", (since,)
            )
            return [(name, master, json.loads(record), version) for name, master, record, version in cursor.fetchall()]

        return self._db.run(read)

    def url_of(self, master: str) -> Deferred[str | None]:
        """Where master C{master}'s API is reached, as it said (see L{url})."""

        def read(cursor: Any, d: Dialect) -> str | None:
            row = d.execute(cursor, "SELECT url FROM masters WHERE id = ?", (master,)).fetchone()
            return None if row is None else row[0]

        return self._db.run(read)

    def lease(self, lease: float, judge: bool) -> Deferred[Lease]:
        """
        Renew this master's lease; with C{judge}, find the masters dead
        and take their running pools and workers' upgrade rollouts (one
        master at a time, and each by exactly one: the C{UPDATE} moves it
        from its owner).

        @return: whether this master still has its row (none: another
            judged it dead), how many other masters there are, the records
            of the pools taken over, each with its events written, and those
            of the rollouts taken over.
        """

        def lease_(cursor: Any, d: Dialect) -> Lease:
            cursor.execute("UPDATE masters SET seen = now(), url = coalesce(%s, url) WHERE id = %s",
                           (self.url, self.master))
            if cursor.rowcount == 0:
                return False, 0, [], []
            claimed: list[tuple[dict[str, Any], list[Any]]] = []
            rollouts: list[dict[str, Any]] = []
            if judge and d.once(cursor):
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
                    cursor.execute(
                        "UPDATE upgrades SET master = %s WHERE master = %s AND ended_at IS NULL RETURNING record",
                        (self.master, dead),
                    )
                    rollouts += [json.loads(text) for (text,) in cursor.fetchall()]
                    cursor.execute("DELETE FROM mail WHERE dest = %s", (dead,))
                    cursor.execute(OFFLINE, (dead,))
                    cursor.execute("DELETE FROM masters WHERE id = %s", (dead,))
                    cursor.execute("SELECT pg_notify(%s, 'w')", (CHANNEL,))
            cursor.execute("SELECT count(*) FROM masters WHERE id <> %s", (self.master,))
            return True, cursor.fetchone()[0], claimed, rollouts

        return self._db.run(lease_)
