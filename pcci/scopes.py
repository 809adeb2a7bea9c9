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
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    """
    A command glob as a regular expression whose wildcards stay in one
    command.  In the program (the glob's first word) a wildcard never
    matches C{/} or a space: C{/opt/tools/bin/*} names the programs of one
    directory.  A C{*} ending a glob whose program it is part of also allows
    any arguments (C{nvidia-smi*} allows C{nvidia-smi -q}).
    """
    special = re.escape(SHELL_SPECIAL)
    in_word = f"[^/\\s{special}]"
    anywhere = f"[^{special}]"
    parts = []
    program = True
    for n, char in enumerate(glob):
        if char.isspace():
            program = False
        if char == "*":
            parts.append((in_word if program else anywhere) + "*")
            if program and n == len(glob) - 1:
                parts.append(f"(?:\\s{anywhere}*)?")
        elif char == "?":
            parts.append(in_word if program else anywhere)
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _path_pattern(glob: str) -> re.Pattern[str]:
    """A directory glob whose wildcards stay within one part of the path."""
    parts = ["[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char) for char in glob.rstrip("/")]
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _normal_program(word: str) -> str | None:
    """
    A program's path without doubled slashes or C{.} parts (None if it has
    a C{..} part: a symbolic link on the way makes C{dir/..} somewhere else).
    """
    if "/" not in word:
        return word
    parts = word.split("/")
    if ".." in parts:
        return None
    kept = "/".join(part for part in parts if part not in ("", "."))
    if word.startswith("/"):
        return "/" + kept
    return "./" + kept if word.startswith("./") else kept


def command_as_matched(cmd: str) -> str | None:
    """
    The command as patterns see it: its program's path made normal, the
    rest as written.  None for a command no pattern may allow: one that
    cannot be split, a quoted or escaped program (what runs would not be
    what is matched), or a program path with C{..}.
    """
    try:
        argv = shlex.split(cmd)
    except ValueError:
        return None
    text = cmd.lstrip()
    first = text.split(None, 1)[0] if text else ""
    if not argv or first != argv[0]:
        return None
    program = _normal_program(first)
    if program is None:
        return None
    return program + text[len(first):]


#: What a scope may grant beyond its limits, as JSON and token lines name them.
GRANTS = ("stdin", "cwd", "notify", "shell")


@dataclass(frozen=True)
class Scope:
    """
    The workers, labels and commands a token is limited to, and what such a
    token may add to its runs: C{stdin} and C{cwd} (when its commands are
    limited), C{notify} URLs (any scoped token).
    """

    workers: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    #: With command patterns: whether a run may feed the command's standard input.
    stdin: bool = False
    #: With command patterns: the directories (globs) a run may start in.
    cwd: tuple[str, ...] = ()
    #: The URLs (globs) its pools may ask to be told of their end.
    notify: tuple[str, ...] = ()
    #: Whether it may open shells (C{pcci shell}) on its workers.
    shell: bool = False
    _names: tuple[frozenset[str], tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in ("workers", "labels", "commands", "cwd", "notify"):
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
        for directory in self.cwd:
            if not directory.startswith("/") or _normal_program(directory) != (directory.rstrip("/") or "/"):
                raise ScopeError(f"cwd: {directory!r} must be an absolute path without . or .. parts")
        for url in self.notify:
            if not url.startswith(("http://", "https://")):
                raise ScopeError(f"notify: {url!r} must be an http:// or https:// URL pattern")
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
        """
        A scope from C{{"workers": [...], "labels": [...], "commands": [...]}},
        with C{"stdin": true}, C{"cwd": [...]}, C{"notify": [...]} if granted;
        None if it limits nothing.
        """
        if body is None:
            return None
        if not isinstance(body, dict):
            raise ScopeError("a scope is an object of workers, labels and commands")
        known = ("workers", "labels", "commands", *GRANTS)
        unknown = set(body) - set(known)
        if unknown:
            raise ScopeError(
                "a scope holds only " + ", ".join(known) + ", not " + ", ".join(sorted(unknown))
            )
        parts: dict[str, Any] = {}
        for kind in ("workers", "labels", "commands", "cwd", "notify"):
            value = body.get(kind) or []
            if not isinstance(value, list):
                raise ScopeError(f"{kind} must be a list of strings")
            parts[kind] = tuple(value)
        flags = {key: body.get(key, False) for key in ("stdin", "shell")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ScopeError(f"{key} must be true or false")
        scope = cls(**parts, **flags)
        return scope if scope.limited else None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "workers": list(self.workers),
            "labels": list(self.labels),
            "commands": list(self.commands),
        }
        if self.stdin:
            body["stdin"] = True
        if self.cwd:
            body["cwd"] = list(self.cwd)
        if self.notify:
            body["notify"] = list(self.notify)
        if self.shell:
            body["shell"] = True
        return body

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
        """Whether the whole command matches one of the patterns (any, without; see L{command_as_matched})."""
        if not self.commands:
            return True
        matched = command_as_matched(cmd)
        return matched is not None and any(p.match(matched) for p in self._patterns)

    def allows_cwd(self, directory: str) -> bool:
        """Whether a run may start in C{directory}: always, unless its commands are limited."""
        if not self.commands:
            return True
        normal = _normal_program(directory) if directory.startswith("/") else None
        if normal is None:
            return False
        return any(_path_pattern(glob).match(normal) for glob in self.cwd)

    def allows_notify(self, url: str) -> bool:
        """Whether a pool may ask for C{url} to be told of its end: one of its C{notify} globs matches."""
        return any(fnmatch.fnmatchcase(url, glob) for glob in self.notify)

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
        words += ["stdin=yes"] if self.stdin else []
        words += [f"cwd={c}" for c in self.cwd]
        words += [f"notify={url}" for url in self.notify]
        words += ["shell=yes"] if self.shell else []
        return " ".join(words)
