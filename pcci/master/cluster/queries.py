"""
Queries over workers' facts and labels: C{os.id=debian and cpus>=4 and not
gpu.count=0}.

The grammar (see C{docs/api.md}, "Queries")::

    query      := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" or ")" | comparison
    comparison := path op value | path "in" "(" value ("," value)* ")"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | "~"
    path       := name ("." name)*          a fact, labels.KEY, or name
    value      := number | "text" | 'text' | word

A number may end in K, M, G or T (powers of 1024: C{memory>=8G}).  C{~}
matches a glob.  C{<} and its kin compare numbers as numbers, versions
(C{os.version>=11}, C{pcci<2.1}) part by part, else text.  A path through a
list (C{filesystems.mount=/data}) holds when any item does.  A fact a
worker lacks makes its comparisons false (C{!=} too): C{not} turns them.

A query is parsed once into a tree of small records that print back as the
text they came from (L{unparse}); an error names the character it is at.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Union

#: The longest query taken.
MAX_QUERY = 4096

OPERATORS = ("<=", ">=", "!=", "=", "<", ">", "~")
KEYWORDS = ("and", "or", "not", "in")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WORD = re.compile(r"[^\s()=!<>~,\"']+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([KMGT])?\Z")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*\Z")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class QueryError(ValueError):
    """A query that is not one: why, and at which character (0-based)."""

    def __init__(self, why: str, text: str, at: int) -> None:
        self.why = why
        self.at = at
        pointer = " " * at + "^"
        super().__init__(f"query: {why} at character {at + 1}:\n  {text}\n  {pointer}")


@dataclass(frozen=True)
class Compare:
    path: tuple[str, ...]
    op: str
    value: str


@dataclass(frozen=True)
class In:
    path: tuple[str, ...]
    values: tuple[str, ...]


@dataclass(frozen=True)
class Not:
    term: Query


@dataclass(frozen=True)
class And:
    terms: tuple[Query, ...]


@dataclass(frozen=True)
class Or:
    terms: tuple[Query, ...]


Query = Union[Compare, In, Not, And, Or]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def fail(self, why: str, at: int | None = None) -> QueryError:
        return QueryError(why, self.text, self.at if at is None else at)

    def skip(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def keyword(self, word: str) -> bool:
        self.skip()
        end = self.at + len(word)
        if self.text[self.at:end].lower() == word and (end == len(self.text) or not _is_word(self.text[end])):
            self.at = end
            return True
        return False

    def symbol(self, char: str) -> bool:
        self.skip()
        if self.text.startswith(char, self.at):
            self.at += len(char)
            return True
        return False

    def parse(self) -> Query:
        self.skip()
        if self.at == len(self.text):
            raise self.fail("the query is empty")
        query = self.or_()
        self.skip()
        if self.at < len(self.text):
            raise self.fail("expected 'and', 'or' or the end")
        return query

    def or_(self) -> Query:
        terms = [self.and_()]
        while self.keyword("or"):
            terms.append(self.and_())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def and_(self) -> Query:
        terms = [self.not_()]
        while self.keyword("and"):
            terms.append(self.not_())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def not_(self) -> Query:
        if self.keyword("not"):
            return Not(self.not_())
        if self.symbol("("):
            inner = self.or_()
            if not self.symbol(")"):
                raise self.fail("expected ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Query:
        path = self.path()
        if self.keyword("in"):
            if not self.symbol("("):
                raise self.fail("expected '(' after 'in'")
            values = [self.value()]
            while self.symbol(","):
                values.append(self.value())
            if not self.symbol(")"):
                raise self.fail("expected ',' or ')'")
            return In(path, tuple(values))
        self.skip()
        for op in OPERATORS:
            if self.text.startswith(op, self.at):
                self.at += len(op)
                return Compare(path, op, self.value())
        raise self.fail("expected one of = != < <= > >= ~ in")

    def path(self) -> tuple[str, ...]:
        self.skip()
        parts: list[str] = []
        while True:
            found = _NAME.match(self.text, self.at)
            if found is None:
                raise self.fail("expected a fact's name" if not parts else "expected a name after '.'")
            if not parts and found.group().lower() in KEYWORDS:
                raise self.fail(f"expected a fact's name, not '{found.group()}'")
            parts.append(found.group())
            self.at = found.end()
            if not self.text.startswith(".", self.at):
                return tuple(parts)
            self.at += 1

    def value(self) -> str:
        self.skip()
        if self.at < len(self.text) and self.text[self.at] in "\"'":
            quote, start = self.text[self.at], self.at
            end = self.text.find(quote, self.at + 1)
            if end < 0:
                raise self.fail(f"a text opened with {quote} is not closed", start)
            self.at = end + 1
            return self.text[start + 1:end]
        found = _WORD.match(self.text, self.at)
        if found is None:
            raise self.fail("expected a value")
        self.at = found.end()
        return found.group()


def _is_word(char: str) -> bool:
    return char.isalnum() or char in "_-."


def parse(text: str) -> Query:
    """
    The query C{text} says.

    @raise QueryError: it is not one, with where.
    """
    if len(text) > MAX_QUERY:
        raise QueryError(f"longer than {MAX_QUERY} characters", text[:60] + "…", 60)
    return _Parser(text).parse()


def unparse(query: Query) -> str:
    """The query as text that parses back to it."""
    if isinstance(query, Compare):
        return f"{'.'.join(query.path)}{query.op}{_quoted(query.value)}"
    if isinstance(query, In):
        return f"{'.'.join(query.path)} in ({', '.join(_quoted(v) for v in query.values)})"
    if isinstance(query, Not):
        return f"not {_grouped(query.term)}"
    joiner = " and " if isinstance(query, And) else " or "
    return joiner.join(_grouped(term) for term in query.terms)


def _grouped(query: Query) -> str:
    return f"({unparse(query)})" if isinstance(query, (And, Or)) else unparse(query)


def _quoted(value: str) -> str:
    if _WORD.fullmatch(value) and value.lower() not in KEYWORDS:
        return value
    return f"'{value}'" if "'" not in value else f'"{value}"'


def paths(query: Query) -> Iterable[tuple[str, ...]]:
    """Every fact the query reads."""
    if isinstance(query, (Compare, In)):
        yield query.path
    elif isinstance(query, Not):
        yield from paths(query.term)
    else:
        for term in query.terms:
            yield from paths(term)


def matches(query: Query, worker: Mapping[str, Any]) -> bool:
    """Whether a worker (its facts, with C{labels} and C{name}) is one the query means."""
    return compiled(query)(worker)


Test = Callable[[Mapping[str, Any]], bool]


def compiled(query: Query) -> Test:
    """
    The query as one function of a worker's document: each value parsed
    once, not at every worker (a fleet is 10,000 of them).
    """
    if isinstance(query, (Compare, In)):
        return _leaf(query.path, holds_of(query))
    if isinstance(query, Not):
        inner = compiled(query.term)
        return lambda worker: not inner(worker)
    tests = tuple(compiled(term) for term in query.terms)
    if isinstance(query, And):

        def every(worker: Mapping[str, Any]) -> bool:
            for test in tests:
                if not test(worker):
                    return False
            return True

        return every

    def some(worker: Mapping[str, Any]) -> bool:
        for test in tests:
            if test(worker):
                return True
        return False

    return some


def holds_of(leaf: Compare | In) -> Callable[[Any], bool]:
    """Whether one value found at a leaf's path is one it means."""
    if isinstance(leaf, Compare):
        return _Wanted(leaf.op, leaf.value).holds
    return _one_of(leaf.values)


def _one_of(values: tuple[str, ...]) -> Callable[[Any], bool]:
    """C{in (…)}: equal to one of the values, as text or as a number."""
    texts = set(values)
    numbers = {n for n in map(_number, values) if n is not None}

    def holds(found: Any) -> bool:
        kind = type(found)
        if kind is bool:
            return ("true" if found else "false") in texts
        if kind is int or kind is float:
            return float(found) in numbers or str(found) in texts
        return (found if kind is str else str(found)) in texts

    return holds


def _leaf(path: tuple[str, ...], holds: Callable[[Any], bool]) -> Test:
    def test(worker: Mapping[str, Any]) -> bool:
        value: Any = worker
        for part in path:
            kind = type(value)
            if kind is dict:
                value = value.get(part)
            elif kind is list:  # through a list: any item
                return any(holds(found) for found in scalars(value, path[path.index(part):]))
            else:
                get = getattr(value, "get", None)  # a worker's document, or nothing to look into
                if get is None:
                    return False
                value = get(part)
            if value is None:
                return False
        if isinstance(value, (dict, Mapping)):
            return False
        if isinstance(value, list):
            return any(holds(found) for found in scalars(value, ()))
        return holds(value)

    return test


class _Wanted:
    """One side of a comparison, parsed once: the text, and what it is as a number and a version."""

    __slots__ = ("op", "text", "number", "version")

    def __init__(self, op: str, text: str) -> None:
        self.op = op
        self.text = text
        self.number = _number(text)
        self.version = _version(text) if _VERSION.match(text) else None

    def holds(self, found: Any) -> bool:
        op = self.op
        kind = type(found)
        if kind is str:
            if op == "=":
                return found == self.text  # the most common test: first, and short
        elif kind is bool:
            found = "true" if found else "false"
        elif (kind is int or kind is float) and self.number is not None and op != "~":
            number = float(found)
            if op == "=":
                return number == self.number
            if op == "!=":
                return number != self.number
            return _ordered(op, number, self.number)
        text = found if isinstance(found, str) else str(found)
        if op == "~":
            return fnmatch.fnmatchcase(text, self.text)
        if op == "=":
            return text == self.text
        if op == "!=":
            return text != self.text
        if self.version is not None and _VERSION.match(text):
            return _ordered(op, _version(text), self.version)
        return _ordered(op, text, self.text)


def _ordered(op: str, left: Any, right: Any) -> bool:
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def values(document: Any, path: tuple[str, ...]) -> Iterable[Any]:
    """What is at C{path} (through lists: in each item), objects included."""
    if isinstance(document, list):
        for item in document:
            yield from values(item, path)
    elif not path:
        if document is not None:
            yield document
    elif isinstance(document, Mapping) and path[0] in document:
        yield from values(document[path[0]], path[1:])


def scalars(value: Any, path: tuple[str, ...]) -> Iterable[Any]:
    """The values at C{path} a comparison reads (not objects), going into every item of a list on the way."""
    if isinstance(value, list):
        for item in value:
            yield from scalars(item, path)
        return
    if not path:
        if value is not None and not isinstance(value, dict):
            yield value
        return
    if isinstance(value, Mapping) and path[0] in value:
        yield from scalars(value[path[0]], path[1:])


def _number(text: str) -> float | None:
    found = _NUMBER.match(text)
    if found is None:
        return None
    unit = found.group(2)
    return float(text[:-1] if unit else text) * (_UNITS[unit] if unit else 1)


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 12 and 12.0 are the same version
    return tuple(parts)
