from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cluster import Cluster, processes_with

if TYPE_CHECKING:
    from postgres import Postgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    The long modules first, then the other end-to-end ones, the unit tests
    last: handed out in this order, a module at a time, the long ones do
    not start late and keep one process busy after the others are done.
    """

    def rank(item: pytest.Item) -> tuple[int, float]:
        long = item.get_closest_marker("long")
        if long is not None:
            return 0, -long.args[0]  # the longest first
        return (1 if item.get_closest_marker("e2e") else 2), 0

    items.sort(key=rank)  # stable: each module's tests keep their order


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master with two workers, w1 and w2, shared by a module's tests."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_master()
        c.start_worker("w1", "--kill-grace", "1")
        c.start_worker("w2", "--kill-grace", "1")
        yield c
    finally:
        c.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster for a test that stops or restarts daemons."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique number for `sleep` commands; its processes are killed after the test."""
    value = f"{1000 + (abs(hash(request.node.nodeid)) % 9000)}.{os.getpid() % 1000}"
    yield value
    for pid in processes_with(f"sleep {value}"):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server for the whole run (see tests/postgres.py)."""
    from postgres import Postgres

    server = Postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A URL of an empty pcci database on the throwaway server."""
    import psycopg

    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    yield postgres.url
