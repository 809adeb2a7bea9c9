"""
A running job handed over across an exec (L{pcci.worker.handover}): a
child Python runs a job in a job table, hands it over mid-character,
execs itself, and the new image carries on with it to its end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pcci

SCRIPT = r"""
import json, os, sys
from twisted.internet import reactor
from pcci.worker.jobs import JobTable
from pcci.worker.settings import WorkerSettings

phase, record = sys.argv[1], sys.argv[2]
reports = []

class Link:
    paused = False
    def report(self, code, pool, **fields):
        reports.append({"code": code, **fields})

jobs = JobTable(reactor, WorkerSettings("w"))
jobs.connected(Link())

def first():
    # A character cut between two writes, the second after the exec.
    jobs.run("p1", "sh -c 'printf \"a\\n\\303\"; sleep 1; printf \"\\251b\\n\"; exit 3'", {"timeout": 30})
    def look():
        process = jobs.held["p1"].process
        if process is None or not process._output.partial():
            reactor.callLater(0.01, look)
            return
        jobs.holding = True
        assert jobs.ready_to_hand_over()
        waiting, running = jobs.hand_over()
        with open(record, "w") as f:
            json.dump({"running": running, "reports": reports}, f)
        os.execv(sys.executable, [sys.executable, sys.argv[0], "second", record])
    look()

def second():
    with open(record) as f:
        kept = json.load(f)
    reports.extend(kept["reports"])
    (handed,) = kept["running"]
    jobs.adopt(handed)
    jobs.attach("p1", after=handed["seq"])  # the master had everything up to it
    def look():
        if any(r["code"] == "ended" for r in reports):
            print(json.dumps({"reports": reports, "handed": handed, "pid": os.getpid()}))
            reactor.stop()
        else:
            reactor.callLater(0.01, look)
    look()

reactor.callWhenRunning(first if phase == "first" else second)
reactor.run()
"""


def test_a_running_job_carries_on_across_an_exec_with_its_output_whole(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    tree = Path(pcci.__file__).resolve().parents[1]  # this pcci, whatever the venv holds
    done = subprocess.run(
        [sys.executable, str(script), "first", str(tmp_path / "record.json")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(tree)},
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    reports, handed = answer["reports"], answer["handed"]
    assert handed["partial"] == {"stdout": "c3"} and 25 < handed["timeout_left"] <= 30
    output = [r for r in reports if r["code"] == "output"]
    assert "".join(r["data"] for r in output) == "a\né" + "b\n"
    assert [r["seq"] for r in output] == list(range(1, len(output) + 1))  # numbered on, across the exec
    started = [r["pid"] for r in reports if r["code"] == "started"]
    assert started == [handed["pid"], handed["pid"]]  # before, and told again at the attach
    (ended,) = [r for r in reports if r["code"] == "ended"]
    assert (ended["status"], ended["seq"]) == (3, len(output))
