"""
The worker as the reaper of its jobs' escaped processes.

On Linux the worker makes itself a child subreaper: a process that
daemonises out of a job (double fork, C{setsid}) is reparented to the worker
instead of to init, so it can still be found, killed and reaped.  Every
process of a job carries the job's marker in its environment, which tells
whose it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import psutil
from twisted.logger import Logger

from pcci.twisted_internals import spawned_by_twisted

log = Logger()

#: The environment variable that marks every process of a job.
MARKER = "PCCI_JOB"

#: prctl(2) option of Linux 3.4 and later.
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process a child subreaper; False where that cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        log.warn("cannot become a child subreaper ({why}): a job's daemonised"
                 " processes may escape a kill", why=e)
        return False
    return True


def worker_children() -> list[int]:
    """
    The pids of this process's children, read from /proc where it can be.

    Only the main thread's are read: the reactor spawns jobs from it, and
    Linux gives a subreaper's inherited orphans to its main thread.
    """
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        pass
    try:
        return [child.pid for child in psutil.Process().children()]
    except psutil.Error:
        return []


def reap_orphans() -> list[int]:
    """
    Reap the children this process inherited and that have exited: the
    ones Twisted did not spawn, which it never waits for.

    @return: the inherited children still alive.
    """
    alive = []
    known = spawned_by_twisted()
    for pid in worker_children():
        if pid in known:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done != pid:
            alive.append(pid)
    return alive


def marker_of(pid: int) -> str | None:
    """The job marker in a process's environment, if it can be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    prefix = MARKER.encode() + b"="
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode("utf-8", "replace")
    return None


def find_processes(pgids: set[int], marker: str, prefix: bool = False) -> list[psutil.Process]:
    """
    Live processes, but this one, that are in one of the process groups
    C{pgids} or whose job marker is C{marker} (or starts with it, with
    C{prefix}), in one scan of /proc: run it in a thread.
    """
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            in_group = os.getpgid(proc.pid) in pgids
        except OSError:
            continue
        value = marker_of(proc.pid) if marker and not in_group else None
        if in_group or (
            value is not None and (value == marker or (prefix and value.startswith(marker)))
        ):
            found.append(proc)
    return found
