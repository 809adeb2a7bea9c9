"""The pcci command against a real master and two workers (w1, w2)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from cluster import Cluster, poll

pytestmark = pytest.mark.e2e

PCCI = str(Path(sys.executable).parent / "pcci")


def environment(cluster: Cluster, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCCI_")}
    env.update(PCCI_URL=f"http://127.0.0.1:{cluster.api_port}", PCCI_TOKEN=cluster.token or "")
    env.update(more)
    return env


def pcci(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PCCI, *args], env=environment(cluster, **env), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )


def read_line(process: subprocess.Popen, deadline: float = 20) -> str:
    """The next line of a process's stdout, failing at the deadline instead of hanging."""
    ready, _, _ = select.select([process.stdout], [], [], deadline)
    assert ready, "no line within the deadline"
    return process.stdout.readline()


def test_output_is_prefixed_and_live(cluster: Cluster, tmp_path: Path) -> None:
    go = tmp_path / "go"
    process = subprocess.Popen(
        [PCCI, "run", "-w", "w1", "--", "sh", "-c",
         f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second; echo oops >&2"],
        env=environment(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert read_line(process) == "w1: first\n"  # while the job still waits
        go.touch()
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert out == "w1: second\n"
    assert err == "w1: oops\nok: w1\n"
    assert process.returncode == 0


def test_gathered_output(cluster: Cluster) -> None:
    result = pcci(cluster, "run", "-w", "w*", "-b", "--", "echo", "same")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "---------------\nw[1-2] (2)\n---------------\nsame\n"
    assert result.stderr == "ok: w[1-2]\n"


def test_exit_status_of_a_failing_worker(cluster: Cluster) -> None:
    result = pcci(cluster, "run", "-w", "w[1-2]", "--", "sh", "-c", 'case "$PCCI_JOB" in w2@*) exit 4;; esac')
    assert result.returncode == 4
    assert result.stderr == "ok: w1\nfailed (exit 4): w2\n"


def test_json_then_detach_and_follow(cluster: Cluster) -> None:
    result = pcci(cluster, "run", "-w", "w1", "--json", "--", "echo", "hi")
    pool = json.loads(result.stdout)
    assert result.returncode == 0 and pool["jobs"][0]["result"] == "hi\n"
    result = pcci(cluster, "run", "-w", "w2", "--detach", "--", "sh", "-c", "echo a; sleep 0.5; echo b")
    pool_id = result.stdout.strip()
    assert result.returncode == 0 and len(pool_id) == 36
    followed = pcci(cluster, "logs", "-f", pool_id)
    assert followed.returncode == 0 and followed.stdout == "w2: a\nw2: b\n"
    shown = pcci(cluster, "show", pool_id)
    assert "a\nb\n" in shown.stdout and shown.stderr == "ok: w2\n"
    listed = pcci(cluster, "pools", "--limit", "3")
    assert pool_id in listed.stdout


def sleeping(marker: str) -> list[int]:
    """The `sleep MARKER` processes themselves (not the commands that name them)."""
    return [
        proc.pid
        for proc in psutil.process_iter(["cmdline", "status"])
        if proc.info["cmdline"] == ["sleep", marker] and proc.info["status"] != psutil.STATUS_ZOMBIE
    ]


def test_ctrl_c_kills_the_remote_tree(cluster: Cluster, marker: str) -> None:
    process = subprocess.Popen(
        [PCCI, "run", "-w", "w1", "--", "sh", "-c", f"sleep {marker} & sleep {marker}"],
        env=environment(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        poll(lambda: len(sleeping(marker)) == 2, what="the job to run")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "killing pool" in err and "killed: w1" in err
    poll(lambda: not sleeping(marker), what="the tree to be gone")


def test_workers_lists_both(cluster: Cluster) -> None:
    result = pcci(cluster, "workers")
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert result.returncode == 0 and sorted(names) == ["w1", "w2"]


def test_unreachable_master_and_wrong_token_exit_3_with_one_line(cluster: Cluster) -> None:
    started = time.monotonic()
    result = pcci(cluster, "workers", PCCI_URL="http://127.0.0.1:1")
    assert result.returncode == 3
    assert result.stderr.startswith("pcci: cannot connect to the master at http://127.0.0.1:1")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
    result = pcci(cluster, "run", "-w", "w1", "--", "true", PCCI_TOKEN="wrong")
    assert result.returncode == 3
    assert "refused the token from PCCI_TOKEN" in result.stderr
    assert result.stderr.count("\n") == 1
