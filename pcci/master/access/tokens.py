"""
The API tokens a master accepts: those of its tokens file (read again on
SIGHUP) and those made through C{/tokens}, kept hashed in its store so
that every master sharing the store knows them.

A made token is 256 random bits: its SHA-256 is enough to keep it (no
one can find a token from its hash), and lets a presented token be found
with one lookup.  Its value is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from pcci.auth import NAME, APIToken, AuthConfigError, match_token
from pcci.master.cluster.model import rfc3339
from pcci.master.store.base import StoredToken, TokenTable
from pcci.scopes import Scope

log = Logger()


class TokenError(Exception):
    """A token that cannot be made or revoked; C{status} is the HTTP answer's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


class TokenBook:
    """The tokens of the file and of the store, looked up by value."""

    def __init__(
        self,
        tokens: list[APIToken],
        store: TokenTable | None = None,
        reread: Callable[[], list[APIToken]] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        #: The tokens file's.
        self.file_tokens = tokens
        self.store = store
        self._reread = reread
        self.wall = wall
        #: Those made through the API, by their SHA-256; and their records.
        self._made: dict[str, APIToken] = {}
        self._records: dict[str, dict[str, Any]] = {}

    def named(self, name: str) -> APIToken | None:
        """The token of this name (a schedule runs as the token that made it)."""
        for token in (*self.file_tokens, *self._made.values()):
            if token.name == name:
                return token
        return None

    def lookup(self, presented: bytes) -> APIToken | None:
        """The token presented, or None (the file's compared in constant time)."""
        return match_token(self.file_tokens, presented) or self._made.get(digest(presented))

    # Changes

    def reread(self) -> None:
        """Read the tokens file again (SIGHUP): a file that cannot be used changes nothing."""
        if self._reread is None:
            return
        try:
            self.file_tokens = self._reread()
        except AuthConfigError as e:
            log.error("tokens file not reread, the tokens in use stay: {why}", why=e)
            return
        log.info("tokens file reread: {count} tokens", count=len(self.file_tokens))

    def refresh(self) -> Deferred[None]:
        """Read the made tokens from the store again (another master made or revoked one)."""
        if self.store is None:
            return succeed(None)

        def read(rows: list[StoredToken]) -> None:
            made, records = {}, {}
            for row in rows:
                record = row.record
                scope = Scope.from_json(record.get("scope"))
                made[row.digest] = APIToken(b"", bool(record.get("read_only")), row.name, scope)
                records[row.name] = record
            self._made, self._records = made, records

        return self.store.all().addCallback(read)

    def _taken(self, name: str) -> bool:
        return name in self._records or any(t.name == name for t in self.file_tokens)

    def create(
        self, name: str, read_only: bool, scope: Scope | None, by: str | None
    ) -> Deferred[str]:
        """
        Make a token; fires with its value (shown this once).

        @raise TokenError: a bad or taken name, or no store to keep it.
        """
        if not NAME.match(name):
            raise TokenError(400, "name: 1 to 64 letters, digits and any of _ . @ : -")
        if self.store is None:
            raise TokenError(409, "this master has no store to keep tokens in")
        if self._taken(name):
            raise TokenError(409, f"a token named {name} exists already")
        value = secrets.token_urlsafe(32)
        record = {
            "read_only": read_only,
            "scope": None if scope is None else scope.to_json(),
            "created_at": self.wall(),
            "created_by": by,
        }

        def added(fresh: bool) -> Deferred[str]:
            if not fresh:
                raise TokenError(409, f"a token named {name} exists already")
            return self.refresh().addCallback(lambda _: value)

        row = StoredToken(name, digest(value.encode()), record)
        return self.store.add(row).addCallback(added)

    def revoke(self, name: str) -> Deferred[None]:
        """
        Forget a made token: refused from then on, here and on every master.

        @raise TokenError: no such made token (one of the file's is revoked
            by editing the file).
        """
        if any(t.name == name for t in self.file_tokens):
            raise TokenError(409, f"{name} is in the tokens file: remove it there, then send the master SIGHUP")
        if self.store is None:
            raise TokenError(404, f"no token named {name}")

        def removed(found: bool) -> Deferred[None]:
            if not found:
                raise TokenError(404, f"no token named {name}")
            return self.refresh()

        return self.store.remove(name).addCallback(removed)

    # Reading

    def listing(self) -> list[dict[str, Any]]:
        """Every token's name, where it comes from and what it may do: never a value."""
        listed = [{**t.describe(), "source": "file"} for t in self.file_tokens]
        for token in sorted(self._made.values(), key=lambda t: t.name):
            record = self._records[token.name]
            listed.append({
                **token.describe(),
                "source": "store",
                "created_at": rfc3339(record.get("created_at")),
                "created_by": record.get("created_by"),
            })
        return listed
