"""
Join tokens and workers' identities in the store (L{Identities}).  Each
function below takes a DB-API cursor inside a transaction the engine
opened (see L{pcci.master.store.database.Database.transact}), and its
dialect.

An identity is a worker's name bound to its key's fingerprint, in one of
L{STATES}.  A name is owned while its identity is pending or approved: no
other key, and no worker holding only the cluster secret, may take it.
Revoked and denied identities stay, so their certificates stay refused,
until the name joins again with a new token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from pcci.master.store.base import Refusal, StoredIdentity, StoredJoinToken
from pcci.master.store.database import Database
from pcci.master.store.dialect import Dialect

#: What an identity may be.
STATES = ("pending", "approved", "denied", "revoked")

#: States that own their name.
OWNING = ("pending", "approved")


def join_tokens(cursor: Any, d: Dialect) -> list[StoredJoinToken]:
    d.execute(cursor, "SELECT id, digest, record FROM join_tokens ORDER BY id")
    return [StoredJoinToken(id, digest, json.loads(record)) for id, digest, record in cursor.fetchall()]


def add_join_token(cursor: Any, d: Dialect, token: StoredJoinToken) -> None:
    d.execute(
        cursor, "INSERT INTO join_tokens (id, digest, record) VALUES (?, ?, ?)",
        (token.id, token.digest, json.dumps(token.record)),
    )


def revoke_join_token(cursor: Any, d: Dialect, token_id: str) -> bool:
    d.execute(cursor, "SELECT record FROM join_tokens WHERE id = ?", (token_id,))
    row = cursor.fetchone()
    if row is None:
        return False
    record = {**json.loads(row[0]), "revoked": True}
    d.execute(cursor, "UPDATE join_tokens SET record = ? WHERE id = ?", (json.dumps(record), token_id))
    return True


def identities(cursor: Any, d: Dialect) -> list[StoredIdentity]:
    d.execute(cursor, "SELECT name, fingerprint, state, record FROM identities ORDER BY name")
    return [StoredIdentity(n, f, s, json.loads(r)) for n, f, s, r in cursor.fetchall()]


def identity(cursor: Any, d: Dialect, name: str) -> StoredIdentity | None:
    d.execute(cursor, f"SELECT name, fingerprint, state, record FROM identities WHERE name = ?{d.lock}", (name,))
    row = cursor.fetchone()
    return None if row is None else StoredIdentity(row[0], row[1], row[2], json.loads(row[3]))


def put_identity(cursor: Any, d: Dialect, new: StoredIdentity) -> bool:
    """Keep C{new}, unless another key owns its name (see L{OWNING}): false then."""
    old = identity(cursor, d, new.name)
    if old is not None and old.state in OWNING and old.fingerprint != new.fingerprint:
        return False
    d.execute(cursor, "DELETE FROM identities WHERE name = ?", (new.name,))
    d.execute(
        cursor, "INSERT INTO identities (name, fingerprint, state, record) VALUES (?, ?, ?, ?)",
        (new.name, new.fingerprint, new.state, json.dumps(new.record)),
    )
    return True


def join(
    cursor: Any, d: Dialect, token_id: str, digest: str,
    check: Callable[[dict[str, Any]], Refusal | None], new: Callable[[dict[str, Any]], StoredIdentity],
) -> StoredIdentity | Refusal:
    """
    Spend one use of a join token on a new identity, or nothing.

    C{check(record)} says what is wrong with the token for this join (None:
    nothing); C{new(record)} is the identity it makes.  The answer is that
    identity, or a refusal: C{(code, reason)}, the code C{token} or C{name}.
    """
    d.execute(cursor, f"SELECT digest, record FROM join_tokens WHERE id = ?{d.lock}", (token_id,))
    row = cursor.fetchone()
    if row is None or row[0] != digest:
        return "token", "unknown join token"
    record = json.loads(row[1])
    wrong = check(record)
    if wrong is not None:
        return wrong
    made = new(record)
    if not put_identity(cursor, d, made):
        return "name", f"name {made.name!r} belongs to another worker's key: revoke it first"
    record["used"] = record.get("used", 0) + 1
    d.execute(cursor, "UPDATE join_tokens SET record = ? WHERE id = ?", (json.dumps(record), token_id))
    return made


def set_state(cursor: Any, d: Dialect, name: str, state: str, allowed: tuple[str, ...],
              note: dict[str, Any]) -> StoredIdentity | None:
    """Move the identity of C{name} to C{state} from one of C{allowed}; None if it is in none."""
    old = identity(cursor, d, name)
    if old is None or old.state not in allowed:
        return None
    record = {**old.record, **note}
    d.execute(
        cursor, "UPDATE identities SET state = ?, record = ? WHERE name = ?",
        (state, json.dumps(record), name),
    )
    return StoredIdentity(name, old.fingerprint, state, record)


def _changed(cursor: Any, d: Dialect, name: str) -> None:
    """Tell the other masters a worker's identity moved (they recheck its connection)."""
    d.notify(cursor, f"i:{name}")


class Identities:
    """Join tokens and identities, shared by the masters of a store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def join_tokens(self) -> Deferred[list[StoredJoinToken]]:
        return self._db.run(join_tokens)

    def add_join_token(self, token: StoredJoinToken) -> Deferred[None]:
        return self._db.run(add_join_token, token)

    def revoke_join_token(self, token_id: str) -> Deferred[bool]:
        return self._db.run(revoke_join_token, token_id)

    def all(self) -> Deferred[list[StoredIdentity]]:
        return self._db.run(identities)

    def get(self, name: str) -> Deferred[StoredIdentity | None]:
        return self._db.run(identity, name)

    def put(self, new: StoredIdentity) -> Deferred[bool]:
        """Keep it, unless another key owns its name: false then."""

        def put(cursor: Any, d: Dialect) -> bool:
            kept = put_identity(cursor, d, new)
            if kept:
                _changed(cursor, d, new.name)
            return kept

        return self._db.run(put)

    def join(
        self, token_id: str, digest: str, check: Callable[[dict[str, Any]], Refusal | None],
        new: Callable[[dict[str, Any]], StoredIdentity],
    ) -> Deferred[StoredIdentity | Refusal]:
        """Spend a use of a token on a new identity (see L{join})."""

        def join_(cursor: Any, d: Dialect) -> StoredIdentity | Refusal:
            outcome = join(cursor, d, token_id, digest, check, new)
            if isinstance(outcome, StoredIdentity):
                _changed(cursor, d, outcome.name)
            return outcome

        return self._db.run(join_)

    def set_state(
        self, name: str, state: str, allowed: tuple[str, ...], note: dict[str, Any]
    ) -> Deferred[StoredIdentity | None]:
        def move(cursor: Any, d: Dialect) -> StoredIdentity | None:
            moved = set_state(cursor, d, name, state, allowed, note)
            if moved is not None:
                _changed(cursor, d, name)
            return moved

        return self._db.run(move)
