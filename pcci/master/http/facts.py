"""
Workers' facts (C{GET /facts}) and asking workers to look again
(C{POST /facts/refresh}); queries over them (L{pcci.master.cluster.queries}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.web.iweb import IRequest

from pcci.master.access import permits
from pcci.master.cluster import queries
from pcci.master.cluster.model import WorkerRecord, document_key, rfc3339
from pcci.master.cluster.queries import Query, QueryError
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    APIError,
    bool_arg,
    int_arg,
    json_answer,
    list_arg,
    read_object,
    request_token,
    string_list,
    text_arg,
)
from pcci.nodes import TargetError, natural_key
from pcci.request import no_such_fields, unknown_fields

#: Facts a C{fields} may name at most.
MAX_FIELDS = 32
#: Workers' rows an answer holds at most (C{limit}).
MAX_LISTED = 1_000_000


class FactRoutes(APIBase):
    """What each worker told of its machine, and queries over it."""

    @app.route("/facts", methods=["GET"])
    def facts(self, request: IRequest) -> bytes:
        """
        Each worker's facts (with C{?all=true}, offline ones' too, as last
        told), chosen by C{workers}, C{labels}, C{exclude} and C{query}, in
        the order of their names (numbers as numbers), the first C{limit};
        with C{fields}, only those facts (dotted paths).
        """
        every = bool_arg(request, "all", False)
        limit = int_arg(request, "limit", MAX_LISTED, 1, MAX_LISTED)
        names = _items(list_arg(request, "workers"))
        fields = [tuple(f.split(".")) for f in _items(list_arg(request, "fields"))]
        if len(fields) > MAX_FIELDS:
            raise APIError(400, f"fields names at most {MAX_FIELDS} facts")
        chosen = self._chosen(
            request, names or None, _items(list_arg(request, "labels")), _items(list_arg(request, "exclude")),
            _query(text_arg(request, "query")), every,
        )
        readers = [(".".join(path), _reader(path)) for path in fields]
        records = self.roster.records
        return json_answer(request, [_shown(records[name], readers) for name in chosen[:limit]])

    @app.route("/facts/refresh", methods=["POST"])
    def facts_refresh(self, request: IRequest) -> bytes:
        """Ask the chosen workers connected here to look at their facts now: 202."""
        body = read_object(request, self.limits.max_body, required=False)
        unknown = unknown_fields(body, ("workers", "labels", "exclude", "query"))
        if unknown:
            raise APIError(400, no_such_fields("a refresh", unknown))
        names = None if body.get("workers") is None else string_list(body["workers"], "workers", 10_000)
        labels = [] if body.get("labels") is None else string_list(body["labels"], "labels", 64)
        exclude = [] if body.get("exclude") is None else string_list(body["exclude"], "exclude", 10_000)
        query = _query(body["query"] if isinstance(body.get("query"), str) else None)
        asked, too_old = [], {}
        for name in self._chosen(request, names, labels, exclude, query, False):
            link = self.roster.links.get(name)
            if link is None:
                continue
            if link.refresh_facts():
                asked.append(name)
            else:
                too_old[name] = "its pcci tells no facts: upgrade it"
        return json_answer(request, {"asked": asked, "not_asked": too_old}, 202)

    def _chosen(
        self, request: IRequest, names: list[str] | None, labels: list[str], exclude: list[str],
        query: Query | None, every: bool,
    ) -> list[str]:
        """The workers a request means within its token's scope: all of them when it names none."""
        token = request_token(request)
        if names is None and not labels and query is None:
            candidates = permits.workers_in_scope(token, self.roster, online=not every)
            return sorted((n for n in candidates if n not in exclude), key=natural_key)
        try:
            return sorted(permits.select_workers(
                token, self.roster, names, labels, exclude, self.limits.max_workers, every, query, empty_ok=True,
            ), key=natural_key)
        except permits.Forbidden as e:
            raise self._refuse(request, str(e)) from None
        except TargetError as e:
            raise APIError(400, str(e)) from None


def _items(values: list[str]) -> list[str]:
    """Query arguments given once or more, each a comma list."""
    return [item for value in values for item in value.split(",") if item]


def _query(text: str | None) -> Query | None:
    if text is None:
        return None
    try:
        return queries.parse(text)
    except QueryError as e:
        raise APIError(400, str(e)) from None


def _shown(record: WorkerRecord, fields: list[tuple[str, Callable[[WorkerRecord], Any]]]) -> dict[str, Any]:
    """A worker's facts, or only the C{fields} asked for (and then not its labels: a fleet is large)."""
    shown: dict[str, Any] = {"name": record.name, "online": record.online, "facts_at": rfc3339(record.facts_at)}
    if fields:
        shown["fields"] = {name: read(record) for name, read in fields}
    else:
        shown["labels"] = record.labels
        shown["facts"] = record.facts
    return shown


def _reader(path: tuple[str, ...]) -> Callable[[WorkerRecord], Any]:
    """
    The value at a dotted path of a worker's document, as one function of
    its record: one value, a list of them (through lists), or None.
    """
    head, rest = document_key(path[0]), path[1:]
    if not rest:
        return head

    def read(record: WorkerRecord) -> Any:
        value = head(record)
        for at, part in enumerate(rest):  # objects all the way, the common case: no list to go through
            kind = type(value)
            if kind is dict:
                value = value.get(part)
            elif kind is list:
                found = list(queries.values(value, rest[at:]))
                return None if not found else found[0] if len(found) == 1 else found
            else:
                return None
        return value

    return read
