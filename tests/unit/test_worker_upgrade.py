"""
The worker's side of an upgrade from the master: which workers upgrade
themselves, the new version's venv, and a restart (the deadline, going
back, telling the master why), driven by a Clock.

Python 3.9: the worker's tests run there too (C{.ci/worker-python3.9}).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock

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
