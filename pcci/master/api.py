"""
The master's REST API (Klein), with the routes of PCCI 1.x.

It reads and changes the L{ClusterState}; it never touches a connection.
Every answer is JSON, errors included: C{{"message": ...}} with a status
that says what went wrong.  See C{docs/api.md}.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

from klein import Klein
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from pcci.auth import APIToken
from pcci.master import dashboard
from pcci.master.streaming import EventStream
from pcci.master.guards import ARCHIVE_TYPE, TokenGuard, audit, refused
from pcci.master.jobspec import SpecError, parse_submission, parse_wait_offline
from pcci.master.metrics import CONTENT_TYPE, MasterMetrics
from pcci.master.openapi import openapi_document
from pcci.master.dispatch import SubmitError
from pcci.master.history import StoreUnavailable, TooManyPools
from pcci.master.fetches import Fetch
from pcci.master.model import RETRIED_STATES, Pool, rfc3339
from pcci.master.schedules import (
    Schedule,
    ScheduleError,
    Scheduler,
    check_cron,
    check_name,
    check_timezone,
)
from pcci.master.outbound import AddressPolicy
from pcci.master.pushes import MAX_ENTRIES, Archive, ArchiveError, Push, Spool, read_archive
from pcci.master.state import ClusterState
from pcci.master.streaming import JSONStream, json_list_pieces, json_object_pieces
from pcci.master.store import PoolQuery
from pcci.master import permits
from pcci.master.targets import POOL_LIMIT, TargetError, resolve
from pcci.master.tokens import TokenBook, TokenError
from pcci.nodes import fold
from pcci.scopes import GRANTS, Scope, ScopeError

log = Logger()

#: Longest request body accepted by default, in bytes.
MAX_BODY = 1024 * 1024

#: Longest command accepted by default, in characters.
MAX_COMMAND = 64 * 1024

#: The most a command may be: escaped six bytes a character at worst, a
#: command must still fit one wire frame.
COMMAND_CEILING = 128 * 1024

#: Most workers in one pool, by default.
MAX_WORKERS = 1024

#: Longest long poll, in seconds.
MAX_WAIT = 60.0

#: Pools in one page of C{GET /pools}: by default, and at most.
DEFAULT_PAGE = 100
MAX_PAGE = 1000

#: A schedule's own fields; its others are those of C{POST /job}.
SCHEDULE_FIELDS = {"name", "cron", "timezone", "paused", "overlap", "catch_up"}
JOB_FIELDS = {
    "cmd", "workers", "labels", "exclude", "timeout", "env", "cwd", "stdin", "batch",
    "batch_wait", "max_failures", "wait_offline", "notify", "notify_on",
}

#: What C{GET /pools?state=} may ask for.
POOL_STATES = ("running", "ok", "failed")


class APIError(Exception):
    """An error answered as C{{"message": ...}} with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(request: IRequest, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8") + b"\n"


def _read_json(request: IRequest, max_body: int, required: bool = True) -> Any:
    """
    The request's JSON body, or None when it has none and none is required.

    @raise APIError: 413, 415 or 400 naming the problem.
    """
    body = request.content.read(max_body + 1)
    if len(body) > max_body:
        raise APIError(413, f"request body over {max_body} bytes")
    if not body.strip():
        if required:
            raise APIError(400, "a JSON body is required")
        return None
    content_type = request.getHeader(b"content-type") or b""
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise APIError(415, "send the body as JSON with Content-Type: application/json")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise APIError(400, f"invalid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "invalid JSON: nested too deeply") from None


def _object(body: Any) -> dict[str, Any]:
    """A JSON body that must be an object ({} for no body)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def _read_object(request: IRequest, max_body: int, required: bool = True) -> dict[str, Any]:
    """The request's JSON body, which must be an object ({} when it has none and none is required)."""
    return _object(_read_json(request, max_body, required))


def _string_list(value: Any, what: str, most: int) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise APIError(400, f"{what} must be a non-empty list of worker names")
    if len(value) > most:
        raise APIError(400, f"{what} names more than {most} workers" + POOL_LIMIT)
    return value


def _pool_pieces(pool: Pool, results: bool = True) -> Iterator[bytes]:
    """A pool's JSON in pieces: its fields, then one job a piece."""
    return json_object_pieces(pool.summary(), "jobs", pool.jobs_json(results))


#: Seconds a new pool's answer waits for the store before it says why.
STORE_WAIT = 10.0


def _not_stored(result: Any, timeout: float) -> None:
    raise APIError(
        503,
        f"the store did not answer within {timeout:g} s: the pool started, and is kept"
        " once the store is back (see GET /pools then)",
    )


def _started(pool: Pool) -> str:
    return f"pool started on {len(pool.jobs)} workers"


def _submitted_pieces(pool: Pool, message: str) -> Iterator[bytes]:
    """C{POST /job?wait}'s answer: the usual fields, and the pool."""
    yield json.dumps({"pool_id": pool.id, "message": message}).encode()[:-1]
    yield b', "pool": '
    yield from _pool_pieces(pool)
    yield b"}"


def _token_error(failure: Failure) -> None:
    failure.trap(TokenError)
    error = failure.value
    raise APIError(error.status, str(error))


def _token(request: IRequest) -> APIToken | None:
    """The token the request came with (None without auth)."""
    return getattr(request, "api_token", None)


def _scope(request: IRequest) -> Scope | None:
    """What the request's token is limited to (None: nothing)."""
    token = _token(request)
    return None if token is None else token.scope


def _who(request: IRequest) -> str | None:
    """The name of the token the request came with (None without auth)."""
    token = _token(request)
    return token.name if token is not None else None


def _last_event_id(request: IRequest) -> int:
    """Where an event stream resumes: C{Last-Event-ID}, or C{?after=}."""
    header = request.getHeader(b"last-event-id")
    text = header.decode("ascii", "replace") if header is not None else _text_arg(request, "after")
    if text is None or not text.strip():
        return 0
    try:
        after = int(text)
    except ValueError:
        raise APIError(400, "Last-Event-ID (or after) must be an event id") from None
    if after < 0:
        raise APIError(400, "Last-Event-ID (or after) must be an event id")
    return after


def _text_arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, f"{name} must be UTF-8 text") from None


def _absolute_path_arg(request: IRequest, name: str) -> str:
    """A query argument naming a place on the workers: an absolute path."""
    path = _text_arg(request, name)
    if not path or not path.startswith("/") or "\0" in path:
        raise APIError(400, f"{name} must be an absolute path on the workers")
    return path


#: What C{owner} may be: a user, and a group, by name.
VALID_OWNER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31})?\Z")


def _list_arg(request: IRequest, name: str) -> list[str]:
    """A query argument given once or more (each may hold a comma list)."""
    try:
        return [value.decode("utf-8") for value in request.args.get(name.encode(), []) if value]
    except UnicodeDecodeError:
        raise APIError(400, f"{name} must be UTF-8 text") from None


def _int_arg(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    text = _text_arg(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise APIError(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}")
    return value


def _bool_arg(request: IRequest, name: str, default: bool) -> bool:
    text = _text_arg(request, name)
    if text is None:
        return default
    if text.lower() not in ("true", "false", "1", "0"):
        raise APIError(400, f"{name} must be true or false")
    return text.lower() in ("true", "1")


def _wait_seconds(request: IRequest) -> float:
    raw = request.args.get(b"wait", [b"0"])[0]
    try:
        seconds = float(raw)
    except ValueError:
        raise APIError(400, "wait must be a number of seconds") from None
    if not seconds >= 0:  # also refuses NaN
        raise APIError(400, "wait must be a number of seconds")
    return min(seconds, MAX_WAIT)


class MasterAPI:
    """The REST routes, over one L{ClusterState}."""

    app = Klein()

    def __init__(
        self,
        state: ClusterState,
        metrics: MasterMetrics | None = None,
        max_body: int = MAX_BODY,
        max_command: int = MAX_COMMAND,
        max_workers: int = MAX_WORKERS,
        notify_policy: AddressPolicy = AddressPolicy(),
        max_push_entries: int = MAX_ENTRIES,
    ) -> None:
        self.clock = state.clock
        self.state = state
        self.roster = state.roster
        self.history = state.history
        self.dispatcher = state.dispatcher
        self.max_body = max_body
        self.max_command = min(max_command, COMMAND_CEILING)
        self.max_workers = max_workers
        #: Where pools' notify URLs may point (see L{pcci.master.outbound}).
        self.notify_policy = notify_policy
        self.max_push_entries = max_push_entries
        self.metrics = metrics or MasterMetrics(state)
        self.dashboard = dashboard.StaticFiles()
        #: The tokens requests need (set by L{resource}); None: no auth.
        self.tokens: TokenBook | None = None
        #: The schedules' timers (set by the master's builder); None: no schedules.
        self.scheduler: Scheduler | None = None

    def resource(self, tokens: TokenBook | None) -> IResource:
        """The API as a web resource; with C{tokens}, only for their bearers."""
        self.tokens = tokens
        return TokenGuard(self.app.resource(), tokens)

    # What a token may see and do (see pcci.scopes)

    @staticmethod
    def _refuse(request: IRequest, message: str, status: int = 403) -> APIError:
        """A refusal to raise, written down as an audit line."""
        refused(request, status, message, _token(request))
        return APIError(status, message)

    @staticmethod
    def _may_see(request: IRequest, owner: str | None) -> bool:
        """Whether the request's token may see what C{owner} made: a scoped one sees only its own."""
        token = _token(request)
        return token is None or token.scope is None or owner == token.name

    def _select(
        self,
        request: IRequest,
        names: list[str] | None,
        labels: list[str],
        exclude: list[str],
        offline: bool = False,
    ) -> list[str]:
        """The workers a request selects, within its token's scope (see L{permits})."""
        try:
            return permits.select_workers(
                _token(request), self.roster, names, labels, exclude, self.max_workers, offline
            )
        except permits.Forbidden as e:
            raise self._refuse(request, str(e)) from None
        except TargetError as e:
            raise APIError(400, str(e)) from None

    def _permit(self, request: IRequest, check: Callable[..., None], *args: Any) -> None:
        """Run a check of L{permits}: what it forbids is a 403, and an audit line."""
        try:
            check(_token(request), *args)
        except permits.Forbidden as e:
            raise self._refuse(request, str(e)) from None

    @app.route("/", methods=["GET"])
    def page(self, request: IRequest) -> IResource:
        """The dashboard (see L{pcci.master.dashboard})."""
        return self.dashboard

    @app.route("/ui/", branch=True, methods=["GET"])
    def page_files(self, request: IRequest) -> IResource:
        return self.dashboard

    @app.route("/whoami", methods=["GET"])
    def whoami(self, request: IRequest) -> bytes:
        """The token the request came with: its name, and what it may do."""
        token = _token(request)
        if token is None:
            body = {"name": None, "read_only": False, "scope": None}
        else:
            body = token.describe()
        body["auth"] = self.tokens is not None
        body["admin"] = token is None or token.admin
        return _json(request, body)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """For load balancers and monitoring: needs no token, tells nothing."""
        return _json(request, {"status": "ok"})

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return _json(request, openapi_document())

    def _pool(self, request: IRequest, pool_id: str) -> Deferred[Pool]:
        """A pool the request's token may see (another's is as unknown to a scoped token)."""

        def found(pool: Pool | None) -> Pool:
            missing = f"no pool {pool_id} (unknown, or expired)"
            if pool is None:
                raise APIError(404, missing)
            if not self._may_see(request, pool.submitted_by):
                raise self._refuse(request, missing, 404)
            return pool

        return self.history.find(pool_id).addCallback(found)

    @app.route("/job", methods=["POST"])
    def submit(self, request: IRequest) -> Deferred[bytes]:
        """
        Start a pool on the workers the body selects; with C{?wait=S}, answer
        once it has ended or S seconds passed, with the pool.  With
        C{?dry_run=true}, check the body and tell which workers it selects,
        starting nothing.
        """
        wait = _wait_seconds(request)
        dry_run = _bool_arg(request, "dry_run", False)
        body = _read_json(request, self.max_body)
        try:
            asked = parse_submission(body, self.max_command, self.max_workers)
        except SpecError as e:
            raise APIError(400, str(e)) from None
        self._permit(request, permits.check_run, asked.cmd, asked.options, asked.notify, self.notify_policy)
        offline = asked.wait_offline is not None
        workers = self._select(request, asked.workers, asked.labels, asked.exclude, offline)
        if dry_run:
            answer: dict[str, Any] = {"workers": workers, "message": f"would start on {len(workers)} workers"}
            if offline:
                answer["offline"] = [name for name in workers if name not in self.roster.links]
            return succeed(_json(request, answer))
        return self._start(
            request,
            wait,
            lambda: self.dispatcher.submit(
                asked.cmd, workers, asked.options, asked.rollout, _who(request),
                wait_offline=asked.wait_offline, notify=asked.notify, notify_on=asked.notify_on,
            ),
        )

    def _start(
        self, request: IRequest, wait: float, submit: Callable[[], Deferred[Pool]]
    ) -> Deferred[bytes]:
        """Start a pool, answered once stored: with C{?wait}, once ended (or C{wait} passed)."""
        try:
            # Answered once stored: a pool id given out survives a crash.  (Its
            # jobs' ends are safe with their workers until the master stores them.)
            d = submit()
        except SubmitError as e:
            raise APIError(400, str(e)) from None
        except TooManyPools as e:
            raise APIError(503, f"{e}: try again when some have finished") from None
        except StoreUnavailable as e:
            raise APIError(503, f"{e}: no new pool is started until it is back") from None
        # A store that stops answering now holds the pool (its jobs run); say so in time.
        d.addTimeout(STORE_WAIT, self.clock, onTimeoutCancel=_not_stored)
        # Logged once stored, which also lets the run frames go out first.
        d.addCallback(self._audit_start, _who(request))
        if not request.args.get(b"wait"):
            return d.addCallback(
                lambda pool: _json(request, {"pool_id": pool.id, "message": _started(pool)})
            )
        d.addCallback(self.dispatcher.wait, wait)
        return d.addCallback(
            lambda pool: JSONStream(request, _submitted_pieces(pool, _started(pool))).start()
        )

    @app.route("/files", methods=["POST"])
    def push(self, request: IRequest) -> Deferred[bytes]:
        """
        Push the files of a tar body to the workers the query selects, under
        C{dest} (C{pcci cp}): a pool whose jobs are the transfers.
        """
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != ARCHIVE_TYPE:
            raise APIError(415, "send the files as a tar archive with Content-Type: application/x-tar")
        dest = _absolute_path_arg(request, "dest")
        mode = _text_arg(request, "mode")
        try:
            chosen = None if mode is None else int(mode, 8)
        except ValueError:
            chosen = -1
        if chosen is not None and not 0 <= chosen <= 0o7777:
            raise APIError(400, "mode must be octal, 0 to 7777")
        owner = _text_arg(request, "owner")
        if owner is not None and not VALID_OWNER.match(owner):
            raise APIError(400, "owner must be USER or USER:GROUP")
        wait = _wait_seconds(request)
        self._permit(request, permits.check_files)
        workers = self._selected(request)
        # The spooled body is the push's now: the request lets it go.
        spool, request.content = Spool(request.content), io.BytesIO()

        def archived(archive: Archive) -> Deferred[bytes]:
            mkdir = _bool_arg(request, "mkdir", False)
            push = Push(self.dispatcher, spool, archive, dest, mkdir, chosen, owner, self.state.pushes)
            cmd = f"push {len(archive.entries)} entries ({archive.size} bytes) to {dest}"
            try:
                return self._start(
                    request, wait, lambda: self.dispatcher.submit(
                        cmd, workers, submitted_by=_who(request), start=push.start, kind="push"
                    )
                )
            except APIError:
                spool.close()
                raise

        def refused(failure: Failure) -> None:
            spool.close()
            failure.trap(ArchiveError)
            raise APIError(400, failure.getErrorMessage())

        return deferToThread(read_archive, spool, self.max_push_entries).addCallbacks(archived, refused)

    @staticmethod
    def _audit_start(pool: Pool, who: str | None) -> Pool:
        audit.info(
            "{who} started pool {pool} on {workers}: {cmd}",
            who=who or "anyone (no auth)",
            pool=pool.id,
            workers=",".join(pool.jobs),
            cmd=pool.cmd,
        )
        return pool

    def _waited(self, request: IRequest, pool_id: str) -> Deferred[Pool]:
        wait = _wait_seconds(request)
        return self._pool(request, pool_id).addCallback(self.dispatcher.wait, wait)

    @app.route("/fetches", methods=["POST"])
    def fetch(self, request: IRequest) -> Deferred[bytes]:
        """
        Read C{path} on the workers the query selects (C{pcci fetch}): a
        pool whose jobs gather what each worker sends into an archive.
        """
        path = _absolute_path_arg(request, "path")
        recursive = _bool_arg(request, "recursive", False)
        self._permit(request, permits.check_files)
        workers = self._selected(request)
        fetch = Fetch(self.dispatcher, self.clock, path, recursive, self.state.fetches)
        cmd = f"fetch {path}" + (" (recursive)" if recursive else "")
        return self._start(
            request,
            _wait_seconds(request),
            lambda: self.dispatcher.submit(
                cmd, workers, submitted_by=_who(request), start=fetch.start, kind="fetch"
            ),
        )

    @app.route("/fetches/<string:pool_id>/<string:worker>", methods=["GET"])
    def fetched(self, request: IRequest, pool_id: str, worker: str) -> Deferred[bytes]:
        """What a worker sent for a fetch, as a tar archive, once its job has ended."""
        fetch = self.state.fetches.get(pool_id)
        archive = None if fetch is None else fetch.archives.get(worker)
        pool = self.history.pools.get(pool_id)
        if fetch is None or archive is None or pool is None or not self._may_see(request, pool.submitted_by):
            raise APIError(404, f"no archive of {worker} for pool {pool_id} (unknown, or expired)")
        if archive.job.status is None:
            raise APIError(409, f"{worker} is still sending: ask again once its job has ended")
        archive.file.seek(0, 2)
        size = archive.file.tell()
        archive.file.seek(0)
        request.setHeader(b"Content-Type", b"application/x-tar")
        request.setHeader(b"Content-Length", str(size).encode())
        # Read from the local disk as the client takes it: bounded reads.
        return FileSender().beginFileTransfer(archive.file, request).addCallback(lambda _: b"")

    def _selected(self, request: IRequest) -> list[str]:
        """The workers a query's C{workers}, C{labels} and C{exclude} select."""
        names, labels = _list_arg(request, "workers"), _list_arg(request, "labels")
        if not names and not labels:
            raise APIError(400, "choose workers with workers= or labels=")
        return self._select(request, names or None, labels, _list_arg(request, "exclude"))

    @app.route("/pool/<string:pool_id>", methods=["GET"])
    def pool_as_list(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """PCCI 1.x's answer: a list holding the pool."""
        d = self._waited(request, pool_id)
        return d.addCallback(
            lambda pool: JSONStream(request, json_list_pieces([_pool_pieces(pool)])).start()
        )

    @app.route("/pools/<string:pool_id>", methods=["GET"])
    def pool(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """The pool; C{results=false} leaves its jobs' outputs out."""
        results = _bool_arg(request, "results", True)
        d = self._waited(request, pool_id)
        return d.addCallback(
            lambda pool: JSONStream(request, _pool_pieces(pool, results)).start()
        )

    @app.route("/pools/<string:pool_id>/events", methods=["GET"])
    def events(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """The pool's events as server-sent events, from C{Last-Event-ID} on."""
        after = _last_event_id(request)
        return self._pool(request, pool_id).addCallback(
            lambda pool: EventStream(request, pool, after, self.clock, _pool_pieces).start()
        )

    @app.route("/pools", methods=["GET"])
    def pools(self, request: IRequest) -> Deferred[bytes]:
        """
        Pools newest first, a page at a time (C{limit}, then C{before} the
        last id seen, also given in a C{Link: rel="next"} header), filtered
        by C{state}, C{worker} and C{cmd}; C{results=false} leaves outputs out.
        """
        limit = _int_arg(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        state = _text_arg(request, "state")
        if state is not None and state not in POOL_STATES:
            raise APIError(400, "state must be one of " + ", ".join(POOL_STATES))
        results = _bool_arg(request, "results", True)
        submitted_by = _text_arg(request, "submitted_by")
        token = _token(request)
        if token is not None and token.scope is not None:
            if submitted_by not in (None, token.name):
                raise self._refuse(request, "a scoped token sees only the pools it started")
            submitted_by = token.name
        query = PoolQuery(
            before=_text_arg(request, "before"),
            state=state,
            worker=_text_arg(request, "worker"),
            cmd=_text_arg(request, "cmd"),
            submitted_by=submitted_by,
            schedule=_text_arg(request, "schedule"),
        )
        d = self.history.page(query, limit + 1)

        def answer(page: list[Pool | dict[str, Any]]) -> Deferred[bytes]:
            if len(page) > limit:
                page = page[:limit]
                query = {
                    k.decode(): v[0].decode("utf-8", "replace")
                    for k, v in request.args.items()
                    if k != b"before"
                }
                last = page[-1]
                query["before"] = last.id if isinstance(last, Pool) else last["id"]
                request.setHeader(
                    b"Link", f'</pools?{urlencode(query)}>; rel="next"'.encode()
                )
            pieces = json_list_pieces(self._listed(entry, results) for entry in page)
            return JSONStream(request, pieces).start()

        return d.addCallback(answer)

    def _listed(self, entry: Pool | dict[str, Any], results: bool) -> Iterator[Any]:
        """A listed pool's pieces: from memory, or its stored summary, or
        (with outputs) its record, loaded when the stream gets to it."""
        if isinstance(entry, Pool):
            yield from _pool_pieces(entry, results)
        elif not results:
            yield json.dumps(entry).encode()
        else:
            loading: Deferred[Iterator[bytes]] = self.history.find(entry["id"]).addCallback(
                lambda pool: _pool_pieces(pool) if pool is not None else iter([json.dumps(entry).encode()])
            )
            yield loading

    @app.route("/workers", methods=["GET"])
    def workers(self, request: IRequest) -> bytes:
        """Connected workers; with C{?all=true}, also those seen and now offline."""
        every = _bool_arg(request, "all", False)
        scope = _scope(request)
        records = [
            r for r in self.roster.records.values()
            if (every or r.online) and (scope is None or scope.allows_worker(r.name, r.labels))
        ]
        return _json(
            request,
            [r.to_json(self.roster.running_jobs(r.name)) for r in records],
        )

    @app.route("/workers/<string:name>", methods=["GET"])
    def worker(self, request: IRequest, name: str) -> bytes:
        """One worker, its latest figures and their history."""
        record = self.roster.records.get(name)
        scope = _scope(request)
        if record is None or (scope is not None and not scope.allows_worker(name, record.labels)):
            raise APIError(404, f"no worker {name} has been seen")
        body = record.to_json(self.roster.running_jobs(name))
        body["history"] = record.history.columns()
        return _json(request, body)

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: IRequest) -> bytes:
        """Prometheus text format."""
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        return self.metrics.render()

    @app.route("/kill/<string:pool_id>", methods=["PUT"])
    def kill(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """Kill a pool's jobs: all, or those its C{workers} select."""
        body = _read_json(request, self.max_body, required=False)
        return self._pool(request, pool_id).addCallback(self._kill, request, body)

    def _kill(self, pool: Pool, request: IRequest, body: Any) -> Deferred[bytes]:
        pool_id = pool.id
        items = _object(body).get("workers")
        try:
            workers = None
            if items is not None:
                workers = resolve(
                    _string_list(items, "workers", self.max_workers),
                    pool.jobs,
                    self.max_workers,
                    missing=f"workers not in pool {pool_id}",
                )
            if self.history.is_elsewhere(pool):
                # Only masters sharing PostgreSQL show each other's pools.
                assert self.state.peers is not None
                asking = self.state.peers.kill_elsewhere(pool, workers)
            else:
                asking = succeed(self.dispatcher.kill(pool_id, workers))
        except (SubmitError, TargetError) as e:
            raise APIError(400, str(e)) from None

        def asked(names: list[str]) -> bytes:
            audit.info(
                "{who} killed pool {pool} on {workers}",
                who=_who(request) or "anyone (no auth)",
                pool=pool_id,
                workers=",".join(names) or "(nothing left running)",
            )
            return _json(
                request,
                {"pool_id": pool_id, "workers": names, "message": f"kill sent to {len(names)} jobs"},
            )

        def nobody(failure: Failure) -> bytes:
            failure.trap(LookupError)
            raise APIError(503, f"{failure.getErrorMessage()}: try again in a few seconds")

        return asking.addCallbacks(asked, nobody)

    @app.route("/pools/<string:pool_id>/retry", methods=["POST"])
    def retry(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """
        Run a pool's command again on the workers whose job ended other
        than ok (or in the C{states} the body lists): a new pool, answered
        as C{POST /job} answers, that carries C{retry_of}.
        """
        body = _read_object(request, self.max_body, required=False)
        unknown = set(body) - {"states", "wait_offline"}
        if unknown:
            raise APIError(400, "a retry takes only states and wait_offline, not " + ", ".join(sorted(unknown)))
        states = body.get("states", list(RETRIED_STATES))
        if (
            not isinstance(states, list)
            or not states
            or not all(isinstance(state, str) and state in RETRIED_STATES for state in states)
        ):
            raise APIError(400, "states must be a non-empty list of: " + ", ".join(RETRIED_STATES))
        try:
            wait_offline = parse_wait_offline(body)
        except SpecError as e:
            raise APIError(400, str(e)) from None
        wait = _wait_seconds(request)
        return self._pool(request, pool_id).addCallback(
            self._retry, request, states, wait_offline, wait
        )

    def _retry(
        self, pool: Pool, request: IRequest, states: list[str], wait_offline: float | None, wait: float
    ) -> Deferred[bytes]:
        if pool.kind != "run":
            raise APIError(409, f"pool {pool.id} moved files: run pcci cp or pcci fetch again instead")
        workers = [name for name, job in pool.jobs.items() if job.state in states]
        if not workers:
            raise APIError(409, f"nothing to retry: no job of pool {pool.id} is {' or '.join(states)}")
        if wait_offline is None:
            wait_offline = pool.wait_offline
        offline = [name for name in workers if name not in self.roster.links]
        if offline and wait_offline is None:
            raise APIError(
                409,
                f"workers offline: {fold(offline)}: retry with wait_offline to run there"
                " when they come back",
            )
        self._permit(request, permits.check_run, pool.cmd, pool.options, pool.notify, self.notify_policy)
        self._select(request, workers, [], [], offline=wait_offline is not None)
        return self._start(
            request,
            wait,
            lambda: self.dispatcher.submit(
                pool.cmd, workers, pool.options, pool.rollout, _who(request),
                retry_of=pool.id, wait_offline=wait_offline, notify=pool.notify, notify_on=pool.notify_on,
            ),
        )

    # Schedules (see pcci.master.schedules)

    def _schedules_store(self) -> Any:
        if self.scheduler is None or self.history.store is None:
            raise APIError(409, "this master has no store to keep schedules in")
        return self.history.store

    def _schedule(self, request: IRequest, name: str) -> Deferred[Schedule]:
        """A schedule the request's token may see (a scoped token sees its own)."""

        names = {name, self._own_name(request, name)}

        def found(schedules: list[Schedule]) -> Schedule:
            for schedule in schedules:
                if schedule.name in names and self._may_see(request, schedule.created_by):
                    return schedule
            raise APIError(404, f"no schedule {name}")

        return self._schedules_store().schedules().addCallback(found)

    @staticmethod
    def _own_name(request: IRequest, name: str) -> str:
        """
        A schedule's name as a scoped token's: under its own name
        (C{alice:nightly}), so that no name it picks is another's, whose
        schedules it cannot see.
        """
        token = _token(request)
        if token is None or token.scope is None or name.startswith(f"{token.name}:"):
            return name
        return f"{token.name}:{name}"

    def _checked_schedule(self, request: IRequest, body: Any, existing: Schedule | None) -> Schedule:
        """A schedule from a C{POST} body, or C{existing} changed by a C{PATCH} body, checked."""
        body = _object(body)
        unknown = set(body) - SCHEDULE_FIELDS - JOB_FIELDS
        if unknown:
            raise APIError(400, "a schedule has no " + ", ".join(sorted(unknown)))
        assert self.scheduler is not None
        try:
            if existing is None:
                schedule = Schedule(
                    name=check_name(self._own_name(request, check_name(body.get("name")))),
                    cron="",
                    job={},
                    created_by=_who(request),
                    created_at=self.state.wall(),
                )
            else:
                renamed = body.get("name", existing.name)
                if not isinstance(renamed, str) or self._own_name(request, renamed) != existing.name:
                    raise ScheduleError("a schedule cannot be renamed: make a new one")
                schedule = replace(existing)
            if existing is None or "cron" in body:
                schedule.cron = check_cron(body.get("cron"), self.scheduler.seconds)
            if "timezone" in body:
                check_timezone(body["timezone"])
                schedule.timezone = body["timezone"]
            for flag in ("paused", "overlap", "catch_up"):
                if flag in body:
                    if not isinstance(body[flag], bool):
                        raise ScheduleError(f"{flag} must be true or false")
                    setattr(schedule, flag, body[flag])
            # A field set to null is removed: the job goes back to its default.
            job = {**schedule.job, **{k: v for k, v in body.items() if k in JOB_FIELDS}}
            schedule.job = {k: v for k, v in job.items() if v is not None}
            asked = parse_submission(schedule.job, self.max_command, self.max_workers)
        except (ScheduleError, SpecError) as e:
            raise APIError(400, str(e)) from None
        self._permit(request, permits.check_run, asked.cmd, asked.options, asked.notify, self.notify_policy)
        if asked.workers:
            try:
                self._permit(request, permits.check_names, self.roster, asked.workers, self.max_workers)
            except TargetError as e:
                raise APIError(400, str(e)) from None
        return schedule

    def _schedule_json(self, schedule: Schedule) -> Deferred[dict[str, Any]]:
        """A schedule as the API shows it: with its next runs and its latest pools."""
        assert self.scheduler is not None
        body: dict[str, Any] = {
            "name": schedule.name,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "paused": schedule.paused,
            "overlap": schedule.overlap,
            "catch_up": schedule.catch_up,
            **schedule.job,
            "created_by": schedule.created_by,
            "created_at": rfc3339(schedule.created_at),
            "next_runs": [rfc3339(at) for at in self.scheduler.next_runs(schedule)],
            "last_run": rfc3339(schedule.last_run or None),
            "skipped": schedule.skipped,
            "runs": [{**run, "at": rfc3339(run["at"])} for run in schedule.runs[-5:]],
        }

        def pools(page: list[Pool | dict[str, Any]]) -> dict[str, Any]:
            body["last_pools"] = [
                {key: (p.summary() if isinstance(p, Pool) else p)[key] for key in ("id", "state", "counts", "started_at")}
                for p in page
            ]
            return body

        return self.history.page(PoolQuery(schedule=schedule.name), 3).addCallback(pools)

    @app.route("/schedules", methods=["GET"])
    def schedule_list(self, request: IRequest) -> Deferred[bytes]:
        """Every schedule (a scoped token's own), with its next runs and latest pools."""

        def answer(schedules: list[Schedule]) -> Deferred[bytes]:
            shown = [self._schedule_json(s) for s in schedules if self._may_see(request, s.created_by)]
            return gatherResults(shown, consumeErrors=True).addCallback(lambda body: _json(request, body))

        return self._schedules_store().schedules().addCallback(answer)

    @app.route("/schedules", methods=["POST"])
    def schedule_create(self, request: IRequest) -> Deferred[bytes]:
        """
        A new schedule: a cron line, a time zone, and a C{POST /job} body.
        With C{?dry_run=true}, check it and tell its next runs, keeping nothing.
        """
        store = self._schedules_store()
        schedule = self._checked_schedule(request, _read_json(request, self.max_body), None)
        if _bool_arg(request, "dry_run", False):
            assert self.scheduler is not None
            runs = [rfc3339(at) for at in self.scheduler.next_runs(schedule)]
            answer = {"name": schedule.name, "next_runs": runs, "message": f"schedule {schedule.name} can be made"}
            return succeed(_json(request, answer))

        def put(fresh: bool) -> Deferred[bytes]:
            if not fresh:
                raise APIError(409, f"a schedule named {schedule.name} exists already")
            audit.info("{who} made schedule {name}: {cron}: {cmd}", who=_who(request),
                       name=schedule.name, cron=schedule.cron, cmd=schedule.job["cmd"])
            return self._changed_schedule(request, schedule, 201)

        return store.put_schedule(schedule, True).addCallback(put)

    def _changed_schedule(self, request: IRequest, schedule: Schedule, status: int) -> Deferred[bytes]:
        assert self.scheduler is not None
        d = self.scheduler.reload()
        d.addCallback(lambda _: self._schedule_json(self.scheduler.schedules.get(schedule.name, schedule)))  # type: ignore[union-attr]
        return d.addCallback(lambda body: _json(request, body, status))

    @app.route("/schedules/<string:name>", methods=["GET"])
    def schedule_show(self, request: IRequest, name: str) -> Deferred[bytes]:
        d = self._schedule(request, name).addCallback(self._schedule_json)
        return d.addCallback(lambda body: _json(request, body))

    @app.route("/schedules/<string:name>", methods=["PATCH"])
    def schedule_change(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Change a schedule: any of its fields but its name (C{paused} pauses and resumes it)."""
        body = _read_json(request, self.max_body)

        def change(existing: Schedule) -> Deferred[bytes]:
            schedule = self._checked_schedule(request, body, existing)

            def put(found: bool) -> Deferred[bytes]:
                if not found:
                    raise APIError(404, f"no schedule {name}")
                audit.info("{who} changed schedule {name}: {fields}", who=_who(request), name=schedule.name,
                           fields=", ".join(sorted(body)))
                return self._changed_schedule(request, schedule, 200)

            return self._schedules_store().put_schedule(schedule, False).addCallback(put)

        return self._schedule(request, name).addCallback(change)

    @app.route("/schedules/<string:name>", methods=["DELETE"])
    def schedule_remove(self, request: IRequest, name: str) -> Deferred[bytes]:
        def remove(schedule: Schedule) -> Deferred[bytes]:
            def removed(found: bool) -> Deferred[bytes]:
                if not found:
                    raise APIError(404, f"no schedule {name}")
                audit.info("{who} removed schedule {name}", who=_who(request), name=schedule.name)
                assert self.scheduler is not None
                return self.scheduler.reload().addCallback(
                    lambda _: _json(request, {"name": schedule.name, "message": f"schedule {schedule.name} removed"})
                )

            return self._schedules_store().remove_schedule(schedule.name).addCallback(removed)

        return self._schedule(request, name).addCallback(remove)

    def run_schedule(self, schedule: Schedule) -> Deferred[str]:
        """
        Start a run of C{schedule}, checked as its creator's token's (one
        revoked since, or now read-only, starts nothing): fires with the
        new pool's id, or fails saying why it did not start.
        """
        return maybeDeferred(self._run_schedule, schedule)

    def _run_schedule(self, schedule: Schedule) -> Deferred[str]:
        who = schedule.created_by
        token = None
        if self.tokens is not None:
            token = self.tokens.named(who) if who is not None else None
            if token is None or token.read_only:
                raise ScheduleError(f"the token {who} that made it is gone or may only read")
        try:
            asked = parse_submission(schedule.job, self.max_command, self.max_workers)
            permits.check_run(token, asked.cmd, asked.options, asked.notify, self.notify_policy)
            offline = asked.wait_offline is not None
            workers = permits.select_workers(
                token, self.roster, asked.workers, asked.labels, asked.exclude, self.max_workers, offline
            )
        except permits.Forbidden as e:
            audit.info("refused schedule {name}'s run for {who}: {why}", name=schedule.name, who=who, why=e)
            raise
        d = self.dispatcher.submit(
            asked.cmd, workers, asked.options, asked.rollout, who,
            wait_offline=asked.wait_offline, schedule=schedule.name,
            notify=asked.notify, notify_on=asked.notify_on,
        )
        d.addCallback(self._audit_start, f"{who or 'anyone (no auth)'} (schedule {schedule.name})")
        return d.addCallback(lambda pool: pool.id)

    # Tokens: an administrator's (a full token without a scope)

    def _book(self, request: IRequest) -> TokenBook:
        if self.tokens is None:
            raise APIError(409, "this master runs with --no-auth: it checks no token")
        token = _token(request)
        if token is None or not token.admin:
            raise self._refuse(request, "only a full token without a scope may manage tokens")
        return self.tokens

    @app.route("/tokens", methods=["GET"])
    def token_list(self, request: IRequest) -> bytes:
        """Every token's name and what it may do; never a token."""
        return _json(request, self._book(request).listing())

    @app.route("/tokens", methods=["POST"])
    def token_create(self, request: IRequest) -> Deferred[bytes]:
        """Make a token (kept hashed in the store); the answer is the only place it is shown."""
        book = self._book(request)
        body = _read_object(request, self.max_body)
        fields = ("name", "read_only", "workers", "labels", "commands", *GRANTS)
        unknown = set(body) - set(fields)
        if unknown:
            raise APIError(400, f"a token has only {', '.join(fields)}, not " + ", ".join(sorted(unknown)))
        name, read_only = body.get("name"), body.get("read_only", False)
        if not isinstance(name, str):
            raise APIError(400, "name must be a string")
        if not isinstance(read_only, bool):
            raise APIError(400, "read_only must be true or false")
        try:
            scope = Scope.from_json({k: body[k] for k in fields[2:] if k in body})
            making = book.create(name, read_only, scope, _who(request))
        except (ScopeError, TokenError) as e:
            raise APIError(getattr(e, "status", 400), str(e)) from None

        def answer(value: str) -> bytes:
            audit.info("{who} made token {name}", who=_who(request), name=name)
            made = APIToken(b"", read_only, name, scope).describe()
            made.update(token=value, message="token made: this is the only time it is shown")
            return _json(request, made, 201)

        return making.addCallbacks(answer, _token_error)

    @app.route("/tokens/<string:name>", methods=["DELETE"])
    def token_revoke(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Revoke a token made through the API: refused at once, by every master."""
        book = self._book(request)
        try:
            revoking = book.revoke(name)
        except TokenError as e:
            raise APIError(e.status, str(e)) from None

        def answer(_: Any) -> bytes:
            audit.info("{who} revoked token {name}", who=_who(request), name=name)
            return _json(request, {"name": name, "message": f"token {name} revoked"})

        return revoking.addCallbacks(answer, _token_error)

    # Errors: specific first, then routing errors, then anything unexpected.

    @app.handle_errors(APIError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        return _json(request, {"message": error.message}, error.status)

    @app.handle_errors(NotFound, MethodNotAllowed, HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(error.valid_methods).encode())
        message = {
            404: "no such route",
            405: f"method {request.method.decode()} not allowed here",
        }.get(error.code, error.description or error.name)
        return _json(request, {"message": message}, error.code)

    @app.handle_errors
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("error answering {uri}", failure, uri=request.uri)
        return _json(request, {"message": "internal error, logged by the master"}, 500)
