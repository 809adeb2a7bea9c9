"""
Join tokens and workers' identities in the store: the SQL both engines
run, written once.  Each function takes a DB-API cursor inside a
transaction the engine opened (see L{ThreadedStore._transact}), and
C{mark}, the engine's parameter mark.

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

from pcci.master.store.base import Refusal, StoredIdentity, StoredJoinToken

#: What an identity may be.
STATES = ("pending", "approved", "denied", "revoked")

#: States that own their name.
OWNING = ("pending", "approved")


def join_tokens(cursor: Any, mark: str) -> list[StoredJoinToken]:
    cursor.execute("SELECT id, digest, record FROM join_tokens ORDER BY id")
    return [StoredJoinToken(id, digest, json.loads(record)) for id, digest, record in cursor.fetchall()]


def add_join_token(cursor: Any, mark: str, token: StoredJoinToken) -> None:
    cursor.execute(
        f"INSERT INTO join_tokens (id, digest, record) VALUES ({mark}, {mark}, {mark})",
        (token.id, token.digest, json.dumps(token.record)),
    )


def revoke_join_token(cursor: Any, mark: str, token_id: str) -> bool:
    cursor.execute(f"SELECT record FROM join_tokens WHERE id = {mark}", (token_id,))
    row = cursor.fetchone()
    if row is None:
        return False
    record = {**json.loads(row[0]), "revoked": True}
    cursor.execute(f"UPDATE join_tokens SET record = {mark} WHERE id = {mark}", (json.dumps(record), token_id))
    return True


def identities(cursor: Any, mark: str) -> list[StoredIdentity]:
    cursor.execute("SELECT name, fingerprint, state, record FROM identities ORDER BY name")
    return [StoredIdentity(n, f, s, json.loads(r)) for n, f, s, r in cursor.fetchall()]


def identity(cursor: Any, mark: str, name: str, lock: str = "") -> StoredIdentity | None:
    cursor.execute(f"SELECT name, fingerprint, state, record FROM identities WHERE name = {mark}{lock}", (name,))
    row = cursor.fetchone()
    return None if row is None else StoredIdentity(row[0], row[1], row[2], json.loads(row[3]))


def put_identity(cursor: Any, mark: str, new: StoredIdentity, lock: str = "") -> bool:
    """Keep C{new}, unless another key owns its name (see L{OWNING}): false then."""
    old = identity(cursor, mark, new.name, lock)
    if old is not None and old.state in OWNING and old.fingerprint != new.fingerprint:
        return False
    cursor.execute(f"DELETE FROM identities WHERE name = {mark}", (new.name,))
    cursor.execute(
        f"INSERT INTO identities (name, fingerprint, state, record) VALUES ({mark}, {mark}, {mark}, {mark})",
        (new.name, new.fingerprint, new.state, json.dumps(new.record)),
    )
    return True


def join(
    cursor: Any, mark: str, lock: str, token_id: str, digest: str,
    check: Callable[[dict[str, Any]], Refusal | None], new: Callable[[dict[str, Any]], StoredIdentity],
) -> StoredIdentity | Refusal:
    """
    Spend one use of a join token on a new identity, or nothing.

    C{check(record)} says what is wrong with the token for this join (None:
    nothing); C{new(record)} is the identity it makes.  The answer is that
    identity, or a refusal: C{(code, reason)}, the code C{token} or C{name}.
    """
    cursor.execute(f"SELECT digest, record FROM join_tokens WHERE id = {mark}{lock}", (token_id,))
    row = cursor.fetchone()
    if row is None or row[0] != digest:
        return "token", "unknown join token"
    record = json.loads(row[1])
    wrong = check(record)
    if wrong is not None:
        return wrong
    made = new(record)
    if not put_identity(cursor, mark, made, lock):
        return "name", f"name {made.name!r} belongs to another worker's key: revoke it first"
    record["used"] = record.get("used", 0) + 1
    cursor.execute(f"UPDATE join_tokens SET record = {mark} WHERE id = {mark}", (json.dumps(record), token_id))
    return made


def set_state(cursor: Any, mark: str, lock: str, name: str, state: str, allowed: tuple[str, ...],
              note: dict[str, Any]) -> StoredIdentity | None:
    """Move the identity of C{name} to C{state} from one of C{allowed}; None if it is in none."""
    old = identity(cursor, mark, name, lock)
    if old is None or old.state not in allowed:
        return None
    record = {**old.record, **note}
    cursor.execute(
        f"UPDATE identities SET state = {mark}, record = {mark} WHERE name = {mark}",
        (state, json.dumps(record), name),
    )
    return StoredIdentity(name, old.fingerprint, state, record)
