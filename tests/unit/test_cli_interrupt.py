"""Ctrl-C in the real pcci command, at start and while it connects: one line, status 130."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

PCCI = str(Path(sys.executable).parent / "pcci")

#: Runs the pcci command, sending itself SIGINT (as Ctrl-C does) in the
#: middle of importing what `pcci workers` needs.
INTERRUPTED_IMPORT = """
import builtins, os, signal, sys
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "pcci.cli.views":
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
sys.argv = ["pcci", "--url", "http://127.0.0.1:9", "workers"]
from pcci.cli import start
start()
"""


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCCI_")}
    env["PCCI_TOKEN"] = "t" * 32
    return env


def test_ctrl_c_while_starting_is_one_line_and_130() -> None:
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_IMPORT], env=environment(),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert (done.returncode, done.stderr) == (130, "pcci: interrupted\n")


def test_ctrl_c_while_connecting_is_one_line_and_130() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        process = subprocess.Popen(
            [PCCI, "--url", f"http://127.0.0.1:{silent.getsockname()[1]}", "run", "-w", "w1", "--", "true"],
            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            ready, _, _ = select.select([silent], [], [], 20)
            assert ready, "pcci never connected"
            connection, _ = silent.accept()  # the request is on its way: pcci waits
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
            connection.close()
        finally:
            process.kill()
    assert (process.returncode, out, err) == (130, "", "pcci: interrupted\n")
