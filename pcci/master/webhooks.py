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
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pcci.master.model import OK, Pool, rfc3339
from pcci.master.store import Delivery

log = Logger()

#: Seconds a delivery may take, connecting included.
TIMEOUT = 5.0

#: Seconds a delivery is tried for before it is dropped.
KEEP_TRYING = 3600.0

#: Seconds before the first retry; each next one waits twice as long, at most L{MAX_BACKOFF}.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 600.0

#: Deliveries on their way at once, and how often the queue is looked at.
IN_FLIGHT = 16
POLL_INTERVAL = 1.0

#: Lines of a failed job's output a delivery carries, with C{--webhook-output}.
OUTPUT_LINES = 20

FORMATS = ("json", "slack")


class DeliveryStore(Protocol):
    """What deliveries need of the master's store (see L{pcci.master.store})."""

    def add_delivery(self, url: str, body: bytes, now: float) -> Deferred[None]: ...

    def due_deliveries(self, now: float, lease: float, most: int) -> Deferred[list[Delivery]]:
        """Up to C{most} deliveries due now, each held for C{lease} seconds (no other master takes it)."""

    def delivery_done(self, delivery_id: int) -> Deferred[None]: ...

    def delivery_later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]: ...


def signature(secret: bytes, body: bytes) -> str:
    """The C{X-Pcci-Signature} header of C{body}."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


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


#: Sends C{body} to C{url} with C{headers}; fires with the answer's status.
Post = Callable[[str, bytes, dict[bytes, list[bytes]]], Deferred[int]]


class Notifier:
    """Queues a delivery per hook as pools end, and delivers the queue."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        store: DeliveryStore,
        post: Post,
        secret: bytes,
        hooks: tuple[Hook, ...] = (),
        form: str = "json",
        output: bool = False,
        link: Callable[[str], str | None] = lambda pool_id: None,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.store = store
        self.post = post
        self.secret = secret
        self.hooks = list(hooks)
        self.form = form
        self.output = output
        self.link = link
        #: Called with each delivery's result: sent, retried, dropped (for metrics).
        self.on_result: Callable[[str], None] = lambda result: None
        self._in_flight = 0
        self._pumping = False
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
        hooks = self.hooks + [Hook(url, pool.notify_on) for url in pool.notify]
        wanted = [hook for hook in hooks if hook.wants(pool)]
        if not wanted:
            return
        message: dict[str, Any] = pool_message(pool, self.link(pool.id), self.output)
        if self.form == "slack":
            message = slack_message(message)
        body = json.dumps(message).encode()
        now = self.wall()
        for hook in wanted:
            self.store.add_delivery(hook.url, body, now).addCallbacks(
                lambda _: self.pump(),
                lambda f, url=hook.url: log.error("webhook to {url} not queued: {why}", url=url,
                                                  why=f.getErrorMessage()),
            )

    # Delivering

    def pump(self) -> Deferred[None] | None:
        """Send what is due, as many as the room in flight allows."""
        room = IN_FLIGHT - self._in_flight
        if self._pumping or room <= 0:
            return None
        self._pumping = True

        def send(due: list[Delivery]) -> None:
            for delivery in due:
                self._send(delivery)

        def done(result: Any) -> None:
            self._pumping = False

        d = self.store.due_deliveries(self.wall(), TIMEOUT * 6, room)
        d.addCallback(send)
        d.addErrback(lambda f: log.error("webhook queue unreadable: {why}", why=f.getErrorMessage()))
        return d.addBoth(done)

    def _send(self, delivery: Delivery) -> None:
        self._in_flight += 1
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"pcci-webhook"],
            b"X-Pcci-Signature": [signature(self.secret, delivery.body).encode()],
            b"X-Pcci-Delivery": [str(delivery.id).encode()],
        }
        # A URL the client cannot even use fails as an answer would.
        d = maybeDeferred(self.post, delivery.url, delivery.body, headers)
        d.addTimeout(TIMEOUT, self.clock)

        def answered(status: int) -> Deferred[None]:
            if 200 <= status < 300:
                self.on_result("sent")
                return self.store.delivery_done(delivery.id)
            return self._failed(delivery, f"HTTP {status}")

        def failed(failure: Any) -> Deferred[None]:
            return self._failed(delivery, failure.getErrorMessage() or failure.type.__name__)

        def finished(_: Any) -> None:
            self._in_flight -= 1

        d.addCallbacks(answered, failed)
        d.addErrback(lambda f: log.error("webhook bookkeeping failed: {why}", why=f.getErrorMessage()))
        d.addBoth(finished)

    def _failed(self, delivery: Delivery, why: str) -> Deferred[None]:
        attempts = delivery.attempts + 1
        wait = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempts - 1))
        now = self.wall()
        if now + wait > delivery.created_at + KEEP_TRYING:
            log.error("webhook to {url} dropped after {n} tries over an hour: {why}",
                      url=delivery.url, n=attempts, why=why)
            self.on_result("dropped")
            return self.store.delivery_done(delivery.id)
        log.warn("webhook to {url} failed ({why}): trying again in {wait:g} s",
                 url=delivery.url, why=why, wait=wait)
        self.on_result("retried")
        return self.store.delivery_later(delivery.id, attempts, now + wait)


def treq_post(reactor: Any) -> Post:
    """L{Post} with treq, on connections of its own (none kept between deliveries)."""
    import treq
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)

    def post(url: str, body: bytes, headers: dict[bytes, list[bytes]]) -> Deferred[int]:
        d = treq.post(url, data=body, headers=headers, pool=pool, reactor=reactor, timeout=TIMEOUT)

        def read(response: Any) -> Deferred[int]:
            return treq.content(response).addCallback(lambda _: response.code)

        return d.addCallback(read)

    return post
