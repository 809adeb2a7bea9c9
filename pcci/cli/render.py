"""
What the command line shows a person: prefixed output lines, the summary
by state with folded node sets, gathered outputs, the progress line and
tables.  Colour only on a terminal; rich draws it, imported only then (and
for tables): output into a pipe costs no rich at all.
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

from pcci.nodes import fold

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

#: Text in pieces, each with its rich style ("" for none).
Segments = list[tuple[str, str]]

#: Colours given to workers' names, in turn.
PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_cyan", "bright_magenta", "bright_green")

#: How each job state is told in a summary, and its colour.
STATE_WORDS = {
    "ok": ("ok", "green"),
    "failed": ("failed", "red"),
    "killed": ("killed", "red"),
    "timed_out": ("timed out", "red"),
    "lost": ("lost", "red"),
    "not_started": ("not started", "red"),
    "cancelled": ("cancelled", "yellow"),
    "running": ("running", "blue"),
    "pending": ("pending", "blue"),
    "waiting": ("waiting", "yellow"),
}


def json_out(out: IO[str], value: Any) -> int:
    """Write C{value} as indented JSON: what C{--json} prints; status 0."""
    out.write(json.dumps(value, indent=2) + "\n")
    return 0


def labels_text(labels: dict[str, str]) -> str:
    """Labels as C{pcci workers} shows them: C{gpu,rack=a}, or C{-}."""
    return ",".join(k if v == "" else f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def exit_status(pool: dict[str, Any]) -> int:
    """
    0 when every job is ok; else the highest status among the others, a
    lost job counting as 255, clipped to 1..255.
    """
    worst = 0
    for job in pool["jobs"]:
        if job["state"] == "ok":
            continue
        status = 255 if job["state"] == "lost" else (job["status"] or 1)
        worst = max(worst, min(255, max(1, status)))
    return worst


def size_text(value: float | None) -> str:
    """A size in bytes as a person reads it: C{7.8GiB}."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return "-"  # pragma: no cover


def _isatty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Terminal:
    """The two output streams, and whether colour and a progress line fit them."""

    def __init__(self, out: IO[str], err: IO[str], color: bool | None = None) -> None:
        self.out = out
        self.err = err
        tty = _isatty(err)
        self.color = tty if color is None else color
        self.progress_fits = tty
        self.out_tty = _isatty(out)
        self._console: Console | None = None
        self._out_console: Console | None = None
        self._progress: Text | None = None

    @property
    def console(self) -> Console:
        """rich on stderr, made when first needed."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=self.err, force_terminal=self.color, no_color=not self.color, highlight=False
            )
        return self._console

    @property
    def out_console(self) -> Console:
        if self._out_console is None:
            from rich.console import Console

            self._out_console = Console(
                file=self.out,
                force_terminal=self.color,
                no_color=not self.color,
                highlight=False,
                # Into a pipe or a file, a table's lines are not cut to 80 columns.
                width=None if self.out_tty else 1000,
            )
        return self._out_console

    def print_table(self, grid: Table) -> None:
        """A table on stdout; into a pipe, without the padding at line ends."""
        if self.out_tty:
            self.out_console.print(grid)
            return
        with self.out_console.capture() as capture:
            self.out_console.print(grid)
        self.out.write("".join(line.rstrip() + "\n" for line in capture.get().splitlines()))
        self.out.flush()

    def paint(self, text: str, style: str) -> str:
        """C{text} in C{style} as terminal codes, or as it is without colour."""
        if not self.color:
            return text
        from rich.console import COLOR_SYSTEMS
        from rich.style import Style

        system = COLOR_SYSTEMS.get(self.console.color_system or "")
        return Style.parse(style).render(text, color_system=system)

    # The progress line: one line on stderr, redrawn in place.

    def progress(self, segments: Segments) -> None:
        if not self.progress_fits:
            return
        self._erase()
        self._progress = rich_text(segments)
        self._draw()

    def _erase(self) -> None:
        if self._progress is not None:
            from rich.control import Control, ControlType

            self.console.control(
                Control.move_to_column(0), Control((ControlType.ERASE_IN_LINE, 2))
            )

    def _draw(self) -> None:
        if self._progress is not None:
            self.console.print(self._progress, end="", no_wrap=True, overflow="ellipsis", crop=True)
            self.err.flush()

    def write(self, stream: str, text: str) -> None:
        """Write output text (stdout or stderr), the progress line kept below it."""
        self._erase()
        target = self.err if stream == "stderr" else self.out
        target.write(text)
        target.flush()
        self._draw()

    def done(self) -> None:
        """Remove the progress line for good."""
        self._erase()
        self._progress = None
        self.err.flush()


class LinePrinter:
    """
    Output as it comes, one line per output line prefixed C{NAME: }, each
    stream to its own; a line cut by a chunk boundary waits for its end.
    """

    def __init__(self, terminal: Terminal, names: Iterable[str] = ()) -> None:
        self.terminal = terminal
        self._prefixes: dict[str, str] = {}
        self._partial: dict[tuple[str, str], str] = {}
        for name in names:
            self.prefix(name)

    def prefix(self, name: str) -> str:
        if name not in self._prefixes:
            color = PALETTE[len(self._prefixes) % len(PALETTE)]
            self._prefixes[name] = self.terminal.paint(name + ":", color) + " "
        return self._prefixes[name]

    def feed(self, name: str, stream: str, text: str) -> None:
        key = (name, stream)
        text = self._partial.pop(key, "") + text
        *lines, rest = text.split("\n")
        if rest:
            self._partial[key] = rest
        if lines:
            prefix = self.prefix(name)
            self.terminal.write(stream, "".join(f"{prefix}{line}\n" for line in lines))

    def end(self, name: str) -> None:
        """The job ended: a last line without its newline is written whole."""
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((name, stream), None)
            if rest is not None:
                self.terminal.write(stream, f"{self.prefix(name)}{rest}\n")


def summary_lines(pool: dict[str, Any]) -> list[tuple[str, str, str]]:
    """
    The pool's jobs by outcome: (words, colour, folded names), failures
    grouped by exit status: C{failed (exit 2): pi03}.
    """
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for job in pool["jobs"]:
        words, color = STATE_WORDS.get(job["state"], (job["state"], "red"))
        if job["state"] == "failed" and job["status"] is not None:
            status = job["status"]
            words = f"failed (signal {status - 128})" if status > 128 else f"failed (exit {status})"
        groups[(words, color)].append(job["worker_id"])
    order = list(STATE_WORDS)

    def rank(item: tuple[tuple[str, str], list[str]]) -> tuple[int, str]:
        words = item[0][0]
        key = "failed" if words.startswith("failed") else words.replace(" ", "_")
        return (order.index(key) if key in order else len(order), words)

    return [(words, color, fold(names)) for (words, color), names in sorted(groups.items(), key=rank)]


def print_summary(terminal: Terminal, pool: dict[str, Any]) -> None:
    for words, color, names in summary_lines(pool):
        terminal.err.write(f"{terminal.paint(words + ':', color)} {names}\n")
    terminal.err.flush()


def gather(pool: dict[str, Any]) -> list[tuple[list[str], str]]:
    """Each distinct output once, with the workers that printed it, most first."""
    groups: dict[str, list[str]] = defaultdict(list)
    for job in pool["jobs"]:
        groups[job.get("result", "")].append(job["worker_id"])
    return sorted(((names, text) for text, names in groups.items()), key=lambda g: -len(g[0]))


def print_gathered(terminal: Terminal, pool: dict[str, Any], diff: bool = False) -> None:
    """clubak's way: a header with the folded set and its count, then the output."""
    groups = gather(pool)
    base_names, base = groups[0] if groups else ([], "")
    out = terminal.out
    for index, (names, text) in enumerate(groups):
        header = f"{fold(names)} ({len(names)})"
        rule = "-" * min(max(len(header), 15), 79)
        out.write(f"{rule}\n{terminal.paint(header, 'bold cyan')}\n{rule}\n")
        if diff and index > 0:
            lines = difflib.unified_diff(
                base.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=fold(base_names),
                tofile=fold(names),
            )
            for line in lines:
                out.write(line if line.endswith("\n") else line + "\n")
        else:
            out.write(text if not text or text.endswith("\n") else text + "\n")
    out.flush()


def progress_text(
    pool_size: int, ended: dict[str, str], running: int, waiting: Iterable[str] = ()
) -> Segments:
    failed = sum(1 for state in ended.values() if state != "ok")
    segments = [(f"{len(ended)}/{pool_size} done", "bold")]
    if failed:
        segments += [(" · ", ""), (f"{failed} failed", "red")]
    segments.append((f" · {running} running", ""))
    waiting = list(waiting)
    if waiting:
        segments += [(" · ", ""), (f"{len(waiting)} waiting: {fold(waiting)}", "yellow")]
    return segments


def rich_text(segments: Segments) -> Text:
    from rich.text import Text

    text = Text()
    for piece, style in segments:
        text.append(piece, style=style or None)
    return text


def counts_text(counts: dict[str, int]) -> Text:
    """A pool's jobs by state, coloured: C{14 ok 1 failed}."""
    from rich.text import Text

    order = list(STATE_WORDS)
    text = Text()
    def rank(state: str) -> tuple[bool, int]:
        return (state not in order, order.index(state) if state in order else 0)

    for state, number in sorted(counts.items(), key=lambda kv: rank(kv[0])):
        words, color = STATE_WORDS.get(state, (state, "red"))
        if text:
            text.append(" ")
        text.append(f"{number} {words}", style=color)
    return text


def table(columns: list[str], rows: list[list[str | Text]]) -> Table:
    """A plain table; text cells are shown as they are, never as markup."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    return grid
