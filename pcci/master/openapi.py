"""The OpenAPI 3 description of the REST API, served at C{/openapi.json}."""

from __future__ import annotations

from functools import cache
from typing import Any

from pcci import __version__
from pcci.master.model import JOB_STATES, RETRIED_STATES
from pcci.wire import FIGURES


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **more}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(
    name: str, schema: dict[str, Any], description: str, required: bool = False, explode: bool = False
) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": required, "schema": schema, "description": description}
    if explode:
        parameter.update(style="form", explode=True)
    return parameter


#: A true-or-false query parameter.
_BOOLEAN = {"type": "string", "enum": ["true", "false", "1", "0"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_POOL_ID = {
    "name": "pool_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the pool's id, as POST /job answered it",
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0, "maximum": 60},
    "description": "seconds to wait for the pool to finish before answering (at most 60)",
}
_UNAUTHORIZED = _error("no token, or not a valid one")
_FORBIDDEN = _error(
    "a read-only token on a route that changes something, or a scoped token outside its scope"
)
_WORKERS_LIST = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "description": "worker names, node sets (pi[01-16]) or globs (pi*, matching online workers), several in one item separated by commas",
}
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}


def _worker_schema(**more: Any) -> dict[str, Any]:
    properties = {
        "id": {"type": "string"},
        "address": {"type": "string"},
        "connected_at": {"type": "string", "format": "date-time"},
        "jobs_running": {"type": "integer", "minimum": 0},
        "master": {"type": "string", "nullable": True, "description": "the master it is connected to, with several masters"},
        "online": {"type": "boolean"},
        "last_seen": {"type": "string", "format": "date-time"},
        "heartbeat_seconds": {"type": "number"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "health": {"allOf": [_ref("Health")], "nullable": True},
        **more,
    }
    return {"type": "object", "properties": properties, "required": list(properties)}


_NOTIFY = {
    "notify": {
        "type": "array", "maxItems": 10,
        "items": {"type": "string", "pattern": "^https?://[^\\s]+$"},
        "description": "URLs told of the pool's end (a signed POST)",
    },
    "notify_on": {"type": "string", "enum": ["failed", "ended"]},
}

#: A schedule's own fields, and the POST /job fields it runs.
_SCHEDULE_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@:-]{1,64}$"},
    "cron": {"type": "string", "description": "five fields, or @hourly, @daily, @weekly, @monthly, @yearly"},
    "timezone": {"type": "string", "description": "an IANA name; UTC by default"},
    "paused": {"type": "boolean"},
    "overlap": {"type": "boolean"},
    "catch_up": {"type": "boolean"},
}
_JOB_FIELDS: dict[str, Any] = {
    "cmd": {"type": "string", "minLength": 1},
    "workers": _WORKERS_LIST,
    "labels": _STRINGS,
    "exclude": _STRINGS,
    "timeout": {"type": "number"},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "cwd": {"type": "string"},
    "stdin": {"type": "string"},
    "batch": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    "batch_wait": {"type": "number"},
    "max_failures": {"type": "integer"},
    "wait_offline": {"type": "number"},
    **_NOTIFY,
}


@cache
def openapi_document() -> dict[str, Any]:
    pool_route = {
        "parameters": [_POOL_ID, _WAIT],
        "responses": {
            "400": _error("a bad wait value"),
            "401": _UNAUTHORIZED,
            "404": _error("an unknown or expired pool"),
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pcci",
            "version": __version__,
            "description": "Run one command on many machines. See docs/api.md.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {
                "get": {
                    "summary": "Liveness, for load balancers; needs no token",
                    "security": [],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {"status": {"type": "string", "enum": ["ok"]}},
                                "required": ["status"],
                            }
                        )
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _ok({"type": "object"}), "401": _UNAUTHORIZED},
                }
            },
            "/job": {
                "post": {
                    "summary": "Start a pool: one command on the workers selected",
                    "parameters": [
                        _query(
                            "wait",
                            {"type": "number", "minimum": 0, "maximum": 60},
                            "seconds to wait for the pool to end; the answer then holds it",
                        ),
                        _query("dry_run", _BOOLEAN, "true: start nothing, answer which workers the body selects"),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PoolRequest")}},
                    },
                    "responses": {
                        "200": _ok({"anyOf": [_ref("PoolStarted"), _ref("DryRun")]}),
                        "400": _error("a bad body, or workers not connected"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "413": _error("a body over the size limit"),
                        "415": _error("a body not sent as application/json"),
                        "503": _error("too many pools running, or the store does not answer"),
                    },
                }
            },
            "/files": {
                "post": {
                    "summary": "Push the files of a tar archive to the workers selected (a pool of transfers)",
                    "parameters": [
                        _query("dest", {"type": "string"}, "an absolute path on the workers", required=True),
                        _query("workers", _STRINGS, "workers, as POST /job's field", explode=True),
                        _query("labels", _STRINGS, "labels, as POST /job's field", explode=True),
                        _query("exclude", _STRINGS, "workers left out, as POST /job's field", explode=True),
                        _query("mkdir", _BOOLEAN, "true: make the destination directory and its parents"),
                        _query("mode", {"type": "string", "pattern": "^[0-7]{1,4}$"}, "the files' mode, octal"),
                        _query("owner", {"type": "string"}, "USER or USER:GROUP: the files' owner (root workers)"),
                        _query(
                            "wait",
                            {"type": "number", "minimum": 0, "maximum": 60},
                            "seconds to wait for the push to end; the answer then holds it",
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "200": _ok(_ref("PoolStarted")),
                        "400": _error("a bad query, not a tar, an entry of another kind, or an unsafe path"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "413": _error("a body over --max-file"),
                        "415": _error("a body not sent as application/x-tar"),
                        "503": _error("too many pools running, or the store does not answer"),
                    },
                }
            },
            "/fetches": {
                "post": {
                    "summary": "Read a path on the workers selected (a pool; each worker's files kept as an archive)",
                    "parameters": [
                        _query("path", {"type": "string"}, "an absolute path on the workers", required=True),
                        _query("recursive", _BOOLEAN, "true: a directory and all it holds"),
                        _query("workers", _STRINGS, "workers, as POST /job's field", explode=True),
                        _query("labels", _STRINGS, "labels, as POST /job's field", explode=True),
                        _query("exclude", _STRINGS, "workers left out, as POST /job's field", explode=True),
                        _query(
                            "wait",
                            {"type": "number", "minimum": 0, "maximum": 60},
                            "seconds to wait for the fetch to end; the answer then holds it",
                        ),
                    ],
                    "responses": {
                        "200": _ok(_ref("PoolStarted")),
                        "400": _error("a bad query, or workers not connected"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "503": _error("too many pools running, or the store does not answer"),
                    },
                }
            },
            "/fetches/{pool_id}/{worker}": {
                "get": {
                    "summary": "What a worker sent for a fetch, as a tar archive, once its job ended",
                    "parameters": [
                        _POOL_ID,
                        {"name": "worker", "in": "path", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "the archive",
                            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        "401": _UNAUTHORIZED,
                        "404": _error("an unknown pool or worker, or an archive past its time"),
                        "409": _error("the worker is still sending"),
                    },
                }
            },
            "/pool/{pool_id}": {
                "get": {
                    "summary": "A pool, in a one-element list (PCCI 1.x's shape)",
                    **pool_route,
                    "responses": {
                        "200": _ok({"type": "array", "items": _ref("Pool"), "minItems": 1, "maxItems": 1}),
                        **pool_route["responses"],
                    },
                }
            },
            "/pools/{pool_id}": {
                "get": {
                    "summary": "A pool",
                    **pool_route,
                    "parameters": [*pool_route["parameters"], _query("results", _BOOLEAN, "false leaves outputs out")],
                    "responses": {"200": _ok(_ref("Pool")), **pool_route["responses"]},
                }
            },
            "/pools/{pool_id}/events": {
                "get": {
                    "summary": "A pool's events as server-sent events: started, output, dropped, ended, pool",
                    "parameters": [
                        _POOL_ID,
                        _query("after", {"type": "integer", "minimum": 0}, "resume after this event id"),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0},
                            "description": "resume after this event id (as EventSource sends it)",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the events, until the pool event; see docs/api.md",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _error("a bad event id"),
                        "401": _UNAUTHORIZED,
                        "404": _error("an unknown or expired pool"),
                    },
                }
            },
            "/pools": {
                "get": {
                    "summary": "Pools newest first, a page at a time",
                    "parameters": [
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "pools in the page (100 by default)"),
                        _query("before", {"type": "string"}, "only pools older than this pool id"),
                        _query("state", {"type": "string", "enum": ["running", "ok", "failed"]}, "only pools in this state"),
                        _query("worker", {"type": "string"}, "only pools with a job on this worker"),
                        _query("cmd", {"type": "string"}, "only pools whose command holds this text"),
                        _query("submitted_by", {"type": "string"}, "only pools started with the token of this name"),
                        _query("results", _BOOLEAN, "false leaves outputs out"),
                    ],
                    "responses": {
                        "200": _ok({"type": "array", "items": _ref("Pool")}),
                        "400": _error("a bad parameter value"),
                        "401": _UNAUTHORIZED,
                        "403": _error("a scoped token asking for another's pools"),
                    },
                }
            },
            "/pools/{pool_id}/retry": {
                "post": {
                    "summary": "Run a pool's command again where it did not end ok: a new pool with retry_of",
                    "parameters": [
                        _POOL_ID,
                        _query(
                            "wait",
                            {"type": "number", "minimum": 0, "maximum": 60},
                            "seconds to wait for the new pool to end; the answer then holds it",
                        ),
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("RetryRequest")}},
                    },
                    "responses": {
                        "200": _ok(_ref("PoolStarted")),
                        "400": _error("a bad body"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "404": _error("an unknown or expired pool"),
                        "409": _error("nothing to retry, workers offline, or a pool of files"),
                        "413": _error("a body over the size limit"),
                        "415": _error("a body not sent as application/json"),
                        "503": _error("too many pools running, or the store does not answer"),
                    },
                }
            },
            "/whoami": {
                "get": {
                    "summary": "The token this request came with: its name, and what it may do",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "auth": {"type": "boolean"},
                                    "name": {"type": "string", "nullable": True},
                                    "read_only": {"type": "boolean"},
                                    "admin": {"type": "boolean"},
                                    "scope": {**_ref("Scope"), "nullable": True},
                                },
                                "required": ["auth", "name", "read_only", "admin", "scope"],
                            }
                        ),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/schedules": {
                "get": {
                    "summary": "Every schedule (a scoped token's own), with its next runs and latest pools",
                    "responses": {
                        "200": _ok({"type": "array", "items": _ref("Schedule")}),
                        "401": _UNAUTHORIZED,
                        "409": _error("this master has no store"),
                    },
                },
                "post": {
                    "summary": "Make a schedule: a cron line, a time zone, and a POST /job body",
                    "parameters": [
                        _query("dry_run", _BOOLEAN, "true: keep nothing, answer the schedule's next runs"),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ScheduleRequest")}},
                    },
                    "responses": {
                        "200": _ok(
                            {"type": "object", "properties": {
                                "name": {"type": "string"},
                                "next_runs": {"type": "array", "items": {"type": "string", "format": "date-time"}},
                                "message": {"type": "string"},
                            }},
                            "a dry run: it could be made",
                        ),
                        "201": _ok(_ref("Schedule"), "made"),
                        "400": _error("a bad body"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "409": _error("a schedule of that name exists"),
                        "413": _error("a body over the size limit"),
                        "415": _error("a body not sent as application/json"),
                    },
                },
            },
            "/schedules/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {
                    "summary": "A schedule",
                    "responses": {"200": _ok(_ref("Schedule")), "401": _UNAUTHORIZED, "404": _error("no such schedule")},
                },
                "patch": {
                    "summary": "Change a schedule (paused: true pauses it, false resumes it)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ScheduleChange")}},
                    },
                    "responses": {
                        "200": _ok(_ref("Schedule")),
                        "400": _error("a bad body"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "404": _error("no such schedule"),
                        "413": _error("a body over the size limit"),
                        "415": _error("a body not sent as application/json"),
                    },
                },
                "delete": {
                    "summary": "Remove a schedule (its pools stay)",
                    "responses": {
                        "200": _ok({"type": "object", "properties": {"name": {"type": "string"}, "message": {"type": "string"}}}),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "404": _error("no such schedule"),
                    },
                },
            },
            "/tokens": {
                "get": {
                    "summary": "Every token's name and what it may do (never a token); an administrator's token only",
                    "responses": {
                        "200": _ok({"type": "array", "items": _ref("TokenInfo")}),
                        "401": _UNAUTHORIZED,
                        "403": _error("not a full token without a scope"),
                        "409": _error("the master runs with --no-auth"),
                    },
                },
                "post": {
                    "summary": "Make a token, kept hashed in the store; the answer is the only place it shows",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("TokenRequest")}},
                    },
                    "responses": {
                        "201": _ok(_ref("TokenMade"), "made"),
                        "400": _error("a bad body"),
                        "401": _UNAUTHORIZED,
                        "403": _error("not a full token without a scope"),
                        "409": _error("a token of that name exists, or the master runs with --no-auth"),
                        "413": _error("a body over the size limit"),
                        "415": _error("a body not sent as application/json"),
                    },
                },
            },
            "/tokens/{name}": {
                "delete": {
                    "summary": "Revoke a token made through the API: every master refuses it from then on",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {"name": {"type": "string"}, "message": {"type": "string"}},
                                "required": ["name", "message"],
                            }
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _error("not a full token without a scope"),
                        "404": _error("no token of that name"),
                        "409": _error("a token of the tokens file, or the master runs with --no-auth"),
                    },
                }
            },
            "/workers": {
                "get": {
                    "summary": "Connected workers, with their latest health figures",
                    "parameters": [
                        _query("all", _BOOLEAN, "also list workers seen before and now offline")
                    ],
                    "responses": {
                        "200": _ok({"type": "array", "items": _ref("Worker")}),
                        "400": _error("a bad value of all"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/workers/{name}": {
                "get": {
                    "summary": "A worker, its latest health figures and their history",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _ok(_ref("WorkerWithHistory")),
                        "401": _UNAUTHORIZED,
                        "404": _error("no worker of that name has been seen"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, in the text exposition format",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/kill/{pool_id}": {
                "put": {
                    "summary": "Kill a pool's running jobs, on all or some of its workers",
                    "parameters": [_POOL_ID],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("KillRequest")}},
                    },
                    "responses": {
                        "200": _ok(_ref("KillSent")),
                        "400": _error("a bad body, or workers not in the pool"),
                        "401": _UNAUTHORIZED,
                        "403": _FORBIDDEN,
                        "404": _error("an unknown or expired pool"),
                        "413": _error("a body over the size limit"),
                        "415": _error("a body not sent as application/json"),
                        "503": _error("the pool's master just died and no other took it over yet"),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"message": {"type": "string"}},
                    "required": ["message"],
                },
                "PoolRequest": {
                    "type": "object",
                    "properties": {
                        "cmd": {"type": "string", "minLength": 1},
                        "workers": _WORKERS_LIST,
                        "labels": {**_STRINGS, "description": "key or key=value: every one must be held"},
                        "exclude": {**_STRINGS, "description": "names, node sets or globs taken out"},
                        "timeout": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                        "cwd": {"type": "string", "minLength": 1},
                        "stdin": {"type": "string"},
                        "batch": {
                            "oneOf": [
                                {"type": "integer", "minimum": 1},
                                {"type": "string", "pattern": "^([1-9][0-9]?|100)%$"},
                            ]
                        },
                        "batch_wait": {"type": "number", "minimum": 0},
                        "max_failures": {"type": "integer", "minimum": 1},
                        "wait_offline": {
                            "type": "number", "exclusiveMinimum": True, "minimum": 0,
                            "description": "seconds a job on a known offline worker waits for it",
                        },
                        **_NOTIFY,
                    },
                    "required": ["cmd"],
                    "description": "workers, labels, or both, select the workers",
                },
                "PoolStarted": {
                    "type": "object",
                    "properties": {
                        "pool_id": {"type": "string"},
                        "message": {"type": "string"},
                        "pool": _ref("Pool"),
                    },
                    "required": ["pool_id", "message"],
                },
                "DryRun": {
                    "type": "object",
                    "properties": {
                        "workers": {"type": "array", "items": {"type": "string"}},
                        "offline": {"type": "array", "items": {"type": "string"}},
                        "message": {"type": "string"},
                    },
                    "required": ["workers", "message"],
                },
                "ScheduleRequest": {
                    "type": "object",
                    "properties": {**_SCHEDULE_FIELDS, **_JOB_FIELDS},
                    "required": ["name", "cron", "cmd"],
                },
                "ScheduleChange": {
                    "type": "object",
                    "properties": {**_SCHEDULE_FIELDS, **_JOB_FIELDS},
                },
                "Schedule": {
                    "type": "object",
                    "properties": {
                        **_SCHEDULE_FIELDS,
                        **_JOB_FIELDS,
                        "created_by": _nullable("string"),
                        "created_at": {"type": "string", "format": "date-time"},
                        "next_runs": {"type": "array", "items": {"type": "string", "format": "date-time"}},
                        "last_run": _nullable("string", format="date-time"),
                        "skipped": {"type": "integer"},
                        "runs": {"type": "array", "items": {"type": "object"}},
                        "last_pools": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["name", "cron", "timezone", "paused", "next_runs", "runs", "skipped"],
                },
                "RetryRequest": {
                    "type": "object",
                    "properties": {
                        "states": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "enum": list(RETRIED_STATES)},
                        },
                        "wait_offline": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                    },
                },
                "Scope": {
                    "type": "object",
                    "properties": {
                        "workers": {"type": "array", "items": {"type": "string"}},
                        "labels": {"type": "array", "items": {"type": "string"}},
                        "commands": {"type": "array", "items": {"type": "string"}},
                        "stdin": {"type": "boolean"},
                        "cwd": {"type": "array", "items": {"type": "string"}},
                        "notify": {"type": "array", "items": {"type": "string"}},
                    },
                    "required": ["workers", "labels", "commands"],
                },
                "TokenRequest": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.@:-]{1,64}$"},
                        "read_only": {"type": "boolean"},
                        "workers": {**_STRINGS, "description": "names, node sets or globs it may use"},
                        "labels": {**_STRINGS, "description": "key or key=value every worker it uses holds"},
                        "commands": {**_STRINGS, "description": "globs one of which a whole command matches"},
                        "stdin": {"type": "boolean", "description": "with commands: runs may give stdin"},
                        "cwd": {**_STRINGS, "description": "with commands: directories (globs) runs may start in"},
                        "notify": {**_STRINGS, "description": "URLs (globs) its pools may notify"},
                    },
                    "required": ["name"],
                },
                "TokenInfo": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "read_only": {"type": "boolean"},
                        "scope": {**_ref("Scope"), "nullable": True},
                        "source": {"type": "string", "enum": ["file", "store"]},
                        "created_at": _nullable("string", format="date-time"),
                        "created_by": _nullable("string"),
                    },
                    "required": ["name", "read_only", "scope", "source"],
                },
                "TokenMade": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "token": {"type": "string"},
                        "read_only": {"type": "boolean"},
                        "scope": {**_ref("Scope"), "nullable": True},
                        "message": {"type": "string"},
                    },
                    "required": ["name", "token", "read_only", "scope", "message"],
                },
                "KillRequest": {
                    "type": "object",
                    "properties": {"workers": _WORKERS_LIST},
                },
                "KillSent": {
                    "type": "object",
                    "properties": {
                        "pool_id": {"type": "string"},
                        "workers": {"type": "array", "items": {"type": "string"}},
                        "message": {"type": "string"},
                    },
                    "required": ["pool_id", "workers", "message"],
                },
                "Pool": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "cmd": {"type": "string"},
                        "status": _nullable("integer", enum=[0, 1, None]),
                        "state": {"type": "string", "enum": ["running", "ok", "failed"]},
                        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "jobs": {"type": "array", "items": _ref("Job")},
                        "started_at": {"type": "string", "format": "date-time"},
                        "ended_at": _nullable("string", format="date-time"),
                        "timeout": {"type": "number"},
                        "batch": {"oneOf": [{"type": "integer"}, {"type": "string"}], "nullable": True},
                        "batch_wait": {"type": "number"},
                        "max_failures": _nullable("integer"),
                        "submitted_by": _nullable("string"),
                        "kind": {"type": "string", "enum": ["run", "push", "fetch"]},
                        "retry_of": _nullable("string"),
                        "schedule": _nullable("string"),
                        "wait_offline": {"type": "number"},
                        "wait_until": {"type": "string", "format": "date-time"},
                    },
                    "required": ["id", "cmd", "status", "jobs", "started_at", "ended_at"],
                },
                "Job": {
                    "type": "object",
                    "properties": {
                        "pool": {"type": "string"},
                        "worker_id": {"type": "string"},
                        "cmd": {"type": "string"},
                        "pid": _nullable("integer"),
                        "status": _nullable("integer"),
                        "state": {"type": "string", "enum": list(JOB_STATES)},
                        "result": {"type": "string"},
                        "time_to_calc": _nullable("integer", minimum=0),
                        "started_at": _nullable("string", format="date-time"),
                        "ended_at": _nullable("string", format="date-time"),
                    },
                    "required": [
                        "pool", "worker_id", "cmd", "pid", "status", "state",
                        "time_to_calc", "started_at", "ended_at",
                    ],
                },
                "Worker": _worker_schema(),
                "WorkerWithHistory": _worker_schema(
                    history={
                        "type": "object",
                        "description": "oldest first: one list per figure, and time (Unix seconds)",
                        "additionalProperties": {
                            "type": "array",
                            "items": _nullable("number"),
                        },
                    }
                ),
                "Health": {
                    "type": "object",
                    "properties": {name: _nullable("number") for name in FIGURES},
                    "required": list(FIGURES),
                },
            },
        },
    }
