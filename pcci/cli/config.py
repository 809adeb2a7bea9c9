"""
What every C{pcci} command shares: where the master is and the token
(L{Config}, filled from the group's options and the environment), and
L{go}, the one place that runs a command and turns each known failure into
one line on stderr and an exit status.

Imports click only (start-up time is a feature of a command line).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, NoReturn

import click

from pcci.cli import EXIT_INTERRUPTED

DEFAULT_URL = "http://localhost:8080"
DEFAULT_TOKEN_FILE = Path("~/.pcci/api-token")



def read_token_file(path: Path) -> str:
    """The first token of a token file (the master's format: C{TOKEN [read]} a line)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            return words[0]
    raise click.UsageError(f"no token in {path}")


def locate_token(token_file: str | None) -> tuple[str | None, str]:
    """The token and where it came from: PCCI_TOKEN, --token-file, ~/.pcci/api-token."""
    if os.environ.get("PCCI_TOKEN"):
        return os.environ["PCCI_TOKEN"].strip(), "PCCI_TOKEN"
    path = Path(token_file).expanduser() if token_file else DEFAULT_TOKEN_FILE.expanduser()
    try:
        return read_token_file(path), str(path)
    except FileNotFoundError:
        if token_file:
            raise click.BadParameter(f"{path} does not exist", param_hint="--token-file") from None
        return None, ""
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--token-file") from None


@dataclass
class Config:
    """What every subcommand needs: where the master is, and the streams."""

    url: str = DEFAULT_URL
    token: str | None = None
    token_source: str = ""
    ca_file: str | None = None
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    #: What sends requests (see L{pcci.cli.client.MasterClient}); the
    #: standard library's when None (tests pass treq's, over a StubTreq).
    http: Any = None
    #: What the first Ctrl-C does, for a command that handles it (C{pcci
    #: run} kills its pool); None: Ctrl-C ends the command.
    on_interrupt: Callable[[], Awaitable[None]] | None = None
    color: bool | None = None

    def client(self) -> Any:
        from pcci.cli.client import MasterClient

        if self.http is None:
            from pcci.cli.http import StdlibHTTP

            if self.ca_file is not None and not Path(self.ca_file).is_file():
                raise click.BadParameter(f"{self.ca_file} is not a file", param_hint="--ca-file")
            self.http = StdlibHTTP(self.ca_file)
        return MasterClient(self.url, self.token, self.http, self.token_source)

    def terminal(self) -> Any:
        from pcci.cli.render import Terminal

        return Terminal(self.out, self.err, self.color)


Command = Callable[..., Coroutine[Any, Any, int]]


def go(command: Command, cfg: Config, *args: Any) -> NoReturn:
    """
    Run C{command(cfg, *args)} to its end and exit with its status.  A
    L{CLIError} is one line on stderr and its status; Ctrl-C, unless the
    command handles it, is C{pcci: interrupted} and status 130.
    """
    from pcci.cli.client import CLIError
    from pcci.cli.http import run_now

    # From now on Ctrl-C is the command's (pcci.cli.start ended it at once so far).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = run_now(command(cfg, *args))
    except CLIError as e:
        cfg.err.write(f"pcci: {e.message}\n")
        raise SystemExit(e.status) from None
    except KeyboardInterrupt:
        cfg.err.write("pcci: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    raise SystemExit(status)
