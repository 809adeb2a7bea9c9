"""
A throwaway PostgreSQL server for the tests: Debian's binaries, a data
directory of its own, a Unix socket and no TCP port, fsync off.

C{initdb} refuses to run as root, so as root (CI) the server runs as the
C{postgres} user that Debian's package creates.  Without the binaries the
tests that need one skip, except under CI (which installs them).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import execute

from pcci.master.store.postgres import PostgresDatabase, PostgresStore

#: The role and database the master uses.
USER = DATABASE = "pcci"


def binaries() -> Path | None:
    """Debian's newest PostgreSQL's bin directory, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """One server: C{start}, C{stop} (it can start again), C{url} for the master."""

    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
            pytest.skip("needs PostgreSQL (apt-get install postgresql)")
        self.bin = bin_dir
        # Outside pytest's own temporary directories, which only root may enter.
        self.directory = Path(tempfile.mkdtemp(prefix="pcci-pg-"))
        self.data = self.directory / "data"
        self.socket = self.directory
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.directory, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8")
        self.start()
        self._run("createdb", "-h", str(self.socket), "-U", USER, DATABASE)

    @property
    def url(self) -> str:
        return f"postgresql:///{DATABASE}?host={self.socket}&user={USER}"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / program), *args],
            check=True, capture_output=True, timeout=60, cwd=self.directory,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-w", "-l", str(self.directory / "server.log"),
            "-o", f"-k {self.socket} -c listen_addresses='' -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # stopped already
        shutil.rmtree(self.directory, ignore_errors=True)


class SyncDatabase(PostgresDatabase):
    """The database with its calls run at once: a unit test has no thread pool running."""

    def open(self) -> None:
        self.connect()

    def run(self, work, *args):  # type: ignore[override]
        return execute(self.transact, work, *args)

    def close(self) -> None:
        self.disconnect()


def SyncStore(url: str, reactor: Any, master: str) -> PostgresStore:
    return PostgresStore(SyncDatabase(url, reactor, master))
