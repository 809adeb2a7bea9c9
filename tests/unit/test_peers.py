"""
Two masters' states on one throwaway PostgreSQL, driven by Clocks: jobs on
workers the other master holds, pools shown live there, and a dead
master's pools taken over once.  Notifications are delivered by hand
(L{Master.listening} reads everything again); store calls run at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fakes import FakeLink, started
from postgres import SyncStore
from test_upgrades import ORDER
from twisted.internet.task import Clock

from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.cluster.queries import parse
from pcci.master.cluster.state import ClusterState
from pcci.master.peers.peers import FIGURES_INTERVAL, Notices, Peers
from pcci.master.store.postgres import PostgresStore


class Master:
    """One master's state, store and peers, its workers fake links."""

    def __init__(self, name: str, url: str) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store: PostgresStore = SyncStore(url, None, name)
        self.fenced = False
        self.peers = Peers(self.clock, self.store, Notices(fenced=lambda: setattr(self, "fenced", True)))
        self.state = ClusterState(self.clock, store=self.store, peers=self.peers)
        self.state.reports.carry_on(self.store.open())
        self.peers.start(listen=False)
        self.links: dict[str, FakeLink] = {}

    @property
    def dispatcher(self) -> Any:
        return self.state.dispatcher

    @property
    def reports(self) -> Any:
        return self.state.reports

    def connect(self, name: str, **kwargs: Any) -> FakeLink:
        link = self.links[name] = FakeLink(name, **kwargs)
        self.state.roster.join(link)
        return link

    def submit(self, cmd: str, workers: list[str]) -> Any:
        d = self.dispatcher.submit(PoolOrder(cmd), workers)
        self.clock.advance(0)  # written
        return started(d)

    def turn(self) -> None:
        """What waits is written, and everything is read again."""
        self.clock.advance(0.01)
        self.peers.listening()

    def stop(self) -> None:
        self.state.stop()
        for loop in self.peers._loops:
            loop.stop()
        self.store.close()


@pytest.fixture
def pair(pg_url: str) -> Iterator[tuple[Master, Master]]:
    m1, m2 = Master("m1", pg_url), Master("m2", pg_url)
    m1.clock.advance(1)  # a lease renewed: m1 is no longer alone
    yield m1, m2
    for master in (m1, m2):
        master.stop()


def settle(*masters: Master) -> None:
    for _ in range(4):
        for master in masters:
            master.turn()


def test_each_master_lists_the_workers_the_other_holds(pair: tuple[Master, Master]) -> None:
    m1, m2 = pair
    m1.connect("w1", labels={"rack": "a"})
    m2.connect("w2")
    settle(m1, m2)
    for master in (m1, m2):
        records = master.state.roster.records
        assert {name: r.master for name, r in records.items()} == {"w1": "m1", "w2": "m2"}
    assert m2.state.roster.online_labels()["w1"] == {"rack": "a"}
    m1.state.roster.heartbeat("w1", {"load_1m": 0.5})
    m1.clock.advance(FIGURES_INTERVAL)
    settle(m1, m2)
    assert m2.state.roster.records["w1"].figures["load_1m"] == 0.5
    m1.state.roster.leave(m1.links["w1"], "disconnected")
    settle(m1, m2)
    assert not m2.state.roster.records["w1"].online


def test_a_job_on_the_other_masters_worker_runs_there_and_ends_here(
    pair: tuple[Master, Master]
) -> None:
    m1, m2 = pair
    m1.connect("w1")
    w2 = m2.connect("w2")
    settle(m1, m2)
    pool = m1.submit("uname", ["w1", "w2"])
    settle(m1, m2)
    assert w2.runs == [(pool.id, "uname")]
    # The worker reports to its own master, which relays to the pool's.
    m2.reports.job_started("w2", pool.id, 42)
    m2.reports.job_output("w2", pool.id, "Linux\n", "stdout", 1)
    m2.reports.job_ended("w2", pool.id, 0)
    assert not m2.state.history.pools  # never m2's
    settle(m1, m2)
    job = pool.jobs["w2"]
    assert (job.state, job.pid, job.output.text()) == ("ok", 42, "Linux\n")
    assert w2.acked == [pool.id]  # once m1 stored the end
    assert m2.peers.workers.relays == {}


def test_the_other_masters_worker_is_queried_by_its_facts_and_refreshed_through_it(
    pair: tuple[Master, Master]
) -> None:
    m1, m2 = pair
    w2 = m2.connect("w2", tells_facts=True)
    m2.state.roster.set_facts("w2", {"os": {"id": "debian"}, "cpus": 8})
    settle(m1, m2)
    roster = m1.state.roster
    assert roster.index.chosen(parse("os.id=debian and cpus>=8"), roster.links) == ["w2"]
    assert roster.links["w2"].refresh_facts() is True
    settle(m1, m2)
    assert w2.facts_refreshes == 1
    m2.state.roster.set_facts("w2", {"os": {"id": "debian"}, "cpus": 4})  # what the worker then told
    settle(m1, m2)
    assert roster.index.chosen(parse("cpus>=8"), roster.links) == []


def upgrade_held_by_the_other(m1: Master, m2: Master) -> tuple[FakeLink, Any]:
    """A rollout on m1 of a worker m2 holds, its order passed on to the worker."""
    w2 = m2.connect("w2", pcci_version="2.0.0", upgrades=True)
    settle(m1, m2)
    rollout = m1.state.upgrades.start(["w2"], 1, ORDER, "alice")
    assert rollout.workers["w2"].state == "sent"
    settle(m1, m2)
    assert w2.upgrade_orders == [ORDER]
    return w2, rollout


def test_a_rollout_upgrades_the_other_masters_worker_through_it(pair: tuple[Master, Master]) -> None:
    """The order goes to the worker's holder, its news come back, and its return ends it done."""
    m1, m2 = pair
    w2, rollout = upgrade_held_by_the_other(m1, m2)
    m2.state.upgrades.status("w2", "draining", "")  # the worker says so to its own master
    settle(m1, m2)
    assert rollout.workers["w2"].state == "draining"
    m2.state.roster.leave(w2, "disconnected")  # it restarts into the new version
    m2.connect("w2", pcci_version="2.1.0", upgrades=True)
    settle(m1, m2)
    assert (rollout.workers["w2"].state, rollout.workers["w2"].now) == ("done", "2.1.0")


def test_a_failed_upgrade_on_the_other_master_says_why_here(pair: tuple[Master, Master]) -> None:
    m1, m2 = pair
    _, rollout = upgrade_held_by_the_other(m1, m2)
    m2.state.upgrades.status("w2", "failed", "pip: no space left on device")
    settle(m1, m2)
    assert (rollout.workers["w2"].state, rollout.workers["w2"].reason) == ("failed", "pip: no space left on device")
    assert m2.peers.workers.upgrade_orders == {}  # its news told, the relay is let go


def test_a_master_alone_writes_no_events(pg_url: str) -> None:
    m1 = Master("m1", pg_url)
    try:
        m1.connect("w1")
        pool = m1.submit("true", ["w1"])
        m1.reports.job_started("w1", pool.id, 7)
        m1.turn()
        events = m1.store.db.transact(lambda cursor, d: cursor.execute("SELECT count(*) FROM events").fetchone())
        assert m1.peers.alone and events == (0,)
    finally:
        m1.stop()


def test_the_other_master_shows_a_running_pool_live_and_kills_it(
    pair: tuple[Master, Master]
) -> None:
    m1, m2 = pair
    w1 = m1.connect("w1")
    pool = m1.submit("top", ["w1"])
    m1.reports.job_started("w1", pool.id, 7)
    settle(m1, m2)
    shown = started(m2.state.history.find(pool.id))
    assert shown is not pool and m2.state.history.is_elsewhere(shown)
    heard: list[Any] = []
    shown.listeners.append(heard.append)
    m1.reports.job_output("w1", pool.id, "busy\n", "stdout", 1)
    settle(m1, m2)
    assert [(e.name, e.data["data"]) for e in heard] == [("output", "busy\n")]
    assert shown.jobs["w1"].state == "running" and shown.jobs["w1"].output.text() == "busy\n"
    assert started(m2.peers.kill_elsewhere(shown, None)) == ["w1"]
    settle(m1, m2)
    assert w1.kills == [pool.id]
    m1.reports.job_ended("w1", pool.id, -9, "killed")
    settle(m1, m2)
    assert [e.name for e in heard][-2:] == ["ended", "pool"] and shown.state == "failed"


@pytest.mark.parametrize("claimant", ["m2", "m3"])
def test_a_dead_masters_pool_is_taken_over_once(pg_url: str, claimant: str) -> None:
    """m1 runs a pool on w3, held by m3; m1 dies; m2 or m3 (holding w3) takes it over."""
    m1, m2, m3 = Master("m1", pg_url), Master("m2", pg_url), Master("m3", pg_url)
    survivors = {"m2": m2, "m3": m3}
    try:
        w3 = m3.connect("w3")
        m1.clock.advance(1)
        settle(m1, m2, m3)
        pool = m1.submit("make", ["w3"])
        settle(m1, m2, m3)
        assert w3.runs == [(pool.id, "make")]
        m3.reports.job_output("w3", pool.id, "half\n", "stdout", 1)
        settle(m1, m2, m3)
        assert pool.jobs["w3"].output.text() == "half\n"
        m1.stop()  # its connection, and with it its lock, goes
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute("UPDATE masters SET seen = now() - interval '1 hour' WHERE id = 'm1'")
        judge = survivors[claimant]
        for _ in range(12):  # a master judges only once its own lease is steady
            judge.clock.advance(1)
            judge.turn()
        owner = survivors[claimant]
        assert [m for m in (m2, m3) if pool.id in m.state.history.pools] == [owner]
        settle(m2, m3)
        # Carried on after the last chunk m1 wrote, not run again.
        assert w3.attached == [(pool.id, 1)] and w3.runs == [(pool.id, "make")]
        m3.reports.job_output("w3", pool.id, "done\n", "stdout", 2)
        m3.reports.job_ended("w3", pool.id, 0)
        settle(m2, m3)
        taken = owner.state.history.pools[pool.id]
        assert taken.state == "ok" and taken.jobs["w3"].output.text() == "half\ndone\n"
        assert w3.acked == [pool.id]
        # A master whose row went while it was cut off (judged dead) stops.
        revived = Master("m1", pg_url)
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute("DELETE FROM masters WHERE id = 'm1'")
        revived.clock.advance(1)
        assert revived.fenced
        revived.stop()
    finally:
        for master in (m2, m3):
            master.stop()


def test_a_dead_masters_upgrade_goes_on_on_a_survivor(pg_url: str) -> None:
    """m1 upgrades w2 and w3 (held by m2), one at a time; m1 dies with w2 under way; m2 takes the rollout on."""
    m1, m2 = Master("m1", pg_url), Master("m2", pg_url)
    try:
        w2 = m2.connect("w2", pcci_version="2.0.0", upgrades=True)
        w3 = m2.connect("w3", pcci_version="2.0.0", upgrades=True)
        m1.clock.advance(1)
        settle(m1, m2)
        rollout = m1.state.upgrades.start(["w2", "w3"], 1, ORDER, "alice")
        settle(m1, m2)
        assert w2.upgrade_orders == [ORDER] and not w3.upgrade_orders
        m1.store.upgrades.put("m1", rollout.record())  # as its StateService writes it
        m1.stop()
        with psycopg.connect(pg_url, autocommit=True) as connection:
            connection.execute("UPDATE masters SET seen = now() - interval '1 hour' WHERE id = 'm1'")
        for _ in range(12):  # a master judges only once its own lease is steady
            m2.clock.advance(1)
            m2.turn()
        taken = m2.state.upgrades.rollouts[rollout.id]
        assert taken.workers["w2"].state == "sent"
        m2.state.roster.leave(w2, "disconnected")  # w2 restarts into the new version
        m2.connect("w2", pcci_version="2.1.0", upgrades=True)
        assert taken.workers["w2"].state == "done" and not w3.upgrade_orders  # its workers' time to come back
        m2.clock.advance(m2.state.roster.reconnect_grace)
        assert w3.upgrade_orders == [ORDER]
        assert [r["id"] for r in started(m2.store.upgrades.of("m2", 5))] == [rollout.id]  # now m2's
    finally:
        m2.stop()
