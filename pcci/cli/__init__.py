"""
The C{pcci} command: run commands on the cluster from a terminal.

It talks to the master only through the REST API (see C{docs/api.md}).
C{main} holds the command group; C{config} the settings every command
shares and C{go()}; C{options} the option groups declared once; C{client} and C{http}
the HTTP calls; C{render} what a person reads; C{run}, C{files} and
C{views} the commands themselves.  This module is the entry point, and
imports as little as it can.
"""

from __future__ import annotations

import os
import signal
from typing import Any, NoReturn

#: Exit status after Ctrl-C, as a shell's.
EXIT_INTERRUPTED = 130


def start() -> None:
    """
    The C{pcci} command.  Ctrl-C before the command runs (while Python
    imports what it needs) ends it at once with one line; once it runs,
    L{pcci.cli.main.go} handles Ctrl-C as each command says.
    """
    signal.signal(signal.SIGINT, _interrupted_at_start)
    from pcci.cli.main import main as run

    run()


def _interrupted_at_start(signum: int, frame: Any) -> NoReturn:
    os.write(2, b"pcci: interrupted\n")
    os._exit(EXIT_INTERRUPTED)
