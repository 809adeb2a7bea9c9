"""
The store's tables and their migrations, as data files per engine, in the
way of magic-wormhole's C{db-schemas}: C{schema/<engine>/v<N>.sql} makes
a new database at version N; C{schema/<engine>/upgrade-to-v<N>.sql}
brings one from N-1 to N.  A database keeps its version in C{meta}.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any, Callable

#: The schema version each engine's files reach; a database of a newer one is refused.
#: SQLite: 2 pools' C{submitted_by} and C{schedule}, tokens, schedules, deliveries;
#: 3 deliveries' C{owner}, join tokens, identities; 4 shells and their recordings,
#: facts; 5 workers' upgrade rollouts.
#: PostgreSQL: 2 masters, workers, mail, events; 3 as SQLite's 2; 4 as SQLite's 3;
#: 5 as SQLite's 4, and each master's URL; 6 as SQLite's 5.
LATEST = {"sqlite": 5, "postgres": 6}

_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", re.IGNORECASE)


def statements(engine: str, script: str) -> list[str]:
    """The statements of C{schema/<engine>/<script>.sql}, without its comments."""
    text = files(__package__).joinpath("schema", engine, f"{script}.sql").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(
    cursor: Any, engine: str, found: int | None, columns: Callable[[Any, str], set[str]]
) -> None:
    """
    Bring a database at version C{found} (None: new, empty) to the latest,
    in the caller's transaction.  An C{ADD COLUMN} whose column is there
    (C{columns(cursor, table)} says) is passed over, so a migration may be
    met by a database that took part of it early.
    """
    latest = LATEST[engine]
    scripts = [f"v{latest}"] if found is None else [f"upgrade-to-v{v}" for v in range(found + 1, latest + 1)]
    for script in scripts:
        for statement in statements(engine, script):
            added = _ADD_COLUMN.match(statement)
            if added is not None and added[2] in columns(cursor, added[1]):
                continue
            cursor.execute(statement)
