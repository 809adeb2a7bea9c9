"""
C{pcci shell} against a real master and workers, driven under a real
pseudo-terminal (pexpect): the prompt, the window's size, Ctrl-C, the exit
status, C{~.}, a flood held back at every hop, who may open a shell, and
the ends a shell meets when its worker or its master goes.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import psutil
import pytest
from cluster import Cluster, poll

pytestmark = [pytest.mark.e2e, pytest.mark.long(50)]

PCCI = str(Path(sys.executable).parent / "pcci")

ADMIN, READER, SCOPED, SHELLER = "a" * 32, "r" * 32, "s" * 32, "h" * 32
PROMPT = "pcci-prompt> "


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master whose tokens are an admin's, a reader's, and two scoped to w1 (one with shell=yes)."""
    c = Cluster(tmp_path_factory.mktemp("shells"))
    tokens = c.directory / "tokens"
    tokens.write_text(
        f"{ADMIN} name=admin\n{READER} read name=reader\n"
        f"{SCOPED} name=scoped workers=w1\n{SHELLER} name=sheller workers=w1 shell=yes\n"
    )
    tokens.chmod(0o600)
    try:
        c.start_master("--api-token-file", str(tokens))
        c.token = ADMIN
        c.start_worker("w1", "--kill-grace", "1")
        c.start_worker("w2", "--kill-grace", "1")
        yield c
    finally:
        c.stop()


def environment(cluster: Cluster, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCCI_")}
    env.update(PCCI_URL=f"http://127.0.0.1:{cluster.api_port}", PCCI_TOKEN=token or cluster.token or "",
               TERM="xterm")
    return env


def shell(cluster: Cluster, *args: str, token: str | None = None) -> pexpect.spawn:
    """C{pcci shell ARGS} in a terminal of 24 by 80, at a known prompt once it is a shell."""
    child = pexpect.spawn(PCCI, ["shell", *args], env=environment(cluster, token), dimensions=(24, 80),
                          timeout=20, encoding="utf-8", codec_errors="replace")
    return child


def at_prompt(child: pexpect.spawn) -> None:
    child.expect(r"[$#] ")  # the login shell's own prompt came
    child.sendline(f"PS1='{PROMPT}'")
    child.expect_exact(PROMPT)
    child.expect_exact(PROMPT)  # the echo of the line, then the prompt itself


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus


def pcci(cluster: Cluster, *args: str, token: str | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([PCCI, *args], env=environment(cluster, token), input=stdin, capture_output=True,
                          timeout=60)


def test_a_login_shell_sized_resized_interrupted_and_its_status(cluster: Cluster) -> None:
    child = shell(cluster, "w1")
    at_prompt(child)
    child.sendline("stty size")
    child.expect_exact("24 80")
    child.setwinsize(30, 100)
    # The size goes at SIGWINCH; poll until the shell sees it.
    deadline = time.monotonic() + 10
    while True:
        child.sendline("stty size")
        if child.expect_exact(["30 100", PROMPT]) == 0:
            break
        assert time.monotonic() < deadline, "the new size never reached the shell"
    child.expect_exact(PROMPT)
    child.sendline("sleep 100; echo after")
    time.sleep(0.3)  # let sleep start: the Ctrl-C is for it
    child.sendintr()
    child.expect_exact(PROMPT, timeout=5)
    assert "after" not in child.before
    # Ctrl-Z stops a job, Ctrl-D ends a cat's input: both reach the remote terminal.
    child.sendline("sleep 200")
    time.sleep(0.3)
    child.sendcontrol("z")
    child.expect("Stopped")
    child.expect_exact(PROMPT)
    child.sendline("kill -9 %1; cat")
    child.sendline("typed")
    child.expect_exact("typed\r\ntyped")  # the terminal's echo, then cat's
    child.sendeof()
    child.expect_exact(PROMPT)
    child.sendline("exit 3")
    assert ended(child) == 3


def test_tilde_dot_disconnects_the_shell_hangs_up_and_this_terminal_is_restored(cluster: Cluster) -> None:
    # pcci in a shell here, so that the terminal can be looked at once pcci is gone.
    child = pexpect.spawn("/bin/sh", ["-c", f"{PCCI} shell w2; echo status=$?; stty -a"], env=environment(cluster),
                          dimensions=(24, 80), timeout=20, encoding="utf-8", codec_errors="replace")
    at_prompt(child)
    child.sendline("echo pid=$$")
    child.expect(r"pid=(\d+)")
    pid = int(child.match.group(1))
    child.expect_exact(PROMPT)
    child.send("\r~.")
    child.expect_exact("pcci: disconnected (~.)")
    child.expect_exact("status=255")
    child.expect(r"speed \d+ baud")
    modes = child.read()
    assert " icanon" in modes and " echo" in modes  # cooked again, not raw
    poll(lambda: not psutil.pid_exists(pid), what="the remote shell's end")


def test_a_flood_is_held_back_and_ctrl_c_stops_it(cluster: Cluster) -> None:
    master = psutil.Process(cluster.master.pid)
    child = shell(cluster, "w1")
    at_prompt(child)
    before = master.memory_info().rss
    child.sendline("yes")
    # Nobody reads this terminal: every hop fills, then holds still.
    sent = []
    deadline = time.monotonic() + 20
    while len(sent) < 3 or len(set(sent[-3:])) > 1:
        assert time.monotonic() < deadline, f"the flood never stopped: {sent}"
        time.sleep(0.5)
        code, shells = cluster.request("GET", "/shells")
        sent.append(shells[0]["bytes_out"])
    assert master.memory_info().rss - before < 32 * 1024 * 1024
    child.sendintr()
    child.expect_exact(PROMPT, timeout=60, searchwindowsize=200)
    child.sendline("exit 0")
    assert ended(child) == 0


def test_without_a_terminal_it_is_ssh_host_cmd(cluster: Cluster) -> None:
    done = pcci(cluster, "shell", "w1", "--", "wc", "-l", stdin=b"a\nb\n")
    assert (done.returncode, done.stdout.strip()) == (0, b"2")
    done = pcci(cluster, "shell", "w2", "--", "echo out; echo err >&2; exit 4")
    assert (done.returncode, done.stdout, done.stderr) == (4, b"out\n", b"err\n")


def test_who_may_open_a_shell(cluster: Cluster) -> None:
    cases = [
        (READER, "w1", "a read-only token may not open shells"),
        (SCOPED, "w1", "this token's scope does not allow shells (it needs shell=yes)"),
        (SHELLER, "w2", "this token may not use worker w2"),
        (ADMIN, "ghost", "worker ghost is not connected"),
    ]
    for token, node, why in cases:
        done = pcci(cluster, "shell", node, "--", "true", token=token)
        assert (done.returncode, done.stderr.decode()) == (255, f"pcci: {why}\n")
    done = pcci(cluster, "shell", "w1", "--", "echo", "allowed", token=SHELLER)
    assert (done.returncode, done.stdout) == (0, b"allowed\n")
    log = cluster.master.log_text()
    assert "refused reader GET /workers/w1/shell: a read-only token may not open shells" in log
    assert "opened by sheller on w1 as the worker's user: echo allowed" in log


def login_account() -> pwd.struct_passwd | None:
    """An account other than root whose shell is a real one (postgres's, on these machines)."""
    shells = set(Path("/etc/shells").read_text().split()) if Path("/etc/shells").exists() else set()
    return next((p for p in pwd.getpwall() if p.pw_uid != 0 and p.pw_shell in shells), None)


@pytest.mark.skipif(os.getuid() != 0, reason="the worker must run as root to open a shell as another user")
def test_a_shell_as_another_user(cluster: Cluster) -> None:
    account = login_account()
    if account is None:
        pytest.skip("no account with a login shell besides root")
    done = pcci(cluster, "shell", "-u", account.pw_name, "w1", "--", "id -un; echo $HOME")
    assert (done.returncode, done.stdout.decode().split()) == (0, [account.pw_name, account.pw_dir])
    # An account that may not log in does not: its shell (nologin) says so.
    done = pcci(cluster, "shell", "-u", "nobody", "w1", "--", "id")
    assert done.returncode == 1 and b"not available" in done.stdout + done.stderr
    done = pcci(cluster, "shell", "-u", "no-such-user", "w1", "--", "true")
    assert (done.returncode, done.stderr) == (127, b"pcci: no user no-such-user on this worker\n")


def test_a_worker_killed_mid_session_ends_it_saying_so(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    worker = own_cluster.start_worker("w3")
    child = shell(own_cluster, "w3")
    at_prompt(child)
    worker.signal(signal.SIGKILL)
    child.expect_exact("pcci: worker w3 went away")
    assert ended(child) == 255


def test_a_master_stopping_ends_its_shells_cleanly(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w4")
    child = shell(own_cluster, "w4")
    at_prompt(child)
    own_cluster.master.stop()
    child.expect_exact("pcci: the master is shutting down")
    assert ended(child) == 255


def test_shells_are_listed_recorded_and_replayed(cluster: Cluster) -> None:
    done = pcci(cluster, "shell", "w1", "--", "printf 'recorded \\033[1mbold\\033[0m\\n'", token=SHELLER)
    assert done.returncode == 0
    listed = pcci(cluster, "shells", "--json", token=SHELLER)
    shells = json.loads(listed.stdout)
    assert {s["by"] for s in shells} == {"sheller"}  # a scoped token sees its own
    mine = shells[0]
    assert (mine["open"], mine["status"], mine["cmd"], mine["bytes_out"]) == (
        False, 0, "printf 'recorded \\033[1mbold\\033[0m\\n'", len("recorded \033[1mbold\033[0m\n"))
    assert mine["recorded"] > 0
    replayed = pcci(cluster, "shell", "--replay", mine["id"], "--speed", "100", token=SHELLER)
    assert replayed.returncode == 0 and replayed.stdout == b"recorded \033[1mbold\033[0m\n"
    # The admin sees every shell; a reader may list them, never read what they showed.
    assert mine["id"] in {s["id"] for s in cluster.request("GET", "/shells")[1]}
    code, answer = cluster.request("GET", f"/shells/{mine['id']}/recording", token=READER)
    assert (code, answer["message"]) == (403, "a read-only token may not read recordings: they hold all a shell showed")
    code, answer = cluster.request("GET", f"/shells/{mine['id']}", token=SCOPED)
    assert code == 404  # another token's shell is as unknown to a scoped one


def test_a_shell_kept_across_a_master_restart(own_cluster: Cluster) -> None:
    own_cluster.start_master("--shell-record-max", "300")
    own_cluster.start_worker("w5")
    assert pcci(own_cluster, "shell", "w5", "--", "seq 1 1000").returncode == 0
    own_cluster.master.stop()
    own_cluster.start_master("--shell-record-max", "300")
    (kept,) = own_cluster.request("GET", "/shells")[1]
    assert kept["truncated"] and kept["recorded"] < 400
    replayed = pcci(own_cluster, "shell", "--replay", kept["id"], "--speed", "100")
    assert replayed.stdout.startswith(b"1\n2\n") and b"the recording stops here" in replayed.stdout
