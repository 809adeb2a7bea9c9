"""
Option groups declared once, for every command that takes them: the
targets (C{-w}, C{-l}, C{-x}), a pool request's job options (their help is
the field's, from L{pcci.request}), and C{--json}.

Imports click and L{pcci.request} only (start-up time is a feature).
"""

from __future__ import annotations

from typing import Any, Callable

import click

from pcci.request import JOB_FIELDS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(options: list[Decorator], command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        command = option(command)
    return command


#: What a target is (C{-w}): a pool request's C{workers}.
TARGETS_HELP = JOB_FIELDS["workers"].help + " Repeatable."


def targets(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose workers: -w, -l and -x, as every command that acts on some takes them."""
    return _apply([
        click.option("-w", "--workers", "targets", multiple=True, metavar="TARGET", help=TARGETS_HELP),
        click.option("-l", "--label", "labels", multiple=True, metavar="LABEL",
                     help=JOB_FIELDS["labels"].help + " Repeatable."),
        click.option("-x", "--exclude", multiple=True, metavar="TARGET",
                     help=JOB_FIELDS["exclude"].help + " Repeatable."),
    ], command)


def query_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """C{-q}: a query over the workers' facts and labels, with the targets or alone."""
    return click.option("-q", "--query", metavar="QUERY", help=JOB_FIELDS["query"].help)(command)


def _env(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE")
        env[key] = text
    return env


def _batch(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    if value is None:
        return None
    text = value.strip()
    number = text[:-1] if text.endswith("%") else text
    if not number.isdigit() or int(number) < 1 or (text.endswith("%") and int(number) > 100):
        raise click.BadParameter("a number of jobs, 1 or more, or N% with N from 1 to 100")
    return text if text.endswith("%") else int(number)


#: What a duration's last letter means, in seconds.
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> float | None:
    """C{90}, C{90s}, C{30m}, C{1h}, C{2d}: seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    unit = UNITS.get(text[-1:], 0)
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise click.BadParameter("a duration: seconds, or a number and s, m, h or d (30m, 1h)")
    return seconds


def _help(name: str, more: str = "") -> str:
    return JOB_FIELDS[name].help + (" " + more if more else "")


def wait_offline_option() -> Decorator:
    return click.option("--wait-offline", callback=duration, metavar="DURATION",
                        help=_help("wait_offline", "A duration: 90s, 30m, 1h."))


#: The names the job options fill, as C{POST /job} calls them.
JOB_OPTIONS = (
    "timeout", "env", "cwd", "stdin", "batch", "batch_wait", "max_failures", "canary", "pause_every", "wait_offline",
    "notify", "notify_on",
)


def job_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """How each job runs and how the pool rolls out: C{pcci run} and C{pcci schedule add} alike."""
    return _apply([
        click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                     help=_help("timeout")),
        click.option("-e", "--env", multiple=True, callback=_env, metavar="KEY=VALUE",
                     help=_help("env", "Repeatable.")),
        click.option("--cwd", metavar="DIR", help=_help("cwd")),
        click.option("--stdin", "stdin", type=click.File("r", encoding="utf-8"), metavar="FILE|-",
                     help=_help("stdin", "Read from FILE (- for this terminal's input).")),
        click.option("--batch", callback=_batch, metavar="N|N%", help=_help("batch")),
        click.option("--batch-wait", type=click.FloatRange(min=0), metavar="SECONDS", help=_help("batch_wait")),
        click.option("--max-failures", callback=_batch, metavar="N|N%", help=_help("max_failures")),
        click.option("--canary", type=click.IntRange(min=1), metavar="N", help=_help("canary")),
        click.option("--pause-every", type=click.IntRange(min=1), metavar="N", help=_help("pause_every")),
        wait_offline_option(),
        click.option("--notify", multiple=True, metavar="URL", help=_help("notify", "Repeatable.")),
        click.option("--notify-on", type=click.Choice(["failed", "ended"]), default="failed", show_default=True,
                     help=_help("notify_on")),
    ], command)


def json_option(what: str) -> Decorator:
    """C{--json}: print C{what} as JSON instead of for a person."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")
