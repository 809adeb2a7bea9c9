"""
A pool request, declared once: the fields of a C{POST /job} body, which are
also the job a schedule runs.

Each field holds its OpenAPI schema and one line that says what it does.
From this table the master knows which fields a body may hold
(L{pcci.master.cluster.jobspec} checks them, and refuses any other), the
OpenAPI document gets the properties of its request schemas
(L{pcci.master.http.openapi}), and the command line gets the help of its job
options (L{pcci.cli.options}).  Shared by the master and the CLI: it imports
nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """One field of a pool request."""

    name: str
    #: Its OpenAPI (3.0) schema.
    schema: dict[str, Any]
    #: What it does, in one sentence: the OpenAPI description and the CLI's help.
    help: str


_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}}
_SECONDS_OVER_0: dict[str, Any] = {"type": "number", "exclusiveMinimum": True, "minimum": 0}

FIELDS: tuple[Field, ...] = (
    Field("cmd", {"type": "string", "minLength": 1}, "The command each worker runs, as a shell line."),
    Field(
        "workers",
        {**_STRINGS, "minItems": 1},
        "Worker names, node sets (pi[01-16]) or globs (pi*, matching online workers);"
        " several in one item separated by commas.",
    ),
    Field("labels", _STRINGS, "Only workers with every one of these labels (key or key=value)."),
    Field("exclude", _STRINGS, "Names, node sets or globs taken out of the selection."),
    Field(
        "query",
        {"type": "string", "minLength": 1, "maxLength": 4096},
        "Only workers whose facts and labels match this query (os.id=debian and cpus>=4; see docs/api.md).",
    ),
    Field("timeout", _SECONDS_OVER_0, "Kill a job that runs longer (it ends timed_out, status 124)."),
    Field(
        "env",
        {"type": "object", "additionalProperties": {"type": "string"}},
        "Variables set for the command.",
    ),
    Field("cwd", {"type": "string", "minLength": 1}, "The command's working directory on each worker."),
    Field("stdin", {"type": "string"}, "Text given to each job's standard input."),
    Field(
        "batch",
        {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^([1-9][0-9]?|100)%$"}]},
        "Run at most N jobs at once (or N% of the workers).",
    ),
    Field("batch_wait", {"type": "number", "minimum": 0}, "Seconds between a job's end and the next start."),
    Field(
        "max_failures",
        {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^([1-9][0-9]?|100)%$"}]},
        "Start no more jobs once N have failed (or N% of the jobs).",
    ),
    Field("canary", {"type": "integer", "minimum": 1}, "Run N jobs first; the rest start only if all of them end ok."),
    Field(
        "pause_every",
        {"type": "integer", "minimum": 1},
        "Pause after every N jobs have ended, until POST /pools/<id>/continue (pcci continue).",
    ),
    Field(
        "wait_offline",
        _SECONDS_OVER_0,
        "Jobs on workers known but offline wait this long for them;"
        " globs and labels then select offline workers too.",
    ),
    Field(
        "notify",
        {"type": "array", "maxItems": 10, "items": {"type": "string", "pattern": "^https?://[^\\s]+$"}},
        "URLs told of the pool's end, by a signed POST.",
    ),
    Field(
        "notify_on",
        {"type": "string", "enum": ["failed", "ended"]},
        "Which ends are told: failed (the default) or ended.",
    ),
)

#: The fields by name.
JOB_FIELDS: dict[str, Field] = {field.name: field for field in FIELDS}


def unknown_fields(body: dict[str, Any], known: Collection[str] = JOB_FIELDS.keys()) -> list[str]:
    """The names in C{body} that are not C{known} (a pool request's fields), sorted."""
    return sorted(name for name in body if name not in known)


def no_such_fields(what: str, unknown: list[str]) -> str:
    """
    The one rule for a body's unknown fields, said one way: refused, by
    name (C{a pool request has no timout}), so that a typo never goes
    unnoticed.
    """
    return f"{what} has no {', '.join(unknown)} (its fields: see /openapi.json)"


def openapi_properties() -> dict[str, Any]:
    """The fields as the OpenAPI properties of a request schema."""
    return {field.name: {**field.schema, "description": field.help} for field in FIELDS}
