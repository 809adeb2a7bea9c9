"""
What both twistd daemons set up before they run: time on the monotonic
clock, what SIGHUP does, room for many open files, the garbage collector's
pace, and a way to stop with an error status.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
from typing import Any, Callable

from twisted.logger import Logger

from pcci.clock import use_monotonic_clock

log = Logger()

#: Open files a daemon asks for, when its hard limit allows.
WANTED_FILES = 65536

#: Allocations (net) between two young collections of Python's cyclic
#: garbage collector, where Python's default is 700.  A master with 10,000
#: workers holds millions of objects: at the default pace, a pool on all of
#: them set off a few full collections of a quarter second each (most of a
#: fan-out's 2 s); at this one, about one a pool.  Cycles of garbage wait
#: longer, as bounded as before.
YOUNG_COLLECTION = 10_000


def prepare(reactor: Any, on_hangup: Callable[[], None] | None = None) -> None:
    """
    Set a daemon's reactor and process up, before any service starts.
    SIGHUP calls C{on_hangup} (the master rereads its tokens file); without
    one, a closed terminal or C{kill -HUP} stops cleanly, jobs killed, like
    SIGTERM.
    """
    use_monotonic_clock(reactor)
    raise_file_limit()
    gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])
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


def stop_with_error(reactor: Any, status: int = 1) -> None:
    """Stop the daemon, cleanly, and exit with C{status} so supervisors see it."""
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)
    reactor.callWhenRunning(reactor.stop)
