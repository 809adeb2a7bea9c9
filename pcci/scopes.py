"""
What a scoped API token may use: which workers (names, node sets, globs),
which labels those workers must hold, which commands it may run.

A scope narrows a token; it never widens one.  An empty part allows
everything of its kind: a scope of only C{labels} reaches every worker
holding them, with any command.  See C{docs/security.md}.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pcci.labels import has_labels, parse_label
from pcci.nodes import TargetError, expand, is_glob

#: Characters a wildcard of a command pattern never matches: what would
#: chain, substitute or redirect a second command after an allowed one.
SHELL_SPECIAL = ";&|<>$`\\()\n\r"

#: Most items of each kind in one scope.
MAX_ITEMS = 64


class ScopeError(ValueError):
    """A scope that cannot be used; its message names the item at fault."""


def _command_pattern(glob: str) -> re.Pattern[str]:
    """A command glob as a regular expression whose wildcards stay in one command."""
    allowed = "[^" + re.escape(SHELL_SPECIAL) + "]"
    parts = []
    for char in glob:
        if char == "*":
            parts.append(allowed + "*")
        elif char == "?":
            parts.append(allowed)
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class Scope:
    """The workers, labels and commands a token is limited to."""

    workers: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    _names: tuple[frozenset[str], tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in ("workers", "labels", "commands"):
            items = getattr(self, kind)
            if len(items) > MAX_ITEMS:
                raise ScopeError(f"{kind}: more than {MAX_ITEMS} items")
            if not all(isinstance(item, str) and item.strip() for item in items):
                raise ScopeError(f"{kind}: each item must be non-empty text")
        for item in self.workers:
            try:
                expand(item, 100_000)
            except TargetError as e:
                raise ScopeError(f"workers: {e}") from None
        for label in self.labels:
            try:
                parse_label(label)
            except ValueError as e:
                raise ScopeError(f"labels: {e}") from None
        object.__setattr__(self, "_names", self._expanded())
        object.__setattr__(self, "_patterns", tuple(_command_pattern(c) for c in self.commands))

    def _expanded(self) -> tuple[frozenset[str], tuple[str, ...]]:
        names: set[str] = set()
        globs: list[str] = []
        for item in self.workers:
            for name in expand(item, 100_000):
                if is_glob(name):
                    globs.append(name)
                else:
                    names.add(name)
        return frozenset(names), tuple(globs)

    @classmethod
    def from_json(cls, body: Any) -> Scope | None:
        """A scope from C{{"workers": [...], "labels": [...], "commands": [...]}}; None if empty."""
        if body is None:
            return None
        if not isinstance(body, dict):
            raise ScopeError("a scope is an object of workers, labels and commands")
        unknown = set(body) - {"workers", "labels", "commands"}
        if unknown:
            raise ScopeError("a scope holds only workers, labels and commands, not " + ", ".join(sorted(unknown)))
        parts = {}
        for kind in ("workers", "labels", "commands"):
            value = body.get(kind) or []
            if not isinstance(value, list):
                raise ScopeError(f"{kind} must be a list of strings")
            parts[kind] = tuple(value)
        scope = cls(**parts)
        return scope if scope.limited else None

    def to_json(self) -> dict[str, list[str]]:
        return {
            "workers": list(self.workers),
            "labels": list(self.labels),
            "commands": list(self.commands),
        }

    @property
    def limited(self) -> bool:
        return bool(self.workers or self.labels or self.commands)

    def allows_name(self, name: str) -> bool:
        """Whether a worker of this name may be used, whatever its labels."""
        if not self.workers:
            return True
        names, globs = self._names
        return name in names or any(fnmatch.fnmatchcase(name, g) for g in globs)

    def allows_worker(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether the worker C{name}, holding C{labels}, may be used."""
        return self.allows_name(name) and has_labels(labels, self.labels)

    def allows_command(self, cmd: str) -> bool:
        """Whether the whole command matches one of the patterns (any, without)."""
        if not self.commands:
            return True
        return any(p.match(cmd) for p in self._patterns)

    def within(self, workers: Mapping[str, Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
        """The workers of C{workers} (name to labels) this scope allows."""
        return {n: labels for n, labels in workers.items() if self.allows_worker(n, labels)}

    def outside(
        self, items: Iterable[str], known: Mapping[str, Mapping[str, str]], most: int
    ) -> list[str]:
        """
        The workers C{items} name outright (not by a glob) that this scope
        does not allow: by name, or (when C{known}) by the labels they hold.
        """
        refused = []
        for item in items:
            for name in expand(item, most):
                if is_glob(name):
                    continue
                labels = known.get(name)
                allowed = self.allows_name(name) if labels is None else self.allows_worker(name, labels)
                if not allowed:
                    refused.append(name)
        return list(dict.fromkeys(refused))

    def describe(self) -> str:
        """The scope in a line, as a tokens file writes it."""
        words = [f"workers={w}" for w in self.workers]
        words += [f"labels={label}" for label in self.labels]
        words += [f"commands={c}" for c in self.commands]
        return " ".join(words)
