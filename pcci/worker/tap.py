"""C{twistd pcci-worker}: run the master's commands on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from pcci import auth, daemon
from pcci.labels import default_labels, parse_label
from pcci.options import positive_int, seconds
from pcci.wire import HEARTBEAT_RANGE, NAME_RULE, VALID_NAME
from pcci.worker.connection import DEFAULT_HEARTBEAT, default_name
from pcci.worker.service import WorkerService


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a pcci worker: keep a connection to the master and run its jobs. "
        "It needs the cluster secret of the master (its <state-dir>/cluster-secret)."
    )
    optFlags = [
        ["no-auth", None, "Join a master started with --no-auth, trusting whichever master answers."],
    ]
    optParameters = [
        ["name", None, None, "Name of this worker (default: the hostname)."],
        ["secret-file", None, None, "The cluster secret (default: ~/.pcci/cluster-secret, if there)."],
        ["kill-grace", None, 5.0, "Seconds from SIGTERM to SIGKILL when a job is killed.", seconds],
        ["heartbeat", None, DEFAULT_HEARTBEAT, "Seconds between heartbeats (health figures) to the master.", seconds],
        ["disk", None, "/", "The filesystem whose use heartbeats report."],
        ["max-jobs", None, None, "Jobs run at once; the rest wait in order (default: 4 per CPU).", positive_int],
        ["state-dir", None, auth.DEFAULT_STATE_DIR, "Where this worker keeps its journal of running jobs, and the "
            "jobs it was sent."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.labels = default_labels()
        self.masters: list[str] = []

    def opt_master(self, endpoint: str) -> None:
        """Client endpoint of a master's worker port (default tcp:localhost:7000); repeat it for several masters."""
        self.masters.append(endpoint)

    def opt_label(self, text: str) -> None:
        """A label for targeting, KEY or KEY=VALUE (repeatable); os= and arch= are automatic."""
        try:
            key, value = parse_label(text)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.labels[key] = value

    def postOptions(self) -> None:
        self.masters = self.masters or ["tcp:localhost:7000"]
        low, high = HEARTBEAT_RANGE
        if not low <= self["heartbeat"] <= high:
            raise usage.UsageError(f"--heartbeat is between {low} and {high} seconds")
        if not self["name"]:
            self["name"] = default_name()
        if not VALID_NAME.match(self["name"]):
            raise usage.UsageError(
                f"invalid worker name {self['name']!r}: a name is {NAME_RULE}"
                + ("" if self["name"] != default_name() else "; choose one with --name")
            )
        state_dir = Path(self["state-dir"]).expanduser()
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"cannot use --state-dir {state_dir}: {e}") from None
        self.journal = state_dir / f"worker-{self['name']}.jobs.json"
        self.secret: bytes | None = None
        if self["no-auth"]:
            return
        path = self["secret-file"]
        if path is None:
            default = Path(auth.DEFAULT_STATE_DIR, auth.CLUSTER_SECRET_FILE).expanduser()
            if not default.exists():
                raise usage.UsageError(
                    "a worker needs the cluster secret: --secret-file PATH (a copy of"
                    " the master's <state-dir>/cluster-secret), or --no-auth to join a"
                    " master started with --no-auth"
                )
            path = str(default)
        try:
            self.secret = auth.read_secret(path)
        except auth.AuthConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    daemon.prepare(reactor)

    def dismissed(reason: str) -> None:
        # Another worker holds this name: stop for good instead of flapping.
        reactor.stop()

    return WorkerService(
        reactor,
        [clientFromString(reactor, master) for master in options.masters],
        options["name"],
        options.secret,
        options["kill-grace"],
        on_dismissed=dismissed,
        heartbeat=options["heartbeat"],
        disk=options["disk"],
        max_jobs=options["max-jobs"],
        journal=options.journal,
        labels=options.labels,
    )
