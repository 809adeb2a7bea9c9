"""
Shells on a worker (L{pcci.worker.shells}): the frames of a refused shell
over a StringTransport, and real shells in pseudo-terminals on a real
reactor, in a child Python (the tests' own process runs no reactor).
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

import pytest
from test_worker import connect, frames

from pcci.wire import SHELL_WINDOW, encode
from pcci.worker.shells import ShellError, account

SCRIPT = """
import json, os, sys
from twisted.internet import reactor
from pcci.worker.shells import Shells, ShellRequest

request = json.loads(sys.argv[1])
plan = json.loads(sys.argv[2])
report = {"output": {"stdout": b"", "stderr": b""}, "acks": [], "sent_before_ack": None}

# Each step waits for a time, or for a text in the output (not a time: the
# shell may be slow to read what is typed).
steps = list(plan)

def next_steps():
    while steps and isinstance(steps[0][0], str) and steps[0][0].encode() in report["output"]["stdout"]:
        _, action, arg = steps.pop(0)
        act(action, arg)

class Link:
    def shell_started(self, shell_id, pid):
        report["pid"] = pid
        for when, action, arg in plan:
            if not isinstance(when, str):
                steps.remove([when, action, arg])
                reactor.callLater(when, act, action, arg)
        next_steps()
    def shell_output(self, shell_id, stream, data):
        report["output"][stream] += data
        next_steps()
    def shell_ack(self, shell_id, written):
        report["acks"].append(written)
    def shell_ended(self, shell_id, status, reason):
        report["status"], report["reason"] = status, reason
        reactor.callLater(0.1, reactor.stop)

def act(action, arg):
    shell = shells.get("s1")
    if shell is None:
        return
    if action == "input":
        shell.input(arg.encode())
    elif action == "resize":
        shell.resize(*arg)
    elif action == "sent":
        report["sent_before_ack"] = shell.sent
    elif action == "ack":
        shell.delivered_to(shell.sent)
    elif action == "eof":
        shell.end_of_input()
    elif action == "hang_up":
        shell.hang_up("closed")

shells = Shells(reactor, Link(), 0.5)
reactor.callWhenRunning(shells.open, ShellRequest(**request))
reactor.callLater(20, reactor.stop)
reactor.run()
report["output"] = {k: v.decode("utf-8", "replace") for k, v in report["output"].items()}
print(json.dumps(report))
"""


def run_shell(plan: list, **request: object) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps({"id": "s1", **request}), json.dumps(plan)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_shell_in_a_terminal_of_the_size_asked_and_resized() -> None:
    report = run_shell(
        [(0.3, "input", "stty size; tty\r"), ("/dev/pts/", "resize", [40, 120]),
         ("/dev/pts/", "input", "stty size; exit 3\r")],
        cmd="", pty=True, rows=30, cols=100,
    )
    assert report["status"] == 3, report
    text = report["output"]["stdout"]
    assert "30 100" in text and "40 120" in text and "/dev/pts/" in text
    assert report["acks"][-1] == len("stty size; tty\r") + len("stty size; exit 3\r")


def test_without_a_terminal_the_streams_are_apart_and_input_ends() -> None:
    report = run_shell([(0.2, "input", "a\nb\n"), (0.3, "eof", None)], cmd="wc -l; echo oops >&2; exit 4", pty=False)
    assert (report["status"], report["output"]["stdout"].strip(), report["output"]["stderr"]) == (4, "2", "oops\n")


def test_output_stops_at_the_window_until_delivered() -> None:
    report = run_shell([(1.0, "sent", None), (1.1, "ack", None), (1.2, "ack", None), (1.3, "ack", None),
                        (1.4, "ack", None), (1.5, "ack", None)],
                       cmd="head -c 1000000 /dev/zero | tr '\\\\0' y", pty=False)
    assert report["status"] == 0, report
    # Never more than the window (and one read) ahead of what was delivered.
    assert report["sent_before_ack"] < SHELL_WINDOW + 128 * 1024
    assert len(report["output"]["stdout"]) == 1_000_000


def test_hanging_up_ends_the_shell_and_what_it_started() -> None:
    report = run_shell([(0.3, "input", "sleep 321 & sleep 123\r"), (0.8, "hang_up", None)], cmd="", pty=True)
    assert report["reason"] == "closed"
    assert report["status"] == 128 + 1  # SIGHUP
    left = subprocess.run(["pgrep", "-f", "sleep (321|123)"], capture_output=True, text=True).stdout
    assert left == ""


def test_a_shell_that_cannot_start_ends_at_once_saying_why() -> None:
    _, protocol, transport = connect()
    frames(transport)
    protocol.dataReceived(encode({"code": "shell_open", "shell": "s1", "cmd": "", "pty": True, "rows": 24,
                                  "cols": 80, "user": "no-such-user-here", "term": ""}))
    assert frames(transport) == [
        {"code": "shell_ended", "shell": "s1", "status": 127, "reason": "no user no-such-user-here on this worker"}
    ]
    protocol.dataReceived(encode({"code": "shell_open", "shell": "s2", "cmd": "", "pty": True, "rows": 0,
                                  "cols": 80, "user": "", "term": ""}))
    assert frames(transport)[0]["reason"] == "a window of 0x80 characters"


@pytest.mark.skipif(os.getuid() == 0, reason="root may be anyone")
def test_a_worker_not_run_by_root_cannot_become_another_user() -> None:
    other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != os.getuid())
    with pytest.raises(ShellError, match="not root: it cannot open a shell as"):
        account(other)


def test_shell_frames_before_the_welcome_close_the_connection() -> None:
    _, protocol, transport = connect(welcome=False)
    protocol.dataReceived(encode({"code": "shell_close", "shell": "s1"}))
    assert transport.disconnecting
