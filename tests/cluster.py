"""
Real pcci daemons on loopback for the end-to-end tests.

Every daemon is a real C{twistd} process started from the installed package
(so plugin discovery is exercised too) and ended by its pid.  Waiting is
polling against a deadline.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

DEADLINE = 20.0

#: This repository, whose history holds the earlier versions tests upgrade from.
REPOSITORY = Path(__file__).resolve().parents[1]

#: The twistd of the environment running the tests, where pcci is installed.
TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout(commit: str, into: Path) -> Path:
    """The package of an earlier commit, as its source tree (no install needed)."""
    import pytest

    if shutil.which("git") is None or not (REPOSITORY / ".git").exists():
        if os.environ.get("CI"):
            pytest.fail("the upgrade tests need this repository's git history")
        pytest.skip("needs this repository's git history")
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", commit, "pcci", "twisted"],
        capture_output=True, check=True, timeout=60,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def older_tree(where: Path, version: str, commit: str = "") -> Path:
    """
    This tree, or an earlier commit's, with its version set to C{version},
    in C{where}: on PYTHONPATH, a master of it serves a wheel of that version.
    """
    if commit:
        checkout(commit, where)
    else:
        for package in ("pcci", "twisted"):
            shutil.copytree(REPOSITORY / package, where / package, ignore=shutil.ignore_patterns("__pycache__"))
    init = where / "pcci" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
    return where


def poll(check: Callable[[], T], timeout: float = DEADLINE, what: str = "") -> T:
    """Call C{check} until it returns something true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.02)


class Daemon:
    """One twistd process."""

    def __init__(
        self,
        directory: Path,
        name: str,
        plugin: str,
        *args: str,
        files: int | None = None,
        env: dict[str, str] | None = None,
        program: str | None = None,
    ) -> None:
        """With C{files}, the daemon may open at most that many files; C{env}
        is added to its environment.  With C{program}, that runs instead of
        this venv's twistd (C{plugin} is then its first argument), logging
        to its standard output."""
        self.name = name
        self.log = directory / f"{name}.log"
        if program is None:
            command = [TWISTD, "--nodaemon", "--pidfile=", f"--logfile={self.log}", plugin, *args]
            out: Any = subprocess.DEVNULL
        else:
            command = [program, plugin, *args] if plugin else [program, *args]
            out = self.log.open("ab")

        def limit_files() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        # A preexec_fn makes subprocess fork instead of its faster spawn:
        # only when asked for.
        self.process = subprocess.Popen(
            command, cwd=directory, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=None if files is None else limit_files,
            env=None if env is None else {**os.environ, **env},
        )
        if program is not None:
            out.close()  # the daemon has its own

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass  # it ended between the check and the signal

    def stop(self, timeout: float = 15.0) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Cluster:
    """
    A master and its workers, with a small REST client.

    Authentication is on: the master keeps its secrets in C{state/} of the
    directory and the client sends its API token.  Workers prove themselves
    as C{worker_auth} says: C{secret} (C{--secret-file}), or C{identity}
    (the default on a new state directory: each worker joins once with a
    token made for its name).  With C{auth=False} everything runs
    C{--no-auth}.
    """

    def __init__(self, directory: Path, auth: bool = True, worker_auth: str = "secret") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.auth = auth
        self.worker_auth = worker_auth
        self.state_dir = directory / "state"
        self.api_port = free_port()
        self.worker_port = free_port()
        self.daemons: list[Daemon] = []
        self.master: Daemon | None = None
        self.token: str | None = None

    @property
    def secret_file(self) -> Path:
        return self.state_dir / "cluster-secret"

    def start_master(self, *args: str, files: int | None = None, env: dict[str, str] | None = None) -> Daemon:
        auth = ["--state-dir", str(self.state_dir)]
        if not self.auth:
            auth.append("--no-auth")
        elif "--worker-auth" not in args and self.worker_auth != "identity":
            auth += ["--worker-auth", self.worker_auth]  # identity: the default on a new state dir
        self.master = self._start(
            "master", "pcci-master",
            "--api", f"tcp:{self.api_port}:interface=127.0.0.1",
            "--listen", f"tcp:{self.worker_port}:interface=127.0.0.1", *auth, *args,
            files=files, env=env,
        )
        poll(lambda: self.up(), what="the master's API")
        if self.auth:
            self.token = (self.state_dir / "api-token").read_text().split()[0]
        return self.master

    def start_master_with_tokens(
        self, admin: str, reader: str, *args: str, names: tuple[str, str] = ("admin", "reader")
    ) -> Daemon:
        """A master whose tokens are C{admin} (may run) and C{reader} (read-only), named C{names}."""
        tokens = self.directory / "tokens"
        tokens.write_text(f"{admin} name={names[0]}\n{reader} read name={names[1]}\n")
        tokens.chmod(0o600)
        daemon = self.start_master("--api-token-file", str(tokens), *args)
        self.token = admin
        return daemon

    def start_worker(
        self, name: str, *args: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> Daemon:
        if "--state-dir" not in args:
            args = ("--state-dir", str(self.directory / "worker-state"), *args)
        state_dir = Path(args[args.index("--state-dir") + 1])
        where = ["--master", f"tcp:127.0.0.1:{self.worker_port}"]
        if not self.auth:
            auth = ["--no-auth"]
        elif self.worker_auth == "identity":
            where = ["--join", f"tls:127.0.0.1:{self.worker_port}"]
            auth = [] if (state_dir / "identity" / f"{name}.crt").exists() else ["--token", self.join_token(name)]
        else:
            auth = ["--secret-file", str(self.secret_file)]
        daemon = self._start(
            f"worker-{name}-{len(self.daemons)}", "pcci-worker", *where, "--name", name, *auth, *args, env=env,
        )
        if wait:
            self.wait_for_workers(name)
        return daemon

    def join_token(self, name: str = "*", **fields: Any) -> str:
        """A join token made through the API, for workers named C{name}."""
        code, answer = self.request("POST", "/join-tokens", {"name": name, **fields})
        assert code == 201, answer
        return str(answer["token"])

    def _start(
        self, name: str, plugin: str, *args: str, files: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        daemon = Daemon(self.directory, name, plugin, *args, files=files, env=env)
        self.daemons.append(daemon)
        return daemon

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {d.name}\n{d.log_text()}" for d in self.daemons)

    # REST

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 90,
                token: str | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"Content-Type": "application/json"}
        if token or self.token:
            sent["Authorization"] = f"Bearer {token or self.token}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method,
            headers={**sent, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def up(self) -> bool:
        try:
            return self.request("GET", "/health", timeout=2)[0] == 200
        except OSError:
            return False

    def workers(self) -> list[str]:
        try:
            return [w["id"] for w in self.request("GET", "/workers", timeout=2)[1]]
        except OSError:
            return []

    def wait_for_workers(self, *names: str) -> None:
        poll(lambda: set(names) <= set(self.workers()), what=f"workers {names}")

    def submit(self, cmd: str, workers: list[str]) -> str:
        code, body = self.request("POST", "/job", {"cmd": cmd, "workers": workers})
        assert code == 200, body
        return body["pool_id"]

    def wait_pool(self, pool_id: str, timeout: float = DEADLINE) -> dict:
        """The pool once finished, long-polling up to C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            code, pool = self.request("GET", f"/pools/{pool_id}?wait={min(left, 60):.2f}")
            assert code == 200, pool
            if pool["status"] is not None:
                return pool
            if time.monotonic() >= deadline:
                raise AssertionError(f"pool {pool_id} still running: {pool}")

    def run(self, cmd: str, workers: list[str], timeout: float = DEADLINE) -> dict:
        return self.wait_pool(self.submit(cmd, workers), timeout)


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains C{marker}."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def read_events(
    response: http.client.HTTPResponse, timeout: float = 2 * DEADLINE
) -> Iterator[tuple[int, str, dict]]:
    """
    A pool's server-sent events as they come: (id, name, data); a stream
    still open after C{timeout} seconds fails (keep-alives never end it).
    """
    deadline = time.monotonic() + timeout
    fields: dict[str, str] = {}
    for raw in response:
        if time.monotonic() > deadline:
            raise AssertionError(f"the event stream is still open after {timeout} s")
        line = raw.decode().rstrip("\n")
        if not line:
            if fields:
                yield int(fields["id"]), fields["event"], json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value


def open_events(cluster: Cluster, pool_id: str, last: int | None = None) -> http.client.HTTPResponse:
    """A pool's event stream on C{cluster}'s master, after event C{last}."""
    connection = http.client.HTTPConnection("127.0.0.1", cluster.api_port, timeout=20)
    headers = {"Authorization": f"Bearer {cluster.token}"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    connection.request("GET", f"/pools/{pool_id}/events", headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    return response
