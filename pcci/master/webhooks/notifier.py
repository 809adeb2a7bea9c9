"""
Webhooks: each pool's end, told to URLs that asked for it.

A master's C{--webhook} URLs hear of every pool (or only the failed, as
C{--webhook-on} says); a pool's (or its schedule's) C{notify} URLs of that
pool.  Each delivery is a C{POST} of JSON signed with the master's webhook
secret (C{X-Pcci-Signature: sha256=<HMAC-SHA256 of the body>}), queued in
the store first: it survives a restart, is tried again with backoff for
an hour on errors and timeouts, and is dropped, logged and counted past
that.  Deliveries run beside everything else, a few at a time, each with a
timeout: a dead endpoint delays no pool, no answer and no other endpoint.

A pool's C{notify} deliveries are a user's, not the master's: they are
signed with a key of their own (L{notify_key}), so a receiver of the
master's hooks never takes one for its own; they say whose they are
(C{X-Pcci-Requested-By}); they go in a lane of their own, so the master's
hooks never wait behind them; and each token has at most
L{PER_OWNER_IN_FLIGHT} on their way and L{PER_OWNER_QUEUED} waiting.
Where they may go is L{pcci.master.webhooks.outbound}'s to say.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.master.cluster.model import OK, Pool, rfc3339
from pcci.master.store.base import Delivery, DeliveryTable
from pcci.master.webhooks.outbound import Post

log = Logger()

#: Seconds a delivery may take, connecting included.
TIMEOUT = 5.0

#: Seconds a delivery is tried for before it is dropped.
KEEP_TRYING = 3600.0

#: Seconds before the first retry; each next one waits twice as long, at most L{MAX_BACKOFF}.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 600.0

#: Deliveries on their way at once, in each lane (the master's hooks, pools' notify URLs),
#: and how often the queue is looked at.
IN_FLIGHT = 16
POLL_INTERVAL = 1.0

#: A token's pools' deliveries on their way at once, and waiting, at most.
PER_OWNER_IN_FLIGHT = 4
PER_OWNER_QUEUED = 100

#: Lines of a failed job's output a delivery carries, with C{--webhook-output}.
OUTPUT_LINES = 20

FORMATS = ("json", "slack")


def signature(secret: bytes, body: bytes) -> str:
    """The C{X-Pcci-Signature} header of C{body}."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def notify_key(secret: bytes) -> bytes:
    """The key pools' C{notify} deliveries are signed with: made from the webhook secret, never it."""
    return hmac.new(secret, b"pcci notify", hashlib.sha256).hexdigest().encode()


def pool_message(pool: Pool, link: str | None, output: bool) -> dict[str, Any]:
    """What a delivery tells of a pool that ended: never its output, unless C{output}."""
    workers: dict[str, list[str]] = {}
    for job in pool.jobs.values():
        if job.state != OK:
            workers.setdefault(job.state, []).append(job.worker_id)
    message: dict[str, Any] = {
        "event": "pool_ended",
        "pool": pool.id,
        "cmd": pool.cmd,
        "state": pool.state,
        "counts": pool.counts(),
        "workers": workers,
        "submitted_by": pool.submitted_by,
        "schedule": pool.schedule,
        "retry_of": pool.retry_of,
        "started_at": rfc3339(pool.started_at),
        "ended_at": rfc3339(pool.ended_at),
        "link": link,
    }
    if pool.stopped:  # its rollout stopped it: its canary, its failure budget
        message["stopped"] = pool.stopped
    if output:
        message["output"] = {
            job.worker_id: "".join(job.output.text().splitlines(keepends=True)[-OUTPUT_LINES:])
            for job in pool.jobs.values()
            if job.state != OK
        }
    return message


def slack_message(message: dict[str, Any]) -> dict[str, str]:
    """The same, as one readable Slack (or Mattermost) message."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(message["counts"].items()))
    head = f"pcci pool {message['state'].upper()}: `{message['cmd']}` ({counts})"
    if message["schedule"]:
        head += f", schedule {message['schedule']}"
    lines = [head]
    if message.get("stopped"):
        lines.append(f"stopped: {message['stopped']}")
    for state, names in sorted(message["workers"].items()):
        lines.append(f"{state}: {', '.join(names)}")
    if message["link"]:
        lines.append(f"<{message['link']}|pool {message['pool']}>")
    for worker, tail in (message.get("output") or {}).items():
        lines.append(f"{worker}:\n```\n{tail}\n```")
    return {"text": "\n".join(lines)}


@dataclass(frozen=True)
class Hook:
    """A URL that hears of pools' ends: of every one (C{ended}) or of the failed ones."""

    url: str
    on: str = "failed"

    def wants(self, pool: Pool) -> bool:
        return self.on == "ended" or pool.state != OK


@dataclass(frozen=True)
class Hooks:
    """The master's own hooks and how deliveries are made (its C{--webhook*} options)."""

    #: What signs the deliveries (see L{signature}).
    secret: bytes
    hooks: tuple[Hook, ...] = ()
    #: C{json}, or C{slack} (a message Slack shows).
    form: str = "json"
    #: Whether a failed job's last lines of output go along.
    output: bool = False


class _Lane:
    """Deliveries of one kind on their way: the master's hooks', or pools' (by owner)."""

    def __init__(self, owned: bool) -> None:
        self.owned = owned
        self.in_flight = 0
        self.pumping = False
        self.by_owner: dict[str, int] = {}

    def busy(self) -> tuple[str, ...]:
        return tuple(owner for owner, n in self.by_owner.items() if n >= PER_OWNER_IN_FLIGHT)

    def took(self, delivery: Delivery, n: int) -> None:
        self.in_flight += n
        if self.owned:
            owner = delivery.owner or ""
            count = self.by_owner.get(owner, 0) + n
            if count:
                self.by_owner[owner] = count
            else:
                del self.by_owner[owner]


class Notifier:
    """Queues a delivery per hook as pools end, and delivers the queue."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        store: DeliveryTable,
        post: Post,
        settings: Hooks,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.store = store
        self.post = post
        self.settings = settings
        self.notify_secret = notify_key(settings.secret)
        #: A pool's page in the dashboard, once the master knows its address.
        self.link: Callable[[str], str | None] = lambda pool_id: None
        #: Called with each of the master's hooks' deliveries' result: sent,
        #: retried, dropped (for metrics; pools' own are not counted there, or
        #: a token could learn from them which addresses answer).
        self.on_result: Callable[[str], None] = lambda result: None
        self._lanes = (_Lane(owned=False), _Lane(owned=True))
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.pump)
        self._loop.clock = self.clock
        self._loop.start(POLL_INTERVAL, now=True).addErrback(
            lambda f: log.failure("webhook deliveries stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    # Queueing

    def pool_ended(self, pool: Pool) -> None:
        """Queue a delivery for each hook that wants this pool's end."""
        hooks = [hook for hook in self.settings.hooks if hook.wants(pool)]
        notify = [url for url in pool.notify if Hook(url, pool.notify_on).wants(pool)]
        if not hooks and not notify:
            return
        message: dict[str, Any] = pool_message(pool, self.link(pool.id), self.settings.output)
        now = self.wall()
        if hooks:
            body = self._body(message, "webhook")
            for hook in hooks:
                self._queue(hook.url, body, now, None)
        if notify:
            owner = pool.submitted_by or ""
            body = self._body(message, "notify")

            def queue(waiting: int) -> None:
                room = PER_OWNER_QUEUED - waiting
                for url in notify[max(room, 0):]:
                    log.warn("webhook to {url} for {owner}'s pool {pool} not queued: {n} wait already",
                             url=url, owner=owner or "anyone", pool=pool.id, n=waiting)
                for url in notify[:max(room, 0)]:
                    self._queue(url, body, now, owner)

            self.store.queued(owner).addCallbacks(
                queue, lambda f: log.error("webhook queue unreadable: {why}", why=f.getErrorMessage())
            )

    def _body(self, message: dict[str, Any], source: str) -> bytes:
        told = {**message, "source": source}
        return json.dumps(slack_message(told) if self.settings.form == "slack" else told).encode()

    def _queue(self, url: str, body: bytes, now: float, owner: str | None) -> None:
        self.store.add(url, body, now, owner).addCallbacks(
            lambda _: self.pump(),
            lambda f: log.error("webhook to {url} not queued: {why}", url=url, why=f.getErrorMessage()),
        )

    # Delivering

    def pump(self) -> None:
        """Send what is due in each lane, as many as its room in flight allows."""
        for lane in self._lanes:
            self._pump(lane)

    def _pump(self, lane: _Lane) -> None:
        room = IN_FLIGHT - lane.in_flight
        if lane.pumping or room <= 0:
            return
        lane.pumping = True

        def send(due: list[Delivery]) -> None:
            for delivery in due:
                if lane.owned and lane.by_owner.get(delivery.owner or "", 0) >= PER_OWNER_IN_FLIGHT:
                    # Its owner's share is on its way: back in the queue, due now.
                    self.store.later(delivery.id, delivery.attempts, self.wall()).addErrback(
                        lambda f: log.error("webhook queue unwritable: {why}", why=f.getErrorMessage())
                    )
                else:
                    self._send(lane, delivery)

        def done(result: Any) -> None:
            lane.pumping = False

        d = self.store.due(self.wall(), TIMEOUT * 6, room, lane.owned, lane.busy())
        d.addCallback(send)
        d.addErrback(lambda f: log.error("webhook queue unreadable: {why}", why=f.getErrorMessage()))
        d.addBoth(done)

    def _send(self, lane: _Lane, delivery: Delivery) -> None:
        lane.took(delivery, 1)
        owned = delivery.owner is not None
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"pcci-webhook"],
            b"X-Pcci-Signature": [
                signature(self.notify_secret if owned else self.settings.secret, delivery.body).encode()
            ],
            b"X-Pcci-Delivery": [str(delivery.id).encode()],
            b"X-Pcci-Source": [b"notify" if owned else b"webhook"],
        }
        if owned:
            headers[b"X-Pcci-Requested-By"] = [(delivery.owner or "anyone").encode()]
        # A URL the client cannot even use fails as an answer would.
        d: Deferred[Any] = maybeDeferred(self.post, delivery.url, delivery.body, headers, owned)
        d.addTimeout(TIMEOUT, self.clock)

        def answered(status: int) -> Deferred[None]:
            if 200 <= status < 300:
                self._counted(delivery, "sent")
                return self.store.done(delivery.id)
            return self._failed(delivery, f"HTTP {status}")

        def failed(failure: Failure) -> Deferred[None]:
            return self._failed(delivery, failure.getErrorMessage() or repr(failure.value))

        def finished(_: Any) -> None:
            lane.took(delivery, -1)

        told: Deferred[None] = d.addCallbacks(answered, failed)
        told.addErrback(lambda f: log.error("webhook bookkeeping failed: {why}", why=f.getErrorMessage()))
        told.addBoth(finished)

    def _counted(self, delivery: Delivery, result: str) -> None:
        if delivery.owner is None:
            self.on_result(result)

    def _failed(self, delivery: Delivery, why: str) -> Deferred[None]:
        attempts = delivery.attempts + 1
        wait = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempts - 1))
        now = self.wall()
        if now + wait > delivery.created_at + KEEP_TRYING:
            log.error("webhook to {url} dropped after {n} tries over an hour: {why}",
                      url=delivery.url, n=attempts, why=why)
            self._counted(delivery, "dropped")
            return self.store.done(delivery.id)
        log.warn("webhook to {url} failed ({why}): trying again in {wait:g} s",
                 url=delivery.url, why=why, wait=wait)
        self._counted(delivery, "retried")
        return self.store.later(delivery.id, attempts, now + wait)
