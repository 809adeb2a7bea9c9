"""
Node sets: many worker names in one item, in ClusterShell's syntax.

C{pi[01-16]} and C{rack[1-2]-node[01-04]} stand for ranges of names (zero
padding kept from the bounds); C{*} and C{?} make an item a glob.
ClusterShell's C{NodeSet} expands and folds them; this module only counts
a range first, so one of a billion names is refused before anything is
expanded.  Shared by the master (targets) and the command line (folding
names for people).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetParseError

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_RANGE = re.compile(r"\s*(\d+)(?:\s*-\s*(\d+)(?:\s*/\s*(\d+))?)?\s*\Z")


class TargetError(ValueError):
    """Targets that cannot be resolved; its message says why."""


class TooMany(TargetError):
    """An item that stands for more names than allowed."""


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[str | int, ...]:
    """Names in the order people read them: C{node2} before C{node10} (numbers as numbers)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name)))


def is_glob(item: str) -> bool:
    return "*" in item or "?" in item


def range_size(item: str) -> int:
    """
    How many names the node set C{item} stands for, counted without
    expanding it.

    @raise TargetError: a bracket that is not a list of numbers and ranges.
    """
    size = 1
    for inside in _BRACKETS.findall(item):
        count = 0
        for part in inside.split(","):
            match = _RANGE.match(part)
            if match is None:
                raise TargetError(f"{item!r}: [{inside}] is not a list of numeric ranges")
            low, high, step = match.groups()
            if high is None:
                count += 1
            elif int(high) < int(low):
                raise TargetError(f"{item!r}: the range {low}-{high} goes backwards")
            else:
                count += (int(high) - int(low)) // int(step or 1) + 1
        size *= count
    return size


def split_item(item: str) -> list[str]:
    """
    An item's comma-separated parts, as clush and pdsh users write them
    (C{pi[01-04],gpu1,web*}): commas inside brackets stay with their range.
    Worker names hold no comma, so nothing is ambiguous.

    @raise TargetError: an item with no name at all.
    """
    parts: list[str] = []
    depth = start = 0
    for at, char in enumerate(item):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(item[start:at])
            start = at + 1
    parts.append(item[start:])
    parts = [part.strip() for part in parts if part.strip()]
    if not parts:
        raise TargetError(f"{item!r} names no worker")
    return parts


def expand(item: str, most: int) -> list[str]:
    """
    The names (or globs) a target item stands for, in order: a name, a node
    set or a glob, or several of them separated by commas.

    @raise TargetError: a malformed item, or one of more than C{most} names.
    """
    names: list[str] = []
    for part in split_item(item):
        if "[" not in part and "]" not in part:
            names.append(part)
            continue
        if range_size(part) > most:
            raise TooMany(f"{part!r} stands for more than {most} workers")
        try:
            names.extend(NodeSet(part, resolver=RESOLVER_NOGROUP))
        except NodeSetParseError as e:
            raise TargetError(f"{part!r} is not a node set: {e}") from None
        if len(names) > most:
            raise TooMany(f"{item!r} stands for more than {most} workers")
    return names


def fold(names: Iterable[str]) -> str:
    """Names folded into one node set, for people: C{pi[01-04,07]}."""
    names = list(names)
    if not names:
        return ""
    try:
        return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    except NodeSetParseError:
        return ",".join(sorted(names))


def select_among(items: Iterable[str], names: Iterable[str], most: int = 100_000) -> list[str]:
    """The C{names} that C{items} (names, node sets, globs) stand for, in order."""
    wanted: set[str] = set()
    globs: list[str] = []
    for item in items:
        for name in expand(item, most):
            if is_glob(name):
                globs.append(name)
            else:
                wanted.add(name)
    return [
        name
        for name in names
        if name in wanted or any(fnmatch.fnmatchcase(name, g) for g in globs)
    ]
