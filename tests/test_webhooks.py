"""Webhook deliveries over a Clock: the message, the signature, retries with backoff, the drop after an hour."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from pcci.master.model import Job, Pool
from pcci.master.store import Delivery
from pcci.master.webhooks import KEEP_TRYING, Hook, Notifier, pool_message, signature, slack_message
from pcci.output import OutputBuffer

SECRET = b"s" * 32


class Queue:
    """The store's delivery queue, in memory."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def add_delivery(self, url: str, body: bytes, now: float) -> Deferred[None]:
        self.rows[len(self.rows) + 1] = {"url": url, "body": body, "created": now, "attempts": 0, "next": now}
        return succeed(None)

    def due_deliveries(self, now: float, lease: float, most: int) -> Deferred[list[Delivery]]:
        due = [i for i, row in self.rows.items() if row["next"] <= now][:most]
        for i in due:
            self.rows[i]["next"] = now + lease
        return succeed([Delivery(i, self.rows[i]["url"], self.rows[i]["body"], self.rows[i]["attempts"],
                                 self.rows[i]["created"]) for i in due])

    def delivery_done(self, delivery_id: int) -> Deferred[None]:
        del self.rows[delivery_id]
        return succeed(None)

    def delivery_later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]:
        self.rows[delivery_id].update(attempts=attempts, next=at)
        return succeed(None)


def failed_pool() -> Pool:
    pool = Pool(id="p1", cmd="make test", started_at=100.0, ended_at=160.0, submitted_by="ci")
    for name, status, state, text in (("a", 0, "ok", "fine\n"), ("b", 2, "failed", "".join(f"line {i}\n" for i in range(30)))):
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
        "pcci pool FAILED: `make test` (1 failed, 1 ok)", "failed: b",
    ]


def test_a_delivery_is_signed_retried_with_backoff_then_dropped_after_an_hour() -> None:
    clock, queue, sent = Clock(), Queue(), []
    answers = iter([fail(ConnectionRefusedError()), succeed(500)])

    def post(url: str, body: bytes, headers: dict[bytes, list[bytes]]) -> Deferred[int]:
        sent.append((clock.seconds(), url, body, headers))
        return next(answers, fail(ConnectionRefusedError()))

    notifier = Notifier(clock, clock.seconds, queue, post, SECRET, hooks=(Hook("http://h/1"),))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.start()
    notifier.pool_ended(failed_pool())
    (at, url, body, headers), = sent
    assert headers[b"X-Pcci-Signature"] == [
        ("sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()).encode()
    ] == [signature(SECRET, body).encode()]
    assert json.loads(body)["pool"] == "p1"
    clock.pump([1.0] * int(KEEP_TRYING + 60))
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:])]
    assert gaps[:4] == [5.0, 10.0, 20.0, 40.0] and max(gaps) == 600.0
    assert results[-1] == "dropped" and set(results[:-1]) == {"retried"}
    assert queue.rows == {}


def test_an_ok_pool_is_told_only_to_hooks_of_every_end() -> None:
    clock, queue, told = Clock(), Queue(), []

    def post(url: str, body: bytes, headers: Any) -> Deferred[int]:
        told.append(url)
        return succeed(200)

    notifier = Notifier(clock, clock.seconds, queue, post, SECRET,
                        hooks=(Hook("http://failed-only"), Hook("http://every", "ended")))
    pool = failed_pool()
    pool.jobs["b"].state = "ok"
    pool.notify, pool.notify_on = ["http://mine"], "ended"
    notifier.pool_ended(pool)
    assert sorted(told) == ["http://every", "http://mine"] and queue.rows == {}


def test_a_hanging_endpoint_times_out_and_holds_no_other() -> None:
    clock, queue, calls = Clock(), Queue(), []

    def post(url: str, body: bytes, headers: Any) -> Deferred[int]:
        calls.append(url)
        return Deferred() if url == "http://hangs" else succeed(200)

    notifier = Notifier(clock, clock.seconds, queue, post, SECRET, hooks=(Hook("http://hangs"), Hook("http://fine")))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.pool_ended(failed_pool())
    assert calls == ["http://hangs", "http://fine"] and results == ["sent"]
    clock.advance(5.0)
    assert results == ["sent", "retried"]


def test_a_url_the_client_cannot_use_is_tried_again_like_a_failed_answer() -> None:
    clock, queue = Clock(), Queue()

    def post(url: str, body: bytes, headers: Any) -> Deferred[int]:
        raise ValueError(f"unsupported URL {url}")  # before any Deferred, as treq may

    notifier = Notifier(clock, clock.seconds, queue, post, SECRET, hooks=(Hook("nonsense://x"),))
    results: list[str] = []
    notifier.on_result = results.append
    notifier.pool_ended(failed_pool())
    assert results == ["retried"] and queue.rows[1]["attempts"] == 1
