"""
What a C{POST /job} asks for, checked: the command, its targets, how each
job runs (timeout, env, cwd, stdin), how the pool rolls out (batch,
batch_wait, max_failures) and how long jobs wait for offline workers
(wait_offline).

Every check names the field at fault, and nothing is started unless the
whole request is good.  The fields are those L{pcci.request} declares: a
body with any other is refused (PCCI 1.x's scripts send C{cmd} and
C{workers}, which are two of them).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from pcci.master.cluster import queries
from pcci.master.cluster.queries import Query, QueryError
from pcci.master.cluster.targets import POOL_LIMIT
from pcci.request import no_such_fields, unknown_fields

#: Longest timeout and batch wait, in seconds: 30 days.
MAX_SECONDS = 30 * 24 * 3600.0

#: Most variables in one job's C{env}, and longest C{stdin}.
MAX_ENV = 256
MAX_STDIN = 256 * 1024

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PERCENT = re.compile(r"([1-9][0-9]?|100)%\Z")


class SpecError(ValueError):
    """A request field that is not what it must be."""


@dataclass(frozen=True)
class JobOptions:
    """How each job of a pool runs, as the worker is told."""

    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: str | None = None

    def wire(self) -> dict[str, Any]:
        """The fields of a C{run} message that carry these options."""
        fields: dict[str, Any] = {}
        if self.timeout is not None:
            fields["timeout"] = self.timeout
        if self.env:
            fields["env"] = self.env
        if self.cwd is not None:
            fields["cwd"] = self.cwd
        if self.stdin is not None:
            fields["stdin"] = self.stdin
        return fields


@dataclass(frozen=True)
class Rollout:
    """
    How a pool's jobs start: all at once, or a sliding window of C{batch};
    C{canary} jobs first, the rest only if they all end ok; a pause after
    every C{pause_every} ends; none once C{max_failures} (a count, or a
    share: C{"5%"}) failed.  See L{pcci.master.cluster.rollouts}.
    """

    batch: int | str | None = None
    batch_wait: float = 0.0
    max_failures: int | str | None = None
    canary: int | None = None
    pause_every: int | None = None

    def window(self, jobs: int) -> int:
        """How many of C{jobs} may run at once."""
        if self.batch is None:
            return jobs
        if isinstance(self.batch, str):
            return max(1, math.ceil(jobs * int(self.batch[:-1]) / 100))
        return self.batch

    def failure_limit(self, jobs: int) -> int | None:
        """How many of C{jobs} may fail before the rest are cancelled (None: any number)."""
        if isinstance(self.max_failures, str):
            return max(1, math.ceil(jobs * int(self.max_failures[:-1]) / 100))
        return self.max_failures

    @property
    def rolling(self) -> bool:
        """Whether it is more than all at once."""
        return any(v is not None for v in (self.batch, self.max_failures, self.canary, self.pause_every))


@dataclass(frozen=True)
class Submission:
    """A checked C{POST /job} body."""

    cmd: str
    workers: list[str] | None
    labels: list[str]
    exclude: list[str]
    options: JobOptions
    rollout: Rollout
    #: Seconds a job on an offline worker waits for it (None: none wait).
    wait_offline: float | None = None
    #: URLs told of the pool's end, and on which ends (C{failed}, C{ended}).
    notify: list[str] = field(default_factory=list)
    notify_on: str = "failed"
    #: Only workers whose facts and labels match it (see L{pcci.master.cluster.queries}).
    query: Query | None = None


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{name} must be a string")
    if "\x00" in value:
        raise SpecError(f"{name} cannot hold a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(f"{name} must be valid Unicode text (no lone surrogates)") from None
    return value


def _seconds(value: Any, name: str, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{name} must be a number of seconds")
    if not (0 < value if low_open else 0 <= value) or not value <= MAX_SECONDS:
        bound = "over 0" if low_open else "0 or more"
        raise SpecError(f"{name} must be {bound} and at most {MAX_SECONDS:.0f} seconds")
    return float(value)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{name} must be a whole number, 1 or more")
    return value


def _strings(value: Any, name: str, most: int, why: str = "") -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{name} must be a list of non-empty strings")
    if len(value) > most:
        raise SpecError(f"{name} holds more than {most} items{why}")
    return [_text(v, name) for v in value]


def check_cmd(value: Any, most: int) -> str:
    """A command a worker can run: non-empty text a shell could split."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError("cmd must be a non-empty string")
    if len(value) > most:
        raise SpecError(f"cmd is over {most} characters")
    cmd = _text(value, "cmd")
    if "'" in cmd or '"' in cmd or "\\" in cmd:  # else nothing can be left open
        try:
            shlex.split(cmd)
        except ValueError as e:
            raise SpecError(f"cmd cannot be parsed: {e}") from None
    return cmd


def parse_options(body: dict[str, Any]) -> JobOptions:
    timeout = body.get("timeout")
    if timeout is not None:
        timeout = _seconds(timeout, "timeout", low_open=True)
    env = body.get("env") or {}
    if not isinstance(env, dict):
        raise SpecError("env must be an object of strings")
    if len(env) > MAX_ENV:
        raise SpecError(f"env holds more than {MAX_ENV} variables")
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise SpecError(f"env: {key!r} is not a variable name")
        if not isinstance(value, str):
            raise SpecError(f"env: {key} must be a string")
        _text(value, f"env: {key}")
    cwd = body.get("cwd")
    if cwd is not None:
        if not _text(cwd, "cwd"):
            raise SpecError("cwd must be a non-empty string")
    stdin = body.get("stdin")
    if stdin is not None:
        # NUL is data on a pipe: only the type and the size are checked.
        if not isinstance(stdin, str):
            raise SpecError("stdin must be a string")
        try:
            size = len(stdin.encode("utf-8"))
        except UnicodeEncodeError:
            raise SpecError("stdin must be valid Unicode text (no lone surrogates)") from None
        if size > MAX_STDIN:
            raise SpecError(f"stdin is over {MAX_STDIN} bytes")
    return JobOptions(timeout, dict(env), cwd, stdin)


def parse_rollout(body: dict[str, Any]) -> Rollout:
    batch = body.get("batch")
    if batch is not None:
        if isinstance(batch, str):
            if not _PERCENT.match(batch):
                raise SpecError('batch must be a whole number or "N%" with N from 1 to 100')
        else:
            batch = _count(batch, "batch")
    batch_wait = body.get("batch_wait")
    batch_wait = 0.0 if batch_wait is None else _seconds(batch_wait, "batch_wait", low_open=False)
    max_failures = body.get("max_failures")
    if isinstance(max_failures, str):
        if not _PERCENT.match(max_failures):
            raise SpecError('max_failures must be a whole number or "N%" with N from 1 to 100')
    elif max_failures is not None:
        max_failures = _count(max_failures, "max_failures")
    canary = None if body.get("canary") is None else _count(body["canary"], "canary")
    pause_every = None if body.get("pause_every") is None else _count(body["pause_every"], "pause_every")
    return Rollout(batch, batch_wait, max_failures, canary, pause_every)


def parse_submission(body: Any, max_command: int, max_workers: int) -> Submission:
    """
    Check a C{POST /job} body.

    @raise SpecError: naming the first field at fault.
    """
    if not isinstance(body, dict):
        raise SpecError("the body must be a JSON object")
    unknown = unknown_fields(body)
    if unknown:
        raise SpecError(no_such_fields("a pool request", unknown))
    cmd = check_cmd(body.get("cmd"), max_command)
    workers = body.get("workers")
    if workers is not None:
        workers = _strings(workers, "workers", max_workers, POOL_LIMIT)
        if not workers:
            raise SpecError("workers must name at least one worker")
    labels = _strings(body.get("labels") or [], "labels", 64)
    query = parse_query(body)
    if workers is None and not labels and query is None:
        raise SpecError("workers must be a non-empty list of workers (or give labels, or a query)")
    exclude = _strings(body.get("exclude") or [], "exclude", max_workers, POOL_LIMIT)
    notify, notify_on = parse_notify(body)
    return Submission(
        cmd, workers, labels, exclude, parse_options(body), parse_rollout(body),
        parse_wait_offline(body), notify, notify_on, query,
    )


def parse_query(body: dict[str, Any]) -> Query | None:
    """A request's C{query}, parsed (None: none given)."""
    text = body.get("query")
    if text is None:
        return None
    if not isinstance(text, str):
        raise SpecError("query must be a string")
    try:
        return queries.parse(text)
    except QueryError as e:
        raise SpecError(str(e)) from None


#: Most URLs one pool (or schedule) tells, and the longest.
MAX_NOTIFY = 10
MAX_URL = 2048

#: On which ends a pool's URLs are told.
NOTIFY_ON = ("failed", "ended")


def parse_notify(body: dict[str, Any]) -> tuple[list[str], str]:
    notify = body.get("notify") or []
    if not isinstance(notify, list) or len(notify) > MAX_NOTIFY or not all(
        isinstance(url, str) and re.match(r"https?://[^\s]+\Z", url) and len(url) <= MAX_URL
        for url in notify
    ):
        raise SpecError(f"notify must be a list of at most {MAX_NOTIFY} http:// or https:// URLs")
    notify_on = body.get("notify_on", "failed")
    if notify_on not in NOTIFY_ON:
        raise SpecError("notify_on must be failed or ended")
    return list(notify), notify_on


def parse_wait_offline(body: dict[str, Any]) -> float | None:
    value = body.get("wait_offline")
    return None if value is None else _seconds(value, "wait_offline", low_open=True)
