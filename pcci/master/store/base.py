"""
The store's seam: what the master's state needs of storage (L{PoolStore}),
as Deferreds that never block the reactor, and the records that cross it.
The domain (L{pcci.master.cluster}) imports this module, never an engine:
L{pcci.master.store.sqlite} (one master) or L{pcci.master.store.postgres}
(several, sharing one history).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

from pcci.master.cluster.schedules import SchedulesStore


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


class IdentityTable(Protocol):
    """Join tokens and identities, shared by the masters of a store (see L{pcci.master.store.identities})."""

    def join_tokens(self) -> Deferred[list[StoredJoinToken]]: ...

    def add_join_token(self, token: StoredJoinToken) -> Deferred[None]: ...

    def revoke_join_token(self, token_id: str) -> Deferred[bool]: ...

    def all(self) -> Deferred[list[StoredIdentity]]: ...

    def get(self, name: str) -> Deferred[StoredIdentity | None]: ...

    def put(self, new: StoredIdentity) -> Deferred[bool]:
        """Keep it, unless another key owns its name: false then."""

    def join(
        self, token_id: str, digest: str, check: Callable[[dict[str, Any]], Refusal | None],
        new: Callable[[dict[str, Any]], StoredIdentity],
    ) -> Deferred[StoredIdentity | Refusal]:
        """Spend a use of a token on a new identity (see L{pcci.master.store.identities.join})."""

    def set_state(
        self, name: str, state: str, allowed: tuple[str, ...], note: dict[str, Any]
    ) -> Deferred[StoredIdentity | None]: ...


class PoolTable(Protocol):
    """The pools in the store (see L{pcci.master.store.pools})."""

    def save(self, pools: list[StoredPool]) -> Deferred[None]: ...

    def get(self, pool_id: str) -> Deferred[dict[str, Any] | None]: ...

    def claim(self, pool_id: str) -> Deferred[dict[str, Any] | str | None]: ...

    def page(self, query: PoolQuery, limit: int, ended_since: float = 0.0) -> Deferred[list[dict[str, Any]]]: ...

    def expire(self, ended_before: float) -> Deferred[int]: ...


class TokenTable(Protocol):
    """The API tokens made through the API (see L{pcci.master.store.tokens})."""

    def all(self) -> Deferred[list[StoredToken]]: ...

    def add(self, token: StoredToken) -> Deferred[bool]: ...

    def remove(self, name: str) -> Deferred[bool]: ...


class DeliveryTable(Protocol):
    """Webhook deliveries waiting (see L{pcci.master.store.deliveries})."""

    def add(self, url: str, body: bytes, now: float, owner: str | None = None) -> Deferred[None]:
        """Queue a delivery: the master's own (C{owner} None), or one of a token's pools (its name)."""

    def due(
        self, now: float, lease: float, most: int, owned: bool = False, busy: tuple[str, ...] = ()
    ) -> Deferred[list[Delivery]]:
        """
        Up to C{most} deliveries due now, the master's own or (C{owned})
        pools' but those of C{busy} owners, each held for C{lease} seconds
        (no other master takes it).
        """

    def queued(self, owner: str) -> Deferred[int]:
        """How many deliveries of C{owner}'s pools wait."""

    def done(self, delivery_id: int) -> Deferred[None]: ...

    def later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]: ...


class ShellTable(Protocol):
    """Shells and their recordings (see L{pcci.master.store.shells})."""

    def opened(self, shell_id: str, opened_at: float, by: str, record: dict[str, Any]) -> Deferred[None]: ...

    def record(self, shell_id: str, seq: int, data: bytes) -> Deferred[None]:
        """The recording's next piece."""

    def ended(self, shell_id: str, ended_at: float, record: dict[str, Any]) -> Deferred[None]: ...

    def page(self, limit: int, by: str | None = None) -> Deferred[list[dict[str, Any]]]:
        """The latest shells (of the token C{by}), newest first."""

    def get(self, shell_id: str) -> Deferred[dict[str, Any] | None]: ...

    def recording(self, shell_id: str) -> Deferred[bytes]:
        """Its pieces, joined in order."""

    def expire(self, before: float) -> Deferred[int]:
        """Forget the shells that ended before this time, and their recordings."""


class FactTable(Protocol):
    """Workers' facts (see L{pcci.master.store.facts})."""

    def put(self, told: list[tuple[str, float, dict[str, Any]]]) -> Deferred[None]:
        """Workers' facts, each (name, when told, facts), in one transaction."""

    def all(self) -> Deferred[dict[str, tuple[float, dict[str, Any]]]]: ...


class UpgradeTable(Protocol):
    """Workers' upgrade rollouts (see L{pcci.master.store.upgrades})."""

    def put(self, master: str, record: dict[str, Any]) -> Deferred[None]: ...

    def of(self, master: str, ended: int) -> Deferred[list[dict[str, Any]]]:
        """A master's rollouts not ended, and its last C{ended} that did, oldest first."""


class PoolStore(Protocol):
    """
    What the master needs of storage: a table each, whose calls run in order,
    each after those before it.
    """

    @property
    def pools(self) -> PoolTable: ...

    @property
    def tokens(self) -> TokenTable: ...

    @property
    def schedules(self) -> SchedulesStore: ...

    @property
    def deliveries(self) -> DeliveryTable: ...

    @property
    def identities(self) -> IdentityTable: ...

    @property
    def shells(self) -> ShellTable: ...

    @property
    def facts(self) -> FactTable: ...

    @property
    def upgrades(self) -> UpgradeTable: ...

    def open(self) -> list[dict[str, Any]]:
        """Open the store (at the master's start); the records of the pools not ended."""

    def ping(self) -> Deferred[None]:
        """Fails when the store cannot be used now (a database server gone)."""

    def close(self) -> None: ...
