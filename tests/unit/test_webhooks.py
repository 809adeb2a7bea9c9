"""Webhook deliveries over a Clock: the message, the signature, retries with backoff, the drop after an hour."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from pcci.master.cluster.model import Job, Pool
from pcci.master.store.base import Delivery
from pcci.master.webhooks.notifier import (
    KEEP_TRYING,
    PER_OWNER_IN_FLIGHT,
    PER_OWNER_QUEUED,
    Hook,
    Hooks,
    Notifier,
    notify_key,
    pool_message,
    signature,
    slack_message,
)
from pcci.output import OutputBuffer

SECRET = b"s" * 32


class Queue:
    """The store's delivery queue, in memory."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def add(self, url: str, body: bytes, now: float, owner: str | None = None) -> Deferred[None]:
        self.added = getattr(self, "added", 0) + 1
        self.rows[self.added] = {
            "url": url, "body": body, "created": now, "attempts": 0, "next": now, "owner": owner,
        }
        return succeed(None)

    def due(
        self, now: float, lease: float, most: int, owned: bool = False, busy: tuple[str, ...] = ()
    ) -> Deferred[list[Delivery]]:
        due = [
            i for i, row in sorted(self.rows.items(), key=lambda item: item[1]["next"])
            if row["next"] <= now and (row["owner"] is not None) == owned and row["owner"] not in busy
        ][:most]
        for i in due:
            self.rows[i]["next"] = now + lease
        return succeed([Delivery(i, self.rows[i]["url"], self.rows[i]["body"], self.rows[i]["attempts"],
                                 self.rows[i]["created"], self.rows[i]["owner"]) for i in due])

    def queued(self, owner: str) -> Deferred[int]:
        return succeed(sum(row["owner"] == owner for row in self.rows.values()))

    def done(self, delivery_id: int) -> Deferred[None]:
        del self.rows[delivery_id]
        return succeed(None)

    def later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]:
        self.rows[delivery_id].update(attempts=attempts, next=at)
        return succeed(None)


def failed_pool() -> Pool:
    pool = Pool(id="p1", cmd="make test", started_at=100.0, ended_at=160.0, submitted_by="ci")
    for name, status, state, text in (
        ("a", 0, "ok", "fine\n"),
        ("b", 2, "failed", "".join(f"line {i}\n" for i in range(30))),
    ):
        job = Job("p1", name, pool.cmd, OutputBuffer(10_000), status=status, state=state)
        job.output.append(text)
        pool.jobs[name] = job
    return pool


def test_the_message_tells_the_pool_but_not_its_output() -> None:
    message = pool_message(failed_pool(), "http://m/#/pools/p1", output=False)
    assert message["state"] == "failed" and message["workers"] == {"failed": ["b"]}
    assert message["counts"] == {"ok": 1, "failed": 1} and "output" not in message
    with_output = pool_message(failed_pool(), None, output=True)
    assert with_output["output"] == {"b": "".join(f"line {i}\n" for i in range(10, 30))}
    assert slack_message(message)["text"].splitlines()[:2] == [
        "pcci pool FAILED: `make test` (1 failed, 1 ok)",
        "failed: b",
    ]


def test_a_delivery_is_signed_retried_with_backoff_then_dropped_after_an_hour() -> None:
    clock, queue, sent = Clock(), Queue(), []
    answers = iter([fail(ConnectionRefusedError()), succeed(500)])

    def post(url: str, body: bytes, headers: dict[bytes, list[bytes]], user: bool) -> Deferred[int]:
        sent.append((clock.seconds(), url, body, headers))
        return next(answers, fail(ConnectionRefusedError()))

    notifier = Notifier(clock, clock.seconds, queue, post, Hooks(SECRET, (Hook("http://h/1"),)))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.start()
    notifier.pool_ended(failed_pool())
    ((at, url, body, headers),) = sent
    assert (
        headers[b"X-Pcci-Signature"]
        == [("sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()).encode()]
        == [signature(SECRET, body).encode()]
    )
    assert json.loads(body)["pool"] == "p1"
    clock.pump([1.0] * int(KEEP_TRYING + 60))
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:])]
    assert gaps[:4] == [5.0, 10.0, 20.0, 40.0] and max(gaps) == 600.0
    assert results[-1] == "dropped" and set(results[:-1]) == {"retried"}
    assert queue.rows == {}


def test_an_ok_pool_is_told_only_to_hooks_of_every_end() -> None:
    clock, queue, told = Clock(), Queue(), []

    def post(url: str, body: bytes, headers: Any, user: bool) -> Deferred[int]:
        told.append(url)
        return succeed(200)

    notifier = Notifier(
        clock, clock.seconds, queue, post, Hooks(SECRET, (Hook("http://failed-only"), Hook("http://every", "ended")))
    )
    pool = failed_pool()
    pool.jobs["b"].state = "ok"
    pool.notify, pool.notify_on = ["http://mine"], "ended"
    notifier.pool_ended(pool)
    assert sorted(told) == ["http://every", "http://mine"] and queue.rows == {}


def test_a_hanging_endpoint_times_out_and_holds_no_other() -> None:
    clock, queue, calls = Clock(), Queue(), []

    def post(url: str, body: bytes, headers: Any, user: bool) -> Deferred[int]:
        calls.append(url)
        return Deferred() if url == "http://hangs" else succeed(200)

    notifier = Notifier(clock, clock.seconds, queue, post, Hooks(SECRET, (Hook("http://hangs"), Hook("http://fine"))))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.pool_ended(failed_pool())
    assert calls == ["http://hangs", "http://fine"] and results == ["sent"]
    clock.advance(5.0)
    assert results == ["sent", "retried"]


def test_a_url_the_client_cannot_use_is_tried_again_like_a_failed_answer() -> None:
    clock, queue = Clock(), Queue()

    def post(url: str, body: bytes, headers: Any, user: bool) -> Deferred[int]:
        raise ValueError(f"unsupported URL {url}")  # before any Deferred, as treq may

    notifier = Notifier(clock, clock.seconds, queue, post, Hooks(SECRET, (Hook("nonsense://x"),)))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.pool_ended(failed_pool())
    assert results == ["retried"] and queue.rows[1]["attempts"] == 1


def notifying_pool(pool_id: str, owner: str | None, urls: list[str]) -> Pool:
    pool = failed_pool()
    pool.id, pool.submitted_by, pool.notify = pool_id, owner, urls
    return pool


def test_a_pool_s_notify_is_signed_with_its_own_key_says_whose_and_is_not_counted() -> None:
    clock, queue, sent = Clock(), Queue(), []

    def post(url: str, body: bytes, headers: dict[bytes, list[bytes]], user: bool) -> Deferred[int]:
        sent.append((url, body, headers, user))
        return succeed(200)

    notifier = Notifier(clock, clock.seconds, queue, post, Hooks(SECRET, (Hook("http://admin"),)))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.pool_ended(notifying_pool("p1", "mallory", ["http://mine"]))
    (hook, mine) = sorted(sent)
    assert hook[0] == "http://admin" and not hook[3] and hook[2][b"X-Pcci-Source"] == [b"webhook"]
    assert hook[2][b"X-Pcci-Signature"] == [signature(SECRET, hook[1]).encode()]
    assert json.loads(hook[1])["source"] == "webhook"
    # The user's: checked as a user's URL, never signed as the master's own.
    assert mine[3] and mine[2][b"X-Pcci-Source"] == [b"notify"]
    assert mine[2][b"X-Pcci-Requested-By"] == [b"mallory"]
    assert mine[2][b"X-Pcci-Signature"] == [signature(notify_key(SECRET), mine[1]).encode()]
    assert mine[2][b"X-Pcci-Signature"] != [signature(SECRET, mine[1]).encode()]
    assert json.loads(mine[1])["source"] == "notify"
    assert results == ["sent"]  # the master's hook only: /metrics is no port scanner


def test_a_flood_of_notify_never_delays_the_master_s_hooks_nor_other_tokens() -> None:
    """10 pools of 10 URLs that never answer: the admin's alert and another token's still go at once."""
    clock, queue, calls = Clock(), Queue(), []

    def post(url: str, body: bytes, headers: Any, user: bool) -> Deferred[int]:
        calls.append(url)
        return Deferred() if url.startswith("http://tarpit") else succeed(200)

    notifier = Notifier(clock, clock.seconds, queue, post, Hooks(SECRET, (Hook("http://admin-alert"),)))
    notifier.start()
    for n in range(10):
        pool = notifying_pool(f"flood{n}", "mallory", [f"http://tarpit/{n}/{i}" for i in range(10)])
        pool.jobs["b"].state = pool.jobs["a"].state = "ok"  # ok pools: the admin's hook is not told
        pool.notify_on = "ended"
        notifier.pool_ended(pool)
    assert len(calls) == PER_OWNER_IN_FLIGHT  # the token's share, not every slot
    notifier.pool_ended(notifying_pool("admin-pool", "admin", ["http://ops-pager"]))
    assert calls[-2:] == ["http://admin-alert", "http://ops-pager"]
    # Timeouts free the token's slots for its own next ones, never more at once.
    for _ in range(30):
        clock.advance(1.0)
        in_flight = len([u for u in calls if u.startswith("http://tarpit")])
        assert in_flight <= PER_OWNER_IN_FLIGHT * (1 + int(clock.seconds() // 5))


def test_a_token_s_queue_is_capped() -> None:
    clock, queue = Clock(), Queue()
    notifier = Notifier(clock, clock.seconds, queue, lambda *a: Deferred(), Hooks(SECRET))
    for n in range(PER_OWNER_QUEUED // 10 + 5):
        notifier.pool_ended(notifying_pool(f"p{n}", "mallory", [f"http://x/{n}/{i}" for i in range(10)]))
    notifier.pool_ended(notifying_pool("q", "bob", ["http://bob"]))
    owners = [row["owner"] for row in queue.rows.values()]
    assert owners.count("mallory") == PER_OWNER_QUEUED and owners.count("bob") == 1
