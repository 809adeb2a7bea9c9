"""
A pool request taken to a started pool, the one way every pool of a
command starts: the body checked (L{jobspec}), the token's grants applied
and the workers selected within its scope (L{pcci.master.access.permits}),
then submitted (L{dispatch}).  The REST API's C{POST /job} and the
scheduler's runs both go through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from pcci.auth import APIToken
from pcci.master.access import permits
from pcci.master.cluster.dispatch import Dispatcher, PoolOrder
from pcci.master.cluster.jobspec import Submission, parse_submission
from pcci.master.cluster.model import Pool
from pcci.master.cluster.roster import Roster
from pcci.master.webhooks.outbound import AddressPolicy


@dataclass(frozen=True)
class LaunchLimits:
    """The bounds of a request: its command's length, its workers' number, where it may notify."""

    max_command: int
    max_workers: int
    notify_policy: AddressPolicy = AddressPolicy()


@dataclass(frozen=True)
class Launch:
    """A request checked and permitted, with the workers it selects: ready to start."""

    request: Submission
    workers: list[str]


class Launcher:
    """Checks, permits, selects and submits pool requests."""

    def __init__(self, roster: Roster, dispatcher: Dispatcher, limits: LaunchLimits) -> None:
        self.roster = roster
        self.dispatcher = dispatcher
        self.limits = limits

    def prepare(self, token: APIToken | None, body: Any) -> Launch:
        """
        Check C{body} as C{token}'s request (None: no auth) and select its
        workers.

        @raise SpecError: a field is not what it must be.
        @raise permits.Forbidden: the token may not run this, or there.
        @raise TargetError: the targets select no worker, or unknown ones.
        """
        limits = self.limits
        asked = parse_submission(body, limits.max_command, limits.max_workers)
        permits.check_run(token, asked.cmd, asked.options, asked.notify, limits.notify_policy)
        workers = permits.select_workers(
            token, self.roster, asked.workers, asked.labels, asked.exclude, limits.max_workers,
            asked.wait_offline is not None, asked.query,
        )
        return Launch(asked, workers)

    def start(self, launch: Launch, submitted_by: str | None, schedule: str | None = None) -> Deferred[Pool]:
        """Submit a prepared request; fires with the pool once stored (see L{Dispatcher.submit})."""
        asked = launch.request
        order = PoolOrder(
            asked.cmd, asked.options, asked.rollout, submitted_by,
            wait_offline=asked.wait_offline, schedule=schedule, notify=asked.notify, notify_on=asked.notify_on,
        )
        return self.dispatcher.submit(order, launch.workers)
