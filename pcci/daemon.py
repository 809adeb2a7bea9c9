"""
What both twistd daemons set up before they run: time on the monotonic
clock, SIGHUP as a clean stop, room for many open files, and a way to stop
with an error status.
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any

from twisted.logger import Logger

from pcci.clock import use_monotonic_clock

log = Logger()

#: Open files a daemon asks for, when its hard limit allows.
WANTED_FILES = 65536


def prepare(reactor: Any) -> None:
    """Set a daemon's reactor and process up, before any service starts."""
    use_monotonic_clock(reactor)
    raise_file_limit()
    # A closed terminal or `kill -HUP` stops cleanly, jobs killed, like SIGTERM.
    reactor.callWhenRunning(
        signal.signal,
        signal.SIGHUP,
        lambda signum, frame: reactor.callFromThread(reactor.stop),
    )


def raise_file_limit() -> int:
    """Raise the soft limit of open files towards the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return WANTED_FILES if soft == resource.RLIM_INFINITY else soft


def stop_with_error(reactor: Any) -> None:
    """Stop the daemon, cleanly, and exit with status 1 so supervisors see it."""
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    reactor.callWhenRunning(reactor.stop)
