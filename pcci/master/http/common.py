"""
What every route of the REST API shares: its limits, the JSON error it
raises (L{APIError}), and reading requests and writing answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from pcci.auth import APIToken
from pcci.master.access.tokens import TokenError
from pcci.master.cluster.model import Pool
from pcci.master.cluster.targets import POOL_LIMIT
from pcci.master.http.streaming import json_object_pieces
from pcci.master.transfers.pushes import MAX_ENTRIES
from pcci.master.webhooks.outbound import AddressPolicy
from pcci.scopes import Scope

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

#: What C{GET /pools?state=} may ask for.
POOL_STATES = ("running", "paused", "ok", "failed")


@dataclass(frozen=True)
class APILimits:
    """The bounds the API holds requests to (the master's options of the same names)."""

    max_body: int = MAX_BODY
    max_command: int = MAX_COMMAND
    max_workers: int = MAX_WORKERS
    #: Where pools' notify URLs may point (see L{pcci.master.webhooks.outbound}).
    notify_policy: AddressPolicy = AddressPolicy()
    max_push_entries: int = MAX_ENTRIES


class APIError(Exception):
    """An error answered as C{{"message": ...}} (and C{more} fields) with an HTTP status."""

    def __init__(self, status: int, message: str, **more: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.more = more


def json_answer(request: IRequest, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8") + b"\n"


def read_json(request: IRequest, max_body: int, required: bool = True) -> Any:
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


def as_object(body: Any) -> dict[str, Any]:
    """A JSON body that must be an object ({} for no body)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def read_object(request: IRequest, max_body: int, required: bool = True) -> dict[str, Any]:
    """The request's JSON body, which must be an object ({} when it has none and none is required)."""
    return as_object(read_json(request, max_body, required))


def string_list(value: Any, what: str, most: int) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise APIError(400, f"{what} must be a non-empty list of worker names")
    if len(value) > most:
        raise APIError(400, f"{what} names more than {most} workers" + POOL_LIMIT)
    return value


def pool_pieces(pool: Pool, results: bool = True) -> Iterator[bytes]:
    """A pool's JSON in pieces: its fields, then one job a piece."""
    return json_object_pieces(pool.summary(), "jobs", pool.jobs_json(results))


#: Seconds a new pool's answer waits for the store before it says why.
STORE_WAIT = 10.0


def not_stored(result: Any, timeout: float) -> None:
    raise APIError(
        503,
        f"the store did not answer within {timeout:g} s: the pool started, and is kept"
        " once the store is back (see GET /pools then)",
    )


def started_message(pool: Pool) -> str:
    return f"pool started on {len(pool.jobs)} workers"


def submitted_pieces(pool: Pool, message: str) -> Iterator[bytes]:
    """C{POST /job?wait}'s answer: the usual fields, and the pool."""
    yield json.dumps({"pool_id": pool.id, "message": message}).encode()[:-1]
    yield b', "pool": '
    yield from pool_pieces(pool)
    yield b"}"


def token_error(failure: Failure) -> NoReturn:
    failure.trap(TokenError)
    error = failure.value
    assert isinstance(error, TokenError)
    raise APIError(error.status, str(error))


def request_token(request: IRequest) -> APIToken | None:
    """The token the request came with (None without auth)."""
    return getattr(request, "api_token", None)


def request_scope(request: IRequest) -> Scope | None:
    """What the request's token is limited to (None: nothing)."""
    token = request_token(request)
    return None if token is None else token.scope


def who_asks(request: IRequest) -> str | None:
    """The name of the token the request came with (None without auth)."""
    token = request_token(request)
    return token.name if token is not None else None


def last_event_id(request: IRequest) -> int:
    """Where an event stream resumes: C{Last-Event-ID}, or C{?after=}."""
    header = request.getHeader(b"last-event-id")
    text = header.decode("ascii", "replace") if header is not None else text_arg(request, "after")
    if text is None or not text.strip():
        return 0
    try:
        after = int(text)
    except ValueError:
        raise APIError(400, "Last-Event-ID (or after) must be an event id") from None
    if after < 0:
        raise APIError(400, "Last-Event-ID (or after) must be an event id")
    return after


def text_arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, f"{name} must be UTF-8 text") from None


def absolute_path_arg(request: IRequest, name: str) -> str:
    """A query argument naming a place on the workers: an absolute path."""
    path = text_arg(request, name)
    if not path or not path.startswith("/") or "\0" in path:
        raise APIError(400, f"{name} must be an absolute path on the workers")
    return path


#: What C{owner} may be: a user, and a group, by name.
VALID_OWNER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31})?\Z")


def list_arg(request: IRequest, name: str) -> list[str]:
    """A query argument given once or more (each may hold a comma list)."""
    try:
        return [value.decode("utf-8") for value in request.args.get(name.encode(), []) if value]
    except UnicodeDecodeError:
        raise APIError(400, f"{name} must be UTF-8 text") from None


def int_arg(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    text = text_arg(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise APIError(400, f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}")
    return value


def bool_arg(request: IRequest, name: str, default: bool) -> bool:
    text = text_arg(request, name)
    if text is None:
        return default
    if text.lower() not in ("true", "false", "1", "0"):
        raise APIError(400, f"{name} must be true or false")
    return text.lower() in ("true", "1")


def wait_seconds(request: IRequest) -> float:
    raw = request.args.get(b"wait", [b"0"])[0]
    try:
        seconds = float(raw)
    except ValueError:
        raise APIError(400, "wait must be a number of seconds") from None
    if not seconds >= 0:  # also refuses NaN
        raise APIError(400, "wait must be a number of seconds")
    return min(seconds, MAX_WAIT)


