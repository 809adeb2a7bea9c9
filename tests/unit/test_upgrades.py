"""
Upgrades from the master, both halves driven by a Clock: the master's
rollouts (batches, what each worker's upgrade ends as), and the worker's
side of a restart (the deadline, going back, telling the master why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeLink
from twisted.internet.task import Clock

from pcci.master.cluster.state import ClusterState
from pcci.master.cluster.upgrades import INSTALL_TIME, batch_size
from pcci.worker.jobs import JobTable
from pcci.worker.settings import WorkerSettings
from pcci.worker.upgrade import (
    MARK,
    RECORD,
    STARTS,
    Upgrader,
    copy_packages,
    installed_prefix,
    point_current,
    site_packages,
)

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


# The worker's side

def installed(tmp_path: Path, *versions: str) -> Path:
    prefix = tmp_path / "opt"
    for version in versions:
        (prefix / "versions" / version).mkdir(parents=True)
    (prefix / MARK).touch()
    point_current(prefix, versions[0])
    return prefix


class Restarts:
    def __init__(self) -> None:
        self.into: list[Path] = []
        self.said: list[tuple[str, str]] = []


def upgrader(clock: Clock, prefix: Path, venv: str, seen: Restarts) -> Upgrader:
    jobs = JobTable(clock, WorkerSettings("w"))
    return Upgrader(clock, prefix, jobs, lambda state, reason: seen.said.append((state, reason)),
                    seen.into.append, venv=prefix / "versions" / venv)


def test_only_a_worker_run_from_an_install_sh_prefix_upgrades_itself(tmp_path: Path) -> None:
    prefix = installed(tmp_path, "2.0.0-aaa")
    assert installed_prefix(prefix / "versions" / "2.0.0-aaa") == prefix
    assert installed_prefix(tmp_path / "venv") is None
    (prefix / MARK).unlink()
    assert installed_prefix(prefix / "versions" / "2.0.0-aaa") is None


def test_a_new_version_that_reaches_a_master_in_time_holds(tmp_path: Path) -> None:
    prefix = installed(tmp_path, "2.1.0-bbb", "2.0.0-aaa")
    record = {"state": "restarting", "from": "2.0.0-aaa", "to": "2.1.0-bbb", "version": "2.1.0", "deadline": 30}
    (prefix / RECORD).write_text(json.dumps(record))
    clock, seen = Clock(), Restarts()
    new = upgrader(clock, prefix, "2.1.0-bbb", seen)
    new.restarted()
    clock.advance(29)
    new.welcomed(True)
    clock.advance(60)
    assert seen.into == [] and seen.said == []
    assert not (prefix / RECORD).exists()
    assert (prefix / "current").resolve() == prefix / "versions" / "2.1.0-bbb"


def test_a_new_version_that_reaches_no_master_goes_back_and_the_old_one_says_why(tmp_path: Path) -> None:
    prefix = installed(tmp_path, "2.1.0-bbb", "2.0.0-aaa")
    record = {"state": "restarting", "from": "2.0.0-aaa", "to": "2.1.0-bbb", "version": "2.1.0", "deadline": 30}
    (prefix / RECORD).write_text(json.dumps(record))
    clock, seen = Clock(), Restarts()
    upgrader(clock, prefix, "2.1.0-bbb", seen).restarted()
    clock.advance(30)
    assert seen.into == [prefix / "versions" / "2.0.0-aaa"]
    assert (prefix / "current").resolve() == prefix / "versions" / "2.0.0-aaa"
    # Back in the old version: it tells the first master that may hear it.
    old = upgrader(clock, prefix, "2.0.0-aaa", seen)
    old.restarted()
    assert not (prefix / RECORD).exists()
    old.welcomed(False)  # a master too old to hear it
    assert seen.said == []
    old.welcomed(True)
    old.welcomed(True)
    assert seen.said == [("rolled_back", "pcci 2.1.0 reached no master within 30 s")]


def test_back_in_the_old_version_by_the_launcher_it_runs_the_jobs_handed_over_and_says_why(tmp_path: Path) -> None:
    """The new version died at every start: PREFIX/bin/pcci-worker pointed current back, the record untouched."""
    prefix = installed(tmp_path, "2.0.0-aaa", "2.1.0-bbb")
    handed = [{"pool": "p1", "cmd": "true", "options": {}}]
    record = {"state": "restarting", "from": "2.0.0-aaa", "to": "2.1.0-bbb", "version": "2.1.0", "deadline": 30,
              "jobs": handed}
    (prefix / RECORD).write_text(json.dumps(record))
    (prefix / STARTS).write_text("4\n")
    clock, seen = Clock(), Restarts()
    old = upgrader(clock, prefix, "2.0.0-aaa", seen)
    old.jobs.holding = True  # it would start it: not in a unit test
    old.restarted()
    assert list(old.jobs.held) == ["p1"]
    assert not (prefix / RECORD).exists() and not (prefix / STARTS).exists()
    old.welcomed(True)
    clock.advance(60)
    assert seen.into == []  # no deadline: it is the old version
    assert seen.said == [("rolled_back", "pcci 2.1.0 stopped before reaching a master, 4 times")]


@pytest.mark.parametrize("field", [{"version": "../../etc"}, {"wheel": "../pcci.whl"}, {"sha256": "beef"}])
def test_an_order_that_would_name_files_elsewhere_fails_before_anything_is_made(tmp_path: Path, field: dict) -> None:
    prefix = installed(tmp_path, "2.0.0-aaa")
    seen = Restarts()
    upgrader(Clock(), prefix, "2.0.0-aaa", seen).start({**ORDER, **field})
    assert seen.said[-1][0] == "failed" and seen.said[-1][1].startswith("not a version, wheel and hash")
    assert [v.name for v in (prefix / "versions").iterdir()] == ["2.0.0-aaa"] and seen.into == []


def test_a_worker_about_to_restart_starts_no_job_and_hands_those_that_wait_to_its_next_version(
    tmp_path: Path,
) -> None:
    clock = Clock()
    jobs = JobTable(clock, WorkerSettings("w", max_jobs=4))
    jobs.holding = True
    jobs.run("p1", "true", {"env": {"A": "1"}})
    assert jobs.ready_to_hand_over() and not jobs.running
    handed, running = jobs.hand_over()
    assert handed == [{"pool": "p1", "cmd": "true", "options": {"env": {"A": "1"}}}] and running == []
    assert not jobs.held and not jobs.queue
    # The next version runs it, though it was sent to the one before.
    prefix = installed(tmp_path, "2.1.0-bbb", "2.0.0-aaa")
    record = {"state": "restarting", "from": "2.0.0-aaa", "to": "2.1.0-bbb", "version": "2.1.0", "deadline": 30,
              "jobs": handed}
    (prefix / RECORD).write_text(json.dumps(record))
    seen = Restarts()
    new = upgrader(clock, prefix, "2.1.0-bbb", seen)
    new.jobs.holding = True  # it would start it: not in a unit test
    new.restarted()
    held = new.jobs.held["p1"]
    assert (held.cmd, held.options, held.attached) == ("true", {"env": {"A": "1"}}, False)


def test_a_new_version_starts_with_the_running_ones_packages_and_scripts_but_not_its_pcci(tmp_path: Path) -> None:
    old, new = tmp_path / "versions" / "2.0.0-a", tmp_path / "versions" / "2.1.0-b"
    for venv in (old, new):
        site_packages(venv).mkdir(parents=True)
        (venv / "bin").mkdir()
    for package in ("twisted", "twisted-24.1.dist-info", "pcci", "pcci-2.0.0.dist-info"):
        (site_packages(old) / package).mkdir()
        (site_packages(old) / package / "a.py").write_text(package)
    (site_packages(old) / "zope.interface-nspkg.pth").write_text("import x")
    (old / "bin" / "twistd").write_text(f"#!{old}/bin/python\nfrom twisted.scripts.twistd import run\n")
    (old / "bin" / "twistd").chmod(0o755)
    (old / "bin" / "activate").write_text(f'VIRTUAL_ENV="{old}"\n')
    (new / "bin" / "activate").write_text(f'VIRTUAL_ENV="{new}"\n')
    (old / "bin" / "python").symlink_to("/usr/bin/python3")
    (old / "bin" / "README").write_text("no script")

    copy_packages(old, new)

    assert sorted(path.name for path in site_packages(new).iterdir()) == [
        "twisted", "twisted-24.1.dist-info", "zope.interface-nspkg.pth"]
    assert (site_packages(new) / "twisted" / "a.py").read_text() == "twisted"
    twistd = new / "bin" / "twistd"
    assert twistd.read_text().splitlines()[0] == f"#!{new}/bin/python"
    assert twistd.stat().st_mode & 0o777 == 0o755
    assert (new / "bin" / "activate").read_text() == f'VIRTUAL_ENV="{new}"\n'  # the new venv's own, kept
    assert sorted(path.name for path in (new / "bin").iterdir()) == ["activate", "twistd"]
