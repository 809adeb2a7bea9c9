"""
Queries answered from an index of the workers' facts, not a walk through
10,000 documents.

A fleet holds few distinct values per fact (a handful of OS versions, of
CPU counts, of racks), so a comparison is tested once per distinct value
and the workers holding each come as a set; C{and}, C{or} and C{not} are
set operations.  The index keeps one column per fact path a query has read
(the last L{MOST_COLUMNS} of them); a worker whose facts or labels change
is marked in each, and read again when a query next needs that column.

C{online} and C{health} change at every heartbeat: comparisons on them
walk the workers' documents, as L{queries.compiled} does.  Both ways mean
the same (a property test holds them to it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Callable

from pcci.master.cluster import queries
from pcci.master.cluster.queries import And, Compare, In, Not, Query

#: Columns kept: one per fact path read by recent queries.
MOST_COLUMNS = 64

#: Paths read from the document at each query, never indexed.
VOLATILE = ("online", "health")

Key = tuple[type, Any]


class _Column:
    """The workers holding each value at one path (through lists: each item's)."""

    __slots__ = ("path", "by_value", "by_name", "stale")

    def __init__(self, path: tuple[str, ...], names: Iterable[str]) -> None:
        self.path = path
        self.by_value: dict[Key, set[str]] = {}
        self.by_name: dict[str, tuple[Key, ...]] = {}
        #: Workers to read again before the column is used.
        self.stale: set[str] = set(names)

    def refresh(self, document: Callable[[str], Mapping[str, Any] | None]) -> None:
        for name in self.stale:
            for key in self.by_name.pop(name, ()):
                holders = self.by_value[key]
                holders.discard(name)
                if not holders:
                    del self.by_value[key]
            found = document(name)
            if found is None:
                continue
            keys = tuple(dict.fromkeys((type(v), v) for v in queries.scalars(found, self.path)))
            if keys:
                self.by_name[name] = keys
                for key in keys:
                    self.by_value.setdefault(key, set()).add(name)
        self.stale.clear()


class FactIndex:
    """
    The workers' facts and labels by value, for queries over the fleet.

    @param names: every worker's name, now.
    @param document: a worker's document (what a query reads: see
        L{pcci.master.cluster.model.WorkerDocument}), or C{None} when it is gone.
    """

    def __init__(
        self, names: Callable[[], Iterable[str]], document: Callable[[str], Mapping[str, Any] | None],
    ) -> None:
        self._names = names
        self._document = document
        self._columns: OrderedDict[tuple[str, ...], _Column] = OrderedDict()

    def changed(self, name: str) -> None:
        """A worker's facts, labels or record changed, or it was forgotten."""
        for column in self._columns.values():
            column.stale.add(name)

    def has(self, path: tuple[str, ...]) -> bool:
        """Whether some worker has a value at C{path}."""
        if path[0] in VOLATILE:
            return True
        return bool(self._column(path).by_value)

    def chosen(self, query: Query, among: Iterable[str]) -> list[str]:
        """Those of C{among} whose documents match C{query}, in their order."""
        among = list(among)
        universe = set(among)
        found = self._matching(query, universe)
        return [name for name in among if name in found]

    def _matching(self, query: Query, universe: set[str]) -> set[str]:
        if isinstance(query, (Compare, In)):
            if query.path[0] in VOLATILE:
                test, document = queries.compiled(query), self._document
                return {name for name in universe if (found_in := document(name)) is not None and test(found_in)}
            found: set[str] = set()
            holds = queries.holds_of(query)
            for (_, value), holders in self._column(query.path).by_value.items():
                if holds(value):
                    found |= holders
            return found & universe
        if isinstance(query, Not):
            return universe - self._matching(query.term, universe)
        if isinstance(query, And):
            found = universe
            for term in query.terms:
                found = self._matching(term, found)
                if not found:
                    break
            return found
        found = set()
        for term in query.terms:
            found |= self._matching(term, universe - found)
        return found

    def _column(self, path: tuple[str, ...]) -> _Column:
        column = self._columns.get(path)
        if column is None:
            column = self._columns[path] = _Column(path, self._names())
            if len(self._columns) > MOST_COLUMNS:
                self._columns.popitem(last=False)
        else:
            self._columns.move_to_end(path)
        column.refresh(self._document)
        return column
