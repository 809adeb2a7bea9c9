"""
What both twistd daemons set up before they run: time on the monotonic
clock, what SIGHUP does, room for many open files, and a way to stop with
an error status.
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any, Callable

from twisted.logger import Logger

from pcci.clock import use_monotonic_clock

log = Logger()

#: Open files a daemon asks for, when its hard limit allows.
WANTED_FILES = 65536


def prepare(reactor: Any, on_hangup: Callable[[], None] | None = None) -> None:
    """
    Set a daemon's reactor and process up, before any service starts.
    SIGHUP calls C{on_hangup} (the master rereads its tokens file); without
    one, a closed terminal or C{kill -HUP} stops cleanly, jobs killed, like
    SIGTERM.
    """
    use_monotonic_clock(reactor)
    raise_file_limit()
    hangup = on_hangup or reactor.stop
    reactor.callWhenRunning(
        signal.signal, signal.SIGHUP, lambda signum, frame: reactor.callFromThread(hangup)
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
