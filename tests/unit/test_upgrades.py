"""
Upgrades from the master, driven by a Clock: the master's rollouts
(batches, what each worker's upgrade ends as).  The worker's side is in
L{test_worker_upgrade}.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import FakeLink
from twisted.internet.task import Clock

from pcci.master.cluster.state import ClusterState
from pcci.master.cluster.upgrades import INSTALL_TIME, batch_size

ORDER = {"version": "2.1.0", "wheel": "pcci-2.1.0-py3-none-any.whl", "url": "http://m/dist/x", "sha256": "ab" * 32,
         "wheelhouse": {}, "find_links": "", "deadline": 60.0}


def cluster(*links: FakeLink) -> tuple[ClusterState, Clock]:
    clock = Clock()
    state = ClusterState(clock)
    for link in links:
        state.roster.join(link)
    return state, clock


def upgradable(name: str, version: str = "2.0.0") -> FakeLink:
    return FakeLink(name, pcci_version=version, upgrades=True)


def come_back(state: ClusterState, old: FakeLink, version: str) -> FakeLink:
    """The worker restarted into C{version}: a new connection under its name."""
    state.roster.leave(old, "disconnected")
    new = upgradable(old.name, version)
    state.roster.join(new)
    return new


@pytest.mark.parametrize(("spec", "total", "size"), [("5", 20, 5), (5, 20, 5), ("20%", 20, 4), ("1%", 20, 1),
                                                     ("100%", 3, 3), ("34%", 3, 2)])
def test_a_batch_is_a_number_or_a_share_of_the_workers_at_least_one(spec: Any, total: int, size: int) -> None:
    assert batch_size(spec, total) == size


@pytest.mark.parametrize("spec", ["0", "-1", "0%", "101%", "five", "", "2.5"])
def test_a_batch_out_of_its_rules_says_what_one_is(spec: str) -> None:
    with pytest.raises(ValueError, match="a number of workers"):
        batch_size(spec, 10)


def test_workers_upgrade_a_batch_at_a_time_the_next_when_this_one_is_back() -> None:
    links = [upgradable(f"w{i}") for i in range(5)]
    state, _ = cluster(*links)
    rollout = state.upgrades.start([link.name for link in links], 2, ORDER, "alice")
    assert [link.name for link in links if link.upgrade_orders] == ["w0", "w1"]
    assert links[0].upgrade_orders == [ORDER]
    state.upgrades.status("w0", "installing", "")
    come_back(state, links[0], "2.1.0")
    # w1 is still under way: the next batch waits for it.
    assert not links[2].upgrade_orders and rollout.workers["w0"].state == "done"
    come_back(state, links[1], "2.1.0")
    assert [link.name for link in links if link.upgrade_orders] == ["w0", "w1", "w2", "w3"]
    for link in links[2:4]:
        come_back(state, link, "2.1.0")
    come_back(state, links[4], "2.1.0")
    assert rollout.ended and rollout.to_json()["state"] == "ended"
    assert rollout.to_json()["workers"]["w4"] == {"state": "done", "from": "2.0.0", "version": "2.1.0", "reason": ""}
    assert rollout.to_json()["counts"] == {"done": 5}


def test_a_rollout_goes_on_after_its_master_restarts_from_what_the_store_kept() -> None:
    links = [upgradable(f"w{i}") for i in range(3)]
    state, _ = cluster(*links)
    kept: list[dict[str, Any]] = []
    state.upgrades.change_hooks.append(lambda rollout: kept.append(json.loads(json.dumps(rollout.record()))))
    rollout = state.upgrades.start(["w0", "w1", "w2"], 1, ORDER, "alice")
    state.upgrades.status("w0", "restarting", "")
    assert kept[-1]["workers"]["w0"]["state"] == "restarting" and kept[-1]["waiting"] == ["w1", "w2"]
    # The master restarts; its workers come back to it, w0 with the new version.
    again, clock = cluster()
    again.upgrades.resume([kept[-1]])
    resumed = again.upgrades.rollouts[rollout.id]
    assert resumed.to_json()["workers"]["w0"]["state"] == "restarting"
    w0 = upgradable("w0", "2.1.0")
    again.roster.join(w0)
    assert resumed.workers["w0"].state == "done"
    w1, w2 = upgradable("w1"), upgradable("w2")
    clock.advance(again.roster.reconnect_grace - 1)
    again.roster.join(w1)
    again.roster.join(w2)
    assert not w1.upgrade_orders  # the workers had their time to come back first
    clock.advance(1)
    assert w1.upgrade_orders == [ORDER] and not w2.upgrade_orders
    come_back(again, w1, "2.1.0")
    assert w2.upgrade_orders == [ORDER]
    # Under way when the master stopped and never back: failed in its time.
    clock.advance(INSTALL_TIME + ORDER["deadline"])
    assert resumed.ended and resumed.to_json()["counts"] == {"done": 2, "failed": 1}


def test_a_worker_that_comes_back_with_its_old_version_is_still_under_way() -> None:
    link = upgradable("w0")
    state, _ = cluster(link)
    rollout = state.upgrades.start(["w0"], 1, ORDER, "alice")
    again = come_back(state, link, "2.0.0")  # a reconnection, before its restart
    assert rollout.workers["w0"].state == "sent"
    come_back(state, again, "2.1.0")
    assert rollout.workers["w0"].state == "done"


def test_workers_that_cannot_upgrade_end_at_once_saying_why_and_the_batch_moves_on() -> None:
    current = upgradable("current", "2.1.0")
    old = FakeLink("old")  # too old to say its version, or to upgrade
    hand = FakeLink("hand", pcci_version="2.0.0")  # installed by hand: no upgrades
    able = upgradable("able")
    state, _ = cluster(current, old, hand, able)
    old.pcci_version = ""
    rollout = state.upgrades.start(["current", "old", "hand", "gone", "able"], 1, ORDER, "alice")
    states = {name: (w.state, w.reason) for name, w in rollout.workers.items()}
    assert states["current"] == ("current", "")
    too_old = "it runs a pcci too old to upgrade itself: run the install line on it again"
    assert states["old"] == ("unsupported", too_old)
    assert states["hand"] == ("unsupported", "it was not installed by install.sh: run the install line on it")
    assert states["gone"] == ("offline", "not connected to a master")
    # One batch of one: the first that could upgrade was sent its order.
    assert states["able"] == ("sent", "") and able.upgrade_orders == [ORDER]
    assert not any(link.upgrade_orders for link in (current, old, hand))


def test_a_failed_or_rolled_back_upgrade_says_why_and_a_silent_one_times_out() -> None:
    links = [upgradable(f"w{i}") for i in range(3)]
    state, clock = cluster(*links)
    rollout = state.upgrades.start(["w0", "w1", "w2"], 1, ORDER, "alice")
    state.upgrades.status("w0", "failed", "pip install failed: no space left on device")
    assert rollout.workers["w0"].state == "failed" and links[1].upgrade_orders
    state.upgrades.status("w1", "rolled_back", "pcci 2.1.0 reached no master within 60 s")
    assert (rollout.workers["w1"].state, rollout.workers["w1"].reason) == (
        "rolled_back", "pcci 2.1.0 reached no master within 60 s"
    )
    state.upgrades.status("w2", "draining", "")
    clock.advance(INSTALL_TIME + 60)
    assert rollout.workers["w2"].state == "failed"
    assert rollout.workers["w2"].reason == (
        f"not back with 2.1.0 after {INSTALL_TIME + 60:.0f} s"
        " (it waits for the master to have its jobs' ends, or for a job being killed:"
        " it restarts into 2.1.0 when it may)"
    )
    assert rollout.ended and rollout.ended_at is not None
    # A late word changes nothing.
    state.upgrades.status("w2", "restarting", "")
    assert rollout.workers["w2"].state == "failed"
