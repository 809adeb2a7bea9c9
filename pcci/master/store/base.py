"""
The store's seam: what the master's state needs of storage (L{PoolStore}),
as Deferreds that never block the reactor, and the records that cross it.
The domain (L{pcci.master.cluster}) imports this module, never an engine:
L{pcci.master.store.sqlite} (one master) or L{pcci.master.store.postgres}
(several, sharing one history).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

from pcci.master.cluster.schedules import Schedule


class StoreError(Exception):
    """The store cannot be used: its message says why and what to do."""


@dataclass(frozen=True)
class StoredPool:
    """A pool as written: its fields for queries, its summary and its record."""

    id: str
    started_at: float
    ended_at: float | None
    state: str
    cmd: str
    workers: list[str]
    summary: dict[str, Any]
    record: dict[str, Any]
    submitted_by: str | None = None
    schedule: str | None = None


@dataclass(frozen=True)
class PoolQuery:
    """Which pools C{GET /pools} asks for; None matches any."""

    #: Older than this pool id (ids sort by time).
    before: str | None = None
    #: C{running}, C{ok} or C{failed}.
    state: str | None = None
    #: With a job on this worker.
    worker: str | None = None
    #: Whose command holds this text.
    cmd: str | None = None
    #: Started with the token of this name.
    submitted_by: str | None = None
    #: Started by this schedule.
    schedule: str | None = None

    def matches(self, pool: Any) -> bool:
        """Whether a pool in memory is one of those asked for."""
        return (
            (self.before is None or pool.id < self.before)
            and (self.state is None or pool.state == self.state)
            and (self.worker is None or self.worker in pool.jobs)
            and (self.cmd is None or self.cmd in pool.cmd)
            and (self.submitted_by is None or pool.submitted_by == self.submitted_by)
            and (self.schedule is None or pool.schedule == self.schedule)
        )


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery waiting in the queue (see L{pcci.master.webhooks.notifier})."""

    id: int
    url: str
    body: bytes
    attempts: int
    created_at: float
    #: The token whose pool asked for it ("" without auth); None for the master's own hooks.
    owner: str | None = None


def due_deliveries_query(mark: str, owned: bool, busy: tuple[str, ...], lock: str = "") -> str:
    """The statement that leases due deliveries of one lane, in an engine's placeholders."""
    owners = "owner IS NOT NULL" if owned else "owner IS NULL"
    if busy:
        owners += f" AND owner NOT IN ({', '.join([mark] * len(busy))})"
    return (
        f"UPDATE deliveries SET next_at = {mark} WHERE id IN (SELECT id FROM deliveries"
        f" WHERE next_at <= {mark} AND {owners} ORDER BY next_at LIMIT {mark}{lock})"
        " RETURNING id, url, body, attempts, created_at, owner"
    )


@dataclass(frozen=True)
class StoredToken:
    """An API token made through the API: its SHA-256, never its value."""

    name: str
    digest: str
    #: C{read_only}, C{scope}, C{created_at}, C{created_by}.
    record: dict[str, Any]


@dataclass(frozen=True)
class StoredJoinToken:
    """A join token: its SHA-256, never its value (see L{pcci.identity.JoinToken})."""

    id: str
    digest: str
    #: C{name} (a glob), C{labels}, C{uses}, C{used}, C{expires_at},
    #: C{approve}, C{created_by}, C{created_at}; C{revoked}.
    record: dict[str, Any]


@dataclass(frozen=True)
class StoredIdentity:
    """A worker's name bound to its key (see L{pcci.master.store.identities})."""

    name: str
    #: Its key's SHA-256 (L{pcci.identity.key_fingerprint}).
    fingerprint: str
    state: str
    #: C{labels}, C{joined_at}, C{how} (token, enroll), C{token}, C{not_after}; C{reason}.
    record: dict[str, Any]


#: Why a join is refused: a code (C{token}, C{name}) and a sentence.
Refusal = tuple[str, str]


class IdentityStore(Protocol):
    """Join tokens and identities, shared by the masters of a store."""

    def join_tokens(self) -> Deferred[list[StoredJoinToken]]: ...

    def add_join_token(self, token: StoredJoinToken) -> Deferred[None]: ...

    def revoke_join_token(self, token_id: str) -> Deferred[bool]: ...

    def identities(self) -> Deferred[list[StoredIdentity]]: ...

    def identity(self, name: str) -> Deferred[StoredIdentity | None]: ...

    def put_identity(self, identity: StoredIdentity) -> Deferred[bool]:
        """Keep it, unless another key owns its name: false then."""

    def join(
        self, token_id: str, digest: str, check: Callable[[dict[str, Any]], Refusal | None],
        new: Callable[[dict[str, Any]], StoredIdentity],
    ) -> Deferred[StoredIdentity | Refusal]:
        """Spend a use of a token on a new identity (see L{pcci.master.store.identities.join})."""

    def set_identity_state(
        self, name: str, state: str, allowed: tuple[str, ...], note: dict[str, Any]
    ) -> Deferred[StoredIdentity | None]: ...


class PoolStore(Protocol):
    """What the master needs of storage.  Every call runs after those before it."""

    def open(self) -> list[dict[str, Any]]:
        """Open the store (at the master's start); the records of the pools not ended."""

    def save(self, pools: list[StoredPool]) -> Deferred[None]:
        """Write these pools (new or changed) in one transaction."""

    def get(self, pool_id: str) -> Deferred[dict[str, Any] | None]:
        """A pool's record, or None."""

    def claim(self, pool_id: str) -> Deferred[dict[str, Any] | str | None]:
        """
        The record of a pool not ended, for this master to carry on with;
        the name of the master that runs it, if another; None if it ended
        or is unknown.
        """

    def page(self, query: PoolQuery, limit: int, ended_since: float = 0.0) -> Deferred[list[dict[str, Any]]]:
        """
        Summaries of pools, newest first, filtered as C{GET /pools} says,
        leaving out those that ended before C{ended_since}.
        """

    def expire(self, ended_before: float) -> Deferred[int]:
        """Delete the pools that ended before this time; how many."""

    def tokens(self) -> Deferred[list[StoredToken]]:
        """The API tokens made through the API."""

    def add_token(self, token: StoredToken) -> Deferred[bool]:
        """Keep a new token; false if one of that name is kept already."""

    def remove_token(self, name: str) -> Deferred[bool]:
        """Forget the token of this name; false if there is none."""

    def schedules(self) -> Deferred[list[Schedule]]:
        """Every schedule, with its last run, skips and latest runs."""

    def put_schedule(self, schedule: Schedule, create: bool) -> Deferred[bool]:
        """Keep a new schedule (false if one of its name exists), or change one (false if none)."""

    def remove_schedule(self, name: str) -> Deferred[bool]:
        """Forget a schedule; false if there is none."""

    def claim_run(self, name: str, at: float) -> Deferred[bool]:
        """Move a schedule's C{last_run} to C{at} if earlier: true for the one caller that did."""

    def note_run(self, name: str, run: dict[str, Any]) -> Deferred[None]:
        """Keep a run's outcome (the latest few); count it if skipped."""

    # Webhook deliveries: see pcci.master.webhooks.notifier.DeliveryStore.

    def add_delivery(self, url: str, body: bytes, now: float, owner: str | None = None) -> Deferred[None]: ...

    def due_deliveries(
        self, now: float, lease: float, most: int, owned: bool = False, busy: tuple[str, ...] = ()
    ) -> Deferred[list[Delivery]]: ...

    def queued_deliveries(self, owner: str) -> Deferred[int]: ...

    def delivery_done(self, delivery_id: int) -> Deferred[None]: ...

    def delivery_later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]: ...

    def ping(self) -> Deferred[None]:
        """Fails when the store cannot be used now (a database server gone)."""

    def close(self) -> None: ...


def page_filters(
    query: PoolQuery,
    ended_since: float,
    *,
    mark: str,
    worker_test: str,
    cmd_test: str,
    worker: str | None,
) -> tuple[str, list[Any]]:
    """
    The C{WHERE} clause of a page of pools and its arguments, in an
    engine's words: its parameter C{mark}, and how it tests a pool's
    workers and command (C{worker}, the query's, as that test wants it).
    """
    where = [f"(ended_at IS NULL OR ended_at >= {mark})"]
    args: list[Any] = [ended_since]
    for value, test in (
        (query.before, f"id < {mark}"),
        (query.state, f"state = {mark}"),
        (worker, worker_test),
        (query.cmd, cmd_test),
        (query.submitted_by, f"submitted_by = {mark}"),
        (query.schedule, f"schedule = {mark}"),
    ):
        if value is not None:
            where.append(test)
            args.append(value)
    return " AND ".join(where), args




def schema_text(engine: str, version: int) -> str:
    """An engine's tables at a schema version: the data file C{schema/<engine>-v<version>.sql}."""
    return files(__package__).joinpath("schema", f"{engine}-v{version}.sql").read_text(encoding="utf-8")
