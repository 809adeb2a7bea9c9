"""
A worker upgrading itself when its master says C{upgrade} (see
L{pcci.master.cluster.upgrades}).

Only a worker that C{install.sh} installed upgrades itself: it runs from
C{PREFIX/versions/<version>-<hash>}, and C{PREFIX/current} points there.
Told to upgrade, it fetches the master's wheel and checks its hash,
installs it in a venv of its own beside the running one (with a copy
of the running one's dependencies; those it lacks from the index, or
from the master's wheelhouse, each file checked against its hash),
checks the new version imports and says the version asked for, then
starts no job any more and waits until the master has every end (and a
job being killed or fed its input has ended), points C{current} at the
new version and restarts into it (the same process, C{exec}).  The jobs
running carry on across the exec (see L{pcci.worker.handover}); those
sent meanwhile are handed to the new version, which runs them.

The new version must reach a master within the order's C{deadline}:
else it points C{current} back and restarts into the old version, which
tells the master why once it is back.  C{PREFIX/upgrade.json} carries
what the restart must know.

Python 3.9: a worker imports this.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from pcci.files import sha256_of, write_atomically
from pcci.worker.handover import my_child
from pcci.worker.jobs import JobTable

log = Logger()

#: The mark install.sh leaves in its prefix.
MARK = ".pcci-install"
#: What a restart into a new version (or back) must know, in the prefix.
RECORD = "upgrade.json"

#: Where the launcher counts the starts of a version an upgrade restarted into.
STARTS = "upgrade.starts"
#: Seconds between looks at the jobs, while waiting for them to end.
DRAIN_INTERVAL = 0.5
#: What an order's version, wheel and hash look like (they name files here).
VERSION = re.compile(r"[0-9A-Za-z.+]{1,40}\Z")
WHEEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.whl\Z")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")


class UpgradeFailed(Exception):
    """An upgrade that stopped: the old version runs on."""


def installed_prefix(venv: Path = Path(sys.prefix)) -> Path | None:
    """The prefix install.sh made, when this worker runs from it; else None."""
    prefix = venv.parent.parent
    if venv.parent.name == "versions" and (prefix / MARK).is_file() and (prefix / "current").is_symlink():
        return prefix
    return None


def read_record(prefix: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((prefix / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(prefix: Path, record: dict[str, Any] | None) -> None:
    if record is None:  # and the launcher's count of its starts, if it kept one
        for name in (RECORD, STARTS):
            try:
                (prefix / name).unlink()
            except FileNotFoundError:
                pass
    else:
        write_atomically(prefix / RECORD, json.dumps(record))


def _starts(prefix: Path) -> str:
    """How many times the launcher started a new version that died (its count, as it wrote it)."""
    try:
        return (prefix / STARTS).read_text().strip() or "several"
    except OSError:
        return "several"


def point_current(prefix: Path, version_dir: str) -> None:
    """C{PREFIX/current} → C{versions/<version_dir>}, in one step."""
    link = prefix / "current"
    new = prefix / ".current.new"
    if new.is_symlink() or new.exists():
        new.unlink()
    new.symlink_to(Path("versions") / version_dir)
    os.replace(new, link)


def restart_into(reactor: Any, venv: Path, argv: list[str] = sys.argv) -> None:
    """
    Stop the daemon cleanly (its services stop, its files are written),
    then become the twistd of C{venv}, with the same arguments, in the same
    process (a supervisor sees no exit).
    """
    args = argv[1:]
    for i, arg in enumerate(args):  # the new twistd writes it again: this process's is not another's
        path = arg[len("--pidfile="):] if arg.startswith("--pidfile=") else (
            args[i + 1] if arg == "--pidfile" and i + 1 < len(args) else None
        )
        if path:
            reactor.addSystemEventTrigger("after", "shutdown", _remove, path)
    python, twistd = str(venv / "bin" / "python"), str(venv / "bin" / "twistd")
    reactor.addSystemEventTrigger("after", "shutdown", os.execv, python, [python, twistd, *args])
    reactor.callWhenRunning(reactor.stop)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def fetch(url: str, dest: Path, sha256: str) -> None:
    """Download C{url} to C{dest} and check its hash (blocking: in a thread)."""
    with urllib.request.urlopen(url, timeout=60) as answer, dest.open("wb") as out:
        shutil.copyfileobj(answer, out)
    if sha256_of(dest) != sha256:
        raise UpgradeFailed(f"{url} does not match its hash")


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def has_pip(venv: Path) -> bool:
    return (site_packages(venv) / "pip").is_dir()


def copy_packages(old: Path, new: Path) -> None:
    """
    Give C{new} (a venv of this Python) every package of C{old} but pcci's,
    and their scripts, with C{old}'s path in them made C{new}'s: an upgrade
    that keeps its dependencies then installs one wheel (blocking: in a
    thread).
    """
    here, there = site_packages(old), site_packages(new)
    for path in here.iterdir():
        if path.name == "pcci" or (path.name.startswith("pcci-") and path.name.endswith(".dist-info")):
            continue
        if path.is_dir():
            shutil.copytree(path, there / path.name, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(path, there / path.name)
    was, now = str(old).encode(), str(new).encode()
    for script in (old / "bin").iterdir():
        target = new / "bin" / script.name
        if script.is_symlink() or not script.is_file() or os.path.lexists(target):
            continue
        text = script.read_bytes()
        if text.startswith(b"#!") and was in text[:1024]:  # pip's scripts name their venv's python
            target.write_bytes(text.replace(was, now, 1))
            shutil.copymode(script, target)


def remove(directories: list[Path]) -> None:
    """Remove these directories and all they hold (blocking: in a thread)."""
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def unknown_files(directory: Path, hashes: dict[str, str], skip: str) -> list[str]:
    """The files of C{directory} whose hash is not C{hashes}' (blocking: in a thread)."""
    return [
        path.name for path in sorted(directory.iterdir())
        if path.name != skip and hashes.get(path.name) != sha256_of(path)
    ]


class Upgrader:
    """Upgrades this worker when its master asks, and after a restart, sees it through or back."""

    def __init__(
        self,
        reactor: Any,
        prefix: Path,
        jobs: JobTable,
        say: Callable[[str, str], None],
        restart: Callable[[Path], None] | None = None,
        venv: Path = Path(sys.prefix),
    ) -> None:
        self.reactor = reactor
        self.prefix = prefix
        self.jobs = jobs
        #: Tell the master how it goes: C{(state, reason)}.
        self.say = say
        self.restart = restart or (lambda venv: restart_into(reactor, venv))
        #: The version directory this worker runs from.
        self.venv = venv
        self.busy = False
        self._deadline: Any = None
        #: What to tell the master once back after going back (C{(state, reason)}).
        self.to_tell: tuple[str, str] | None = None
        #: The version this one replaced, kept to go back to.
        self._before = ""

    # Asked by the master

    def start(self, order: dict[str, Any]) -> None:
        if self.busy:
            self.say("failed", "an upgrade is under way already")
            return
        self.busy = True
        d = self._upgrade(order)

        def failed(failure: Any) -> None:
            self.busy = False
            why = failure.getErrorMessage() if failure.check(UpgradeFailed) else repr(failure.value)
            log.error("upgrade to {version} failed: {why}; this version runs on", version=order["version"], why=why)
            self.say("failed", why)

        d.addErrback(failed)

    @inlineCallbacks
    def _upgrade(self, order: dict[str, Any]) -> Any:
        version, wheel = order["version"], order["wheel"]
        if not (VERSION.match(version) and WHEEL.match(wheel) and SHA256.match(order["sha256"])):
            raise UpgradeFailed(f"not a version, wheel and hash: {version!r}, {wheel!r}, {order['sha256']!r}")
        target = f"{version}-{order['sha256'][:12]}"
        new = self.prefix / "versions" / target
        if new == self.venv:
            raise UpgradeFailed(f"{target} is the version this worker runs")
        log.info("upgrading to pcci {version}: installing it in {new}", version=version, new=new)
        self.say("installing", "")
        work = Path(tempfile.mkdtemp(prefix="pcci-upgrade-"))
        try:
            if not (new / ".complete").is_file():
                yield self._install(order, new, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        said = yield self._run(str(new / "bin" / "python"), "-c",
                               "import pcci, pcci.worker.tap; print(pcci.__version__)")
        if said.strip() != version:
            raise UpgradeFailed(f"the installed pcci says it is {said.strip()!r}, not {version}")
        self.say("draining", "")
        yield self._drained()
        waiting, running = self.jobs.hand_over()
        write_record(self.prefix, {
            "state": "restarting", "from": self.venv.name, "to": target, "version": version,
            "deadline": float(order["deadline"]), "jobs": waiting, "running": running,
        })
        point_current(self.prefix, target)
        log.info("restarting into pcci {version}", version=version)
        self.say("restarting", "")
        self.restart(new)

    @inlineCallbacks
    def _install(self, order: dict[str, Any], new: Path, work: Path) -> Any:
        shutil.rmtree(new, ignore_errors=True)
        wheel = work / order["wheel"]
        yield deferToThread(fetch, order["url"], wheel, order["sha256"])
        try:
            # The running version's packages first: they are what the new one
            # needs, unless it asks for others, which pip then adds.
            without = ["--without-pip"] if has_pip(self.venv) else []
            yield self._run(sys.executable, "-m", "venv", *without, str(new))
            yield deferToThread(copy_packages, self.venv, new)
            pip = [str(new / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
            if not order["find_links"]:
                yield self._run(*pip, "install", "--no-compile", str(wheel))
            else:
                # From the wheel's folder alone: nothing from the wheelhouse when the
                # dependencies are as they were; else what it lacks, fetched beside it.
                install = [*pip, "install", "--no-compile", "--no-index", "--find-links", str(work), str(wheel)]
                try:
                    yield self._run(*install)
                except UpgradeFailed:
                    yield self._from_wheelhouse(order, pip, wheel)
                    yield self._run(*install)
            (new / ".complete").touch()
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise

    @inlineCallbacks
    def _from_wheelhouse(self, order: dict[str, Any], pip: list[str], wheel: Path) -> Any:
        """Fetch what C{wheel} needs from the master's wheelhouse beside it, each file checked against its hash."""
        host = urlsplit(order["find_links"]).hostname or ""
        yield self._run(*pip, "download", "--dest", str(wheel.parent), "--no-index", "--find-links",
                        order["find_links"], "--trusted-host", host, str(wheel))
        unknown = yield deferToThread(unknown_files, wheel.parent, order["wheelhouse"], wheel.name)
        if unknown:
            raise UpgradeFailed(f"{unknown[0]} from the wheelhouse does not match its hash")

    def _run(self, program: str, *args: str) -> Deferred[str]:
        """Run a program to its end: its output, or L{UpgradeFailed} with its last lines."""
        d = getProcessOutputAndValue(program, args, env=dict(os.environ), reactor=self.reactor)

        def done(result: tuple[bytes, bytes, int]) -> str:
            out, err, status = result
            if status != 0:
                last = (err or out).decode("utf-8", "replace").strip().splitlines()[-3:]
                raise UpgradeFailed(f"{os.path.basename(program)} {' '.join(args[:2])} failed: {' / '.join(last)}")
            return out.decode("utf-8", "replace")

        return d.addCallback(done)

    def _drained(self) -> Deferred[None]:
        """
        Fires once every job runs on as it is (see L{pcci.worker.handover})
        and the master has every end: the jobs sent meanwhile wait, for the
        next version to run.
        """
        jobs = self.jobs
        jobs.holding = True
        if jobs.ready_to_hand_over():
            return succeed(None)
        log.info("upgrade: waiting for jobs being killed or fed to end, and for the master to have every end")
        done: Deferred[None] = Deferred()

        def look() -> None:
            if jobs.ready_to_hand_over():
                loop.stop()
                done.callback(None)

        loop = LoopingCall(look)
        loop.clock = self.reactor
        loop.start(DRAIN_INTERVAL, now=False)
        return done

    # After a restart

    def restarted(self) -> None:
        """At start: in a new version, watch the deadline; back in the old one, keep what to tell the master."""
        record = read_record(self.prefix)
        if record is None:
            return
        self._adopt(record.get("running"))
        # The launcher (PREFIX/bin/pcci-worker) went back to this version when
        # the new one kept dying before it reached a master: it never ran them.
        fell_back = record.get("state") == "restarting" and record.get("from") == self.venv.name
        back = record.get("state") == "rolled_back" and record.get("from") == self.venv.name
        handed = record.get("jobs") if record.get("to") == self.venv.name or fell_back or back else None
        for job in handed if isinstance(handed, list) else []:
            self.jobs.run(job["pool"], job["cmd"], job["options"], handed_over=True)
        if record.get("state") == "restarting" and record.get("to") == self.venv.name:
            deadline = float(record.get("deadline", 60))
            log.info("running pcci {version} after an upgrade: it must reach a master within {deadline:.0f} s",
                     version=record.get("version"), deadline=deadline)
            self._deadline = self.reactor.callLater(deadline, self._go_back, record)
            self._before = str(record.get("from", ""))
            return
        reason = str(record.get("reason") or f"pcci {record.get('version')} did not start")
        if fell_back:
            reason = f"pcci {record.get('version')} stopped before reaching a master, {_starts(self.prefix)} times"
        log.warn("back in this version after an upgrade that did not hold: {reason}", reason=reason)
        self.to_tell = ("rolled_back", reason)
        write_record(self.prefix, None)

    def _adopt(self, running: Any) -> None:
        """Carry on with the jobs the image before this one ran: still this process's children after its exec."""
        for handed in running if isinstance(running, list) else []:
            try:
                if my_child(int(handed["pid"])):
                    self.jobs.adopt(handed)
                else:
                    log.warn("pool {pool}: its process {pid} is not this worker's any more: not carried on",
                             pool=handed.get("pool"), pid=handed.get("pid"))
            except (KeyError, TypeError, ValueError, OSError) as e:
                log.warn("a job handed over that cannot be carried on: {why}", why=e)

    def welcomed(self, may_tell: bool) -> None:
        """A master welcomed this worker: an upgrade holds, or the master hears why it did not."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
            self._deadline = None
            write_record(self.prefix, None)
            log.info("the upgrade holds: this version reached a master")
            old = [v for v in (self.prefix / "versions").iterdir() if v.name not in (self.venv.name, self._before)]
            if old:
                deferToThread(remove, old).addErrback(lambda f: log.failure("cannot remove old versions", f))
        if self.to_tell is not None and may_tell:
            self.say(*self.to_tell)
            self.to_tell = None

    def _go_back(self, record: dict[str, Any]) -> None:
        self._deadline = None
        old = str(record.get("from", ""))
        if not old or not (self.prefix / "versions" / old).is_dir():
            log.error("pcci {version} reached no master, and the version before it is gone: staying",
                      version=record.get("version"))
            write_record(self.prefix, None)
            return
        reason = f"pcci {record.get('version')} reached no master within {record.get('deadline', 60):.0f} s"
        log.error("{reason}: going back to {old}", reason=reason, old=old)
        waiting, running = self.jobs.hand_over()
        write_record(self.prefix, {**record, "state": "rolled_back", "reason": reason, "jobs": waiting,
                                   "running": running})
        point_current(self.prefix, old)
        self.restart(self.prefix / "versions" / old)
