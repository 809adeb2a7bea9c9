"""
The one line a join token comes with, run for real: the master serves
C{install.sh}, its wheel and a wheelhouse; the script installs a worker in
a prefix of its own (C{--no-service}: no systemd here), which joins with
its identity and runs a job. The first master and worker are the last
landing's: a newer master upgrades that worker (the landing's own upgrade
code) while a job runs; run again from a master of a newer version, the
script upgrades in place and keeps the identity; a master of this version
upgrades it while a job runs (C{pcci workers upgrade}); C{--uninstall}
leaves nothing.
Each refusal is one line: a token that is not one, a pin of another
master, a Python older than 3.9.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from cluster import Cluster, Daemon, older_tree, poll, processes_with

import pcci
from pcci.master.install.wheel import build

pytestmark = [pytest.mark.e2e, pytest.mark.long(120)]

#: Older versions, as workers and masters run them: the last landing
#: (whose workers upgrade themselves from the master, their jobs running on),
#: then this tree twice.
OLDEST, OLDER, OLD = "1.99.0", "1.99.1", "1.99.2"
LANDING = "bc5c3df96102b171238d0d069276e280e2414cc1"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pcci's dependencies as wheels, as a lab without a package index keeps them."""
    where = tmp_path_factory.mktemp("wheelhouse")
    wheel = build()
    (where / wheel.name).write_bytes(wheel.data)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(where),
         str(where / wheel.name)],
        check=True, timeout=300,
    )
    (where / wheel.name).unlink()
    return where


@pytest.fixture(scope="module")
def older(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """This tree, or an earlier commit's, as an older version (see L{older_tree})."""
    return lambda version, commit="": older_tree(tmp_path_factory.mktemp(f"pcci-{version}"), version, commit)


def install_master(c: Cluster, wheelhouse: Path, env: dict[str, str] | None = None) -> None:
    c.start_master(
        "--wheelhouse", str(wheelhouse),
        "--public-url", f"http://127.0.0.1:{c.api_port}",
        "--join-address", f"127.0.0.1:{c.worker_port}",
        env=env,
    )


def run(line: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The install line with C{extra} options, as a shell runs it."""
    assert line.startswith("(") and line.endswith(")")
    line = line[:-1] + "".join(f" {word}" for word in extra) + ")"
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=300)


def script(c: Cluster, tmp_path: Path) -> Path:
    """The master's install.sh, fetched as the line fetches it."""
    path = tmp_path / "install.sh"
    subprocess.run(["curl", "-fsS", "-o", str(path), f"http://127.0.0.1:{c.api_port}/install.sh"], check=True)
    return path


def start_installed(c: Cluster, prefix: Path) -> Daemon:
    daemon = Daemon(c.directory, f"installed-{len(c.daemons)}", "", program=str(prefix / "bin" / "pcci-worker"))
    c.daemons.append(daemon)
    return daemon


def online(c: Cluster, name: str) -> dict:
    def found() -> dict | None:
        for worker in c.request("GET", "/workers")[1]:
            if worker["id"] == name:
                return worker
        return None

    return poll(found, what=f"worker {name} online")


def upgrade_from_master(c: Cluster, name: str) -> subprocess.CompletedProcess[str]:
    """C{pcci workers upgrade} of one worker, to its end: what it printed."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "pcci"), "workers", "upgrade", "-w", name, "--batch", "1"],
        env={**os.environ, "PCCI_URL": f"http://127.0.0.1:{c.api_port}", "PCCI_TOKEN": c.token or ""},
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"{name}: installing" in done.stderr and f"{name}: done" in done.stderr
    return done


def ticking(c: Cluster, name: str, go: Path) -> tuple[str, int]:
    """A job on C{name} that ticks until C{go} exists: its pool and pid, once started."""
    pool_id = c.submit(f"sh -c 'i=0; until [ -e {go} ]; do i=$((i+1)); echo tick $i; sleep 0.2; done; echo end'",
                       [name])
    return pool_id, poll(lambda: c.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"], what="the job's start")


def ends_whole(c: Cluster, pool_id: str, pid: int, go: Path) -> None:
    """The ticking job is still running in the same process; told to end, it ends ok with every tick."""
    running = c.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]
    assert (running["state"], running["pid"]) == ("running", pid)  # the same process, never waited for
    go.touch()
    job = c.wait_pool(pool_id)["jobs"][0]
    ticks = int(re.findall(r"tick (\d+)\n", job["result"])[-1])
    assert (job["state"], job["result"]) == ("ok", "".join(f"tick {i}\n" for i in range(1, ticks + 1)) + "end\n")


def refusals(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of a refusal: the script's own (pcci: …) but its progress."""
    return [line for line in result.stderr.splitlines() if not re.match(r"pcci: (installing|joining) ", line)]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the install line uses curl")
def test_one_line_installs_a_worker_that_upgrades_in_place_then_from_the_master_and_uninstalls(
    own_cluster: Cluster, wheelhouse: Path, older: Callable[..., Path], tmp_path: Path
) -> None:
    c = own_cluster
    c.worker_auth = "identity"
    prefix = tmp_path / "opt"
    install_master(c, wheelhouse, env={"PYTHONPATH": str(older(OLDEST, LANDING))})
    # The one line, as pcci join-token create prints it: installed from the
    # master's wheel and wheelhouse, joined, ready to start.
    made = subprocess.run(
        [str(Path(sys.executable).parent / "pcci"), "join-token", "create", "--name", "node1"],
        env={**os.environ, "PCCI_URL": f"http://127.0.0.1:{c.api_port}", "PCCI_TOKEN": c.token or ""},
        capture_output=True, text=True, timeout=60,
    )
    assert made.returncode == 0 and made.stderr.endswith("pcci: on the new machine, as root, run:\n")
    line = made.stdout.strip()
    assert "sha256sum -c" in line and line.endswith("--name node1)")
    first = run(line, "--prefix", str(prefix), "--no-service")
    assert first.returncode == 0, first.stderr
    assert f"start it with: {prefix}/bin/pcci-worker" in first.stderr
    assert os.readlink(prefix / "current").startswith(f"versions/{OLDEST}-")
    worker = start_installed(c, prefix)
    assert online(c, "node1")["pcci_version"] == OLDEST
    pool = c.run("echo installed by one line", ["node1"])
    assert pool["jobs"][0]["result"] == "installed by one line\n"
    fingerprint = {i["name"]: i["fingerprint"] for i in c.request("GET", "/identities")[1]}["node1"]

    # The landing's worker upgraded by a newer master, its upgrade code doing
    # it: a job running through, the worker back with the new version.
    c.master.stop()
    install_master(c, wheelhouse, env={"PYTHONPATH": str(older(OLDER))})
    online(c, "node1")
    through, pid = ticking(c, "node1", tmp_path / "go-landing")
    done = upgrade_from_master(c, "node1")
    assert re.search(rf"node1 +done +{OLDEST} +{OLDER}", done.stdout), done.stdout
    ends_whole(c, through, pid, tmp_path / "go-landing")

    # A token of another master's CA: refused in one line, and nothing is left of the try.
    code, made2 = c.request("POST", "/join-tokens", {"name": "node2"})
    assert made2["join_command"].startswith("twistd -n pcci-worker --join")
    token = made2["token"]
    other_pin = token[:-43] + ("A" if token[-43] != "A" else "B") + token[-42:]
    pinned = run(made2["command"].replace(token, other_pin), "--prefix", str(prefix), "--no-service")
    assert pinned.returncode == 1
    assert refusals(pinned) == [
        f"pcci: cannot join: the master's CA does not match the token's pin: not the master that made the token"
        f" (or someone in between); nothing was sent (master at 127.0.0.1:{c.worker_port})"
    ]
    assert not (prefix / "state" / "identity" / "node2.crt").exists()

    # A master of a newer version: the script run again upgrades in place, keeping the identity.
    c.master.stop()
    install_master(c, wheelhouse, env={"PYTHONPATH": str(older(OLD))})
    again = subprocess.run(
        ["sh", str(script(c, tmp_path)), "--url", f"http://127.0.0.1:{c.api_port}",
         "--join", f"tls:127.0.0.1:{c.worker_port}", "--name", "node1", "--prefix", str(prefix), "--no-service"],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert "keeps its version until it is started again" in again.stderr
    assert os.readlink(prefix / "current").startswith(f"versions/{OLD}-")
    assert len(list((prefix / "versions").iterdir())) == 2  # the one before is kept
    worker.stop()
    worker = start_installed(c, prefix)
    poll(lambda: online(c, "node1")["pcci_version"] == OLD, what="the upgraded worker")
    assert {i["name"]: i["fingerprint"] for i in c.request("GET", "/identities")[1]}["node1"] == fingerprint

    # A master of this version upgrades it while a job runs: the job runs
    # on across the restart into the new version (the same process, its pipes
    # kept), and ends ok with its whole output, told by the new version.
    c.master.stop()
    install_master(c, wheelhouse)
    online(c, "node1")
    # The new version is installed with the running one's packages; one the
    # running version lacks (as one a new version asks for) comes from the
    # master's wheelhouse.
    running_site = next((prefix / "current" / "lib").glob("python3.*/site-packages"))
    for path in running_site.glob("constantly*"):
        shutil.rmtree(path)
    pool_id, pid = ticking(c, "node1", tmp_path / "go")
    done = upgrade_from_master(c, "node1")
    assert re.search(rf"node1 +done +{OLD} +{re.escape(pcci.__version__)}", done.stdout)
    assert online(c, "node1")["pcci_version"] == pcci.__version__
    late = c.submit("echo sent after the upgrade", ["node1"])
    ends_whole(c, pool_id, pid, tmp_path / "go")
    late_job = c.wait_pool(late)["jobs"][0]
    assert (late_job["state"], late_job["result"]) == ("ok", "sent after the upgrade\n")
    assert os.readlink(prefix / "current").startswith(f"versions/{pcci.__version__}-")
    new_site = next((prefix / "current" / "lib").glob("python3.*/site-packages"))
    assert list(new_site.glob("constantly-*.dist-info")) and (new_site / "twisted").is_dir()
    # Once the new version holds, only it and the one before it are kept.
    poll(lambda: sorted(v.name.split("-")[0] for v in (prefix / "versions").iterdir()) == [OLD, pcci.__version__],
         what="the oldest version removed")
    assert c.run("echo upgraded", ["node1"])["jobs"][0]["result"] == "upgraded\n"
    assert {i["name"]: i["fingerprint"] for i in c.request("GET", "/identities")[1]}["node1"] == fingerprint

    # An upgrade into a version that dies at once, as systemd restarts it:
    # the launcher goes back to the version before it after three tries.
    worker.stop()
    here = os.readlink(prefix / "current").split("/")[1]
    broken = prefix / "versions" / "9.9.9-broken" / "bin"
    broken.mkdir(parents=True)
    (broken / "twistd").write_text("#!/bin/sh\nexit 3\n")
    (broken / "twistd").chmod(0o755)
    (prefix / "upgrade.json").write_text(json.dumps(
        {"state": "restarting", "from": here, "to": "9.9.9-broken", "version": "9.9.9", "deadline": 60}))
    os.unlink(prefix / "current")
    os.symlink("versions/9.9.9-broken", prefix / "current")
    for _ in range(3):
        assert subprocess.run([str(prefix / "bin" / "pcci-worker")], timeout=30).returncode == 3
    worker = start_installed(c, prefix)
    poll(lambda: online(c, "node1")["pcci_version"] == pcci.__version__, what="the version before, back")
    assert os.readlink(prefix / "current") == f"versions/{here}"
    poll(lambda: not (prefix / "upgrade.json").exists() and not (prefix / "upgrade.starts").exists(),
         what="the upgrade's record let go")

    # Uninstalled: the running worker stopped, the prefix gone.
    gone = subprocess.run(
        ["sh", str(script(c, tmp_path)), "--uninstall", "--prefix", str(prefix), "--no-service"],
        capture_output=True, text=True, timeout=60,
    )
    assert gone.returncode == 0, gone.stderr
    assert gone.stderr == f"pcci: worker removed: {prefix} is gone\n"
    assert not prefix.exists()
    assert processes_with(str(prefix)) == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="the install line uses curl")
def test_the_script_refuses_a_bad_token_an_old_python_and_a_swapped_script_each_in_one_line(
    own_cluster: Cluster, wheelhouse: Path, tmp_path: Path
) -> None:
    c = own_cluster
    c.worker_auth = "identity"
    install_master(c, wheelhouse)
    path = script(c, tmp_path)
    prefix = tmp_path / "opt"
    where = ["--url", f"http://127.0.0.1:{c.api_port}", "--join", f"tls:127.0.0.1:{c.worker_port}",
             "--prefix", str(prefix), "--no-service"]

    def attempt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(path), *where, *args], capture_output=True, text=True, timeout=60,
                              env=None if env is None else {**os.environ, **env})

    bad = attempt("--token", "not-a-token")
    assert (bad.returncode, bad.stderr) == (
        1, "pcci: --token is not a join token (ID.SECRET.PIN, as pcci join-token create prints it)\n"
    )
    # A python3 3.8 first on the PATH.
    old = tmp_path / "bin"
    old.mkdir()
    (old / "python3").write_text("#!/bin/sh\necho 3.8\n")
    (old / "python3").chmod(0o755)
    token = c.join_token("node1")
    older = attempt("--token", token, env={"PATH": f"{old}:{os.environ['PATH']}"})
    assert older.returncode == 1
    assert re.fullmatch(r"pcci: \S+/python3 is Python 3\.8; a worker needs 3\.9 or newer: .+\n", older.stderr)
    assert not prefix.exists()

    # The line checks the script against its hash before it runs it.
    code, made = c.request("POST", "/join-tokens", {"name": "node2"})
    pin = re.search(r'echo "([0-9a-f]{64})  \$f"', made["command"])
    assert pin is not None
    swapped = subprocess.run(
        ["sh", "-c", made["command"].replace(pin.group(1), "0" * 64)], capture_output=True, text=True, timeout=60
    )
    assert (swapped.returncode, swapped.stderr) == (
        1, "pcci: install.sh does not match the hash in this line: not run\n"
    )
    assert not prefix.exists()
