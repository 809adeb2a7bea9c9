"""
Which workers a request means: names, node sets, globs and labels.

An item of a request's C{workers} (or C{exclude}) is a worker name, a node
set or a glob (see L{pcci.nodes}).  Names and node sets mean exactly those
workers, which must be there; a glob means whichever of the candidates
match it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

from pcci.labels import has_labels, parse_label
from pcci.master.cluster import queries
from pcci.master.cluster.factindex import FactIndex
from pcci.master.cluster.queries import Query
from pcci.nodes import TargetError, TooMany, expand, is_glob
from pcci.wire import VALID_NAME

#: What a message about too many workers adds: where the limit comes from.
POOL_LIMIT = ": a pool holds at most that many (the master's --max-workers raises it)"


def _expanded(item: str, most: int) -> list[str]:
    try:
        return expand(item, most)
    except TooMany as e:
        raise TargetError(str(e) + POOL_LIMIT) from None


def resolve(
    items: Iterable[str],
    candidates: Iterable[str],
    most: int,
    field: str = "workers",
    missing: str = "unknown or disconnected workers",
) -> list[str]:
    """
    The names C{items} stand for, in the order given, each once.

    Names (plain or from node sets) must be among C{candidates}; globs match
    the candidates and must match at least one.

    @raise TargetError: naming the missing workers, the globs that matched
        nobody, or a malformed item.
    """
    known = list(candidates)
    present = set(known)
    chosen: dict[str, None] = {}
    absent: list[str] = []
    for item in items:
        for name in _expanded(item, most):
            if is_glob(name):
                matched = [c for c in known if fnmatch.fnmatchcase(c, name)]
                if not matched:
                    raise TargetError(f"{field}: {name!r} matches no worker")
                chosen.update(dict.fromkeys(matched))
            elif name in present:
                chosen[name] = None
            elif not VALID_NAME.match(name):
                raise TargetError(f"{field}: {name!r} is not a worker name")
            else:
                absent.append(name)
        if len(chosen) > most:
            raise TargetError(f"{field} names more than {most} workers" + POOL_LIMIT)
    if absent:
        raise TargetError(f"{missing}: " + ", ".join(dict.fromkeys(absent)))
    return list(chosen)


def select(
    workers: list[str] | None,
    labels: list[str],
    exclude: list[str],
    online: Mapping[str, Mapping[str, str]],
    most: int,
    query: Query | None = None,
    index: FactIndex | None = None,
    empty_ok: bool = False,
) -> list[str]:
    """
    The workers of a pool request: those C{workers} name (every online one
    when C{None}), holding all C{labels}, whose facts match C{query}, less
    C{exclude}.

    @param online: the connected workers and their labels.
    @param index: the workers' facts and labels, which a query reads.
    @raise TargetError: when the request is malformed or selects nobody
        (unless C{empty_ok}), or its query reads a fact none of the workers has.
    """
    for label in labels:
        try:
            parse_label(label)
        except ValueError as e:
            raise TargetError(str(e)) from None
    if workers is None:
        if not labels and query is None:
            raise TargetError("give workers, labels, a query, or some of them")
        chosen = list(online)
    else:
        chosen = resolve(workers, online, most)
    if labels:
        chosen = [name for name in chosen if has_labels(online[name], labels)]
    if query is not None:
        if index is None:
            raise TargetError("this master keeps no facts to query")
        unknown = [p for p in dict.fromkeys(queries.paths(query))
                   if p[0] not in ("labels", "name") and not index.has(p)]
        if unknown:
            raise TargetError("query: no worker has a fact " + ", ".join(".".join(p) for p in unknown))
        chosen = index.chosen(query, chosen)
    if exclude:
        # Excluding a worker that is not there is no error: it is excluded.
        out: set[str] = set()
        for item in exclude:
            for name in _expanded(item, most):
                if is_glob(name):
                    out.update(n for n in chosen if fnmatch.fnmatchcase(n, name))
                else:
                    out.add(name)
        chosen = [name for name in chosen if name not in out]
    if not chosen and not empty_ok:
        raise TargetError(_nobody(workers, labels, exclude, query))
    if len(chosen) > most:
        raise TargetError(f"the request selects {len(chosen)} workers, more than {most}" + POOL_LIMIT)
    return chosen


def _nobody(workers: list[str] | None, labels: list[str], exclude: list[str], query: Query | None) -> str:
    parts = []
    if workers is not None:
        parts.append("workers " + ", ".join(workers))
    else:
        parts.append("the online workers")
    if labels:
        parts.append("with labels " + ", ".join(labels))
    if query is not None:
        parts.append(f"matching {queries.unparse(query)}")
    if exclude:
        parts.append("less " + ", ".join(exclude))
    return "no worker selected: " + " ".join(parts)

