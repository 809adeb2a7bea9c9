"""
JobProcess on a real reactor, in a child Python (the tests' own process has
no running reactor): both ways of spawning make the job a group leader.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, sys
from twisted.internet import reactor
from pcci import twisted_internals
from pcci.worker import process

if sys.argv[1] == "fork":
    def refuse(fdmap):
        raise AttributeError("pretend Twisted's internals changed")
    twisted_internals._spawn_file_actions = refuse

# Which way each job was spawned: posix_spawnp, or fork and exec.
spawned = []
real_posix_spawnp = os.posix_spawnp
def counted_posix_spawnp(*args, **kwargs):
    spawned.append("posix_spawn")
    return real_posix_spawnp(*args, **kwargs)
os.posix_spawnp = counted_posix_spawnp
real_fork = os.fork
def counted_fork():
    pid = real_fork()
    if pid:
        spawned.append("fork")
    return pid
os.fork = counted_fork

COMMANDS = [
    sys.executable + " -c 'import os; print(os.getpgid(0) == os.getpid())'",
    "sh -c 'yes | head -n 1'",  # with SIGPIPE ignored, yes would complain
]
reports = []

def run(index=0):
    if index == len(COMMANDS):
        reactor.stop()
        return
    report = {"output": ""}
    reports.append(report)

    def ended(status, reason):
        report["status"] = status
        reactor.callLater(0, run, index + 1)

    class Reporter:
        def started(self, pid):
            report.setdefault("pid", pid)

        def output(self, text, stream):
            report.update(output=report["output"] + text)

        def ended(self, status, reason):
            ended(status, reason)

    process.JobProcess(reactor, process.Command(COMMANDS[index]), Reporter()).start()

reactor.callWhenRunning(run)
reactor.run()
print(json.dumps({"reports": reports, "spawned": spawned}))
"""


@pytest.mark.parametrize("path", ["posix_spawn", "fork"])
def test_job_leads_its_group_with_sigpipe_restored(path: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, path], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["spawned"] == [path, path]
    group, pipe = answer["reports"]
    assert group["status"] == 0 and group["pid"] > 0
    assert group["output"] == "True\n"
    assert (pipe["status"], pipe["output"]) == (0, "y\n")


def test_a_program_found_once_is_checked_not_searched_again(tmp_path) -> None:
    from pcci.worker.process import find_program

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    program = first / "pcci-test-tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    path = f"{first}:{second}"
    assert find_program("pcci-test-tool", path) == str(program)
    assert find_program("pcci-test-tool", path) == str(program)  # from the table
    program.rename(second / "pcci-test-tool")  # moved: searched again
    assert find_program("pcci-test-tool", path) == str(second / "pcci-test-tool")
    (second / "pcci-test-tool").unlink()
    assert find_program("pcci-test-tool", path) is None
    assert find_program("pcci-test-tool", f"{second}:{first}") is None
