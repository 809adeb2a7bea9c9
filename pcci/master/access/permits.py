"""
What a token may do with the cluster: which workers a request selects
within its scope, and which commands it may run.  The REST API asks for
each request, and the scheduler for each run of a schedule, as its
creator's token.  See C{docs/security.md}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcci.auth import APIToken
from pcci.master.cluster.jobspec import JobOptions
from pcci.master.cluster.queries import Query
from pcci.master.cluster.roster import Roster
from pcci.master.cluster.targets import select
from pcci.master.webhooks.outbound import AddressPolicy, RefusedURL, check_url
from pcci.nodes import fold
from pcci.scopes import Scope


class Forbidden(Exception):
    """What a token may not do; the message says what and why."""


def _scope(token: APIToken | None) -> Scope | None:
    return None if token is None else token.scope


def workers_in_scope(
    token: APIToken | None, roster: Roster, online: bool = True
) -> dict[str, Mapping[str, str]]:
    """The workers (to their labels) C{token} may use: online ones, or every one known."""
    workers: dict[str, Mapping[str, str]]
    if online:
        workers = dict(roster.online_labels())
    else:
        workers = dict(roster.known_labels())
    scope = _scope(token)
    return workers if scope is None else dict(scope.within(workers))


def select_workers(
    token: APIToken | None,
    roster: Roster,
    names: list[str] | None,
    labels: list[str],
    exclude: list[str],
    most: int,
    offline: bool = False,
    query: Query | None = None,
    empty_ok: bool = False,
) -> list[str]:
    """
    The workers a request selects among those C{token} may use (and, with
    C{offline}, those known but offline), whose facts match C{query}.

    @raise Forbidden: a worker named outside the token's scope.
    @raise TargetError: a malformed request, or one that selects nobody
        (unless C{empty_ok}).
    """
    if names:
        check_names(token, roster, names, most)
    return select(
        names, labels, exclude, workers_in_scope(token, roster, not offline), most, query,
        roster.index, empty_ok,
    )


def check_names(token: APIToken | None, roster: Roster, items: list[str], most: int) -> None:
    """
    @raise Forbidden: a worker C{items} name outright (not by a glob) is
        outside the token's scope: by its name, or the labels it is known to hold.
    @raise TargetError: a malformed item.
    """
    scope = _scope(token)
    if scope is None:
        return
    outside = scope.outside(items, roster.known_labels(), most)
    if outside:
        raise Forbidden(f"outside this token's scope: {fold(outside)}")


def check_run(
    token: APIToken | None,
    cmd: str,
    options: JobOptions,
    notify: Sequence[str] = (),
    policy: AddressPolicy = AddressPolicy(),
) -> None:
    """
    What a run asks beyond its workers, checked against C{token}: its
    command, options and C{notify} URLs.

    @raise Forbidden: a notify URL the master will not send to (for any
        token: see L{pcci.master.webhooks.outbound}) or the token's line does not
        grant; for a token limited to some commands, a command outside its
        patterns, C{env}, and C{stdin} or C{cwd} its line does not grant.
    """
    for url in notify:
        try:
            check_url(url, policy)
        except RefusedURL as e:
            raise Forbidden(f"notify {e}") from None
    scope = _scope(token)
    if scope is None:
        return
    for url in notify:
        if not scope.allows_notify(url):
            granted = ", ".join(repr(u) for u in scope.notify) or "none (its line has no notify=)"
            raise Forbidden(f"this token may not notify {url!r}: the URLs it may notify are {granted}")
    if not scope.commands:
        return
    if not scope.allows_command(cmd):
        allowed = ", ".join(repr(c) for c in scope.commands)
        raise Forbidden(f"this token may not run {cmd!r}: it may run {allowed}")
    if options.env:
        raise Forbidden("this token may run only its commands: env cannot be set")
    if options.stdin is not None and not scope.stdin:
        raise Forbidden("this token may run only its commands: stdin needs stdin=yes in its line")
    if options.cwd is not None and not scope.allows_cwd(options.cwd):
        raise Forbidden(
            f"this token may run only its commands: cwd {options.cwd!r} needs a cwd= of its line to match"
        )


def check_files(token: APIToken | None) -> None:
    """@raise Forbidden: a token limited to some commands moves no file."""
    scope = _scope(token)
    if scope is not None and scope.commands:
        raise Forbidden("this token may run only its commands: files need a token without commands=")
