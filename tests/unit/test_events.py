"""A pool's live events: ids, replay, resume, drops, keep-alives, slow readers."""

from __future__ import annotations

import json
from typing import Any

import treq
from fakes import FakeLink, started
from test_api import Client
from twisted.internet.task import Clock

from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.cluster.events import pool_events
from pcci.master.cluster.state import ClusterState, Settings
from pcci.master.http.common import pool_pieces as _pool_pieces
from pcci.master.http.streaming import KEEP_ALIVE, EventStream


def parse(text: str) -> list[tuple[int, str, Any]]:
    """Server-sent events as (id, event, data); comments left out."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


def run_pool(client: Client) -> str:
    pool_id = client.submit("x", ["a", "b"])
    state = client.state
    state.reports.job_started("a", pool_id, 11)
    state.reports.job_output("a", pool_id, "out\n", "stdout")
    state.reports.job_started("b", pool_id, 12)
    state.reports.job_output("a", pool_id, "err\n", "stderr")
    state.reports.job_output("b", pool_id, "b says\n", "stdout")
    state.reports.job_ended("a", pool_id, 0)
    state.reports.job_ended("b", pool_id, 3)
    return pool_id


def stream(
    client: Client, path: str, headers: dict[str, list[str]] | None = None
) -> tuple[int, Any, str]:
    d = client.stub.get("http://master" + path, headers={**client.headers, **(headers or {})})
    (response,) = client._settle(d)
    (body,) = client._settle(response.content())
    return response.code, response.headers, body.decode()


def test_a_finished_pools_stream_replays_everything_and_closes() -> None:
    client = Client()
    pool_id = run_pool(client)
    code, headers, text = stream(client, f"/pools/{pool_id}/events")
    assert code == 200
    assert headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    events = parse(text)
    assert [(i, name) for i, name, _ in events] == [
        (1, "started"), (2, "output"), (3, "started"), (4, "output"),
        (5, "output"), (6, "ended"), (7, "ended"), (8, "pool"),
    ]
    assert events[0][2]["worker"] == "a" and events[0][2]["pid"] == 11
    assert events[3][2] == {"worker": "a", "stream": "stderr", "data": "err\n"}
    assert events[6][2]["status"] == 3 and events[6][2]["state"] == "failed"
    pool = events[-1][2]
    assert pool["id"] == pool_id and pool["state"] == "failed"
    assert [job["result"] for job in pool["jobs"]] == ["out\nerr\n", "b says\n"]


def test_last_event_id_and_after_resume_the_stream() -> None:
    client = Client()
    pool_id = run_pool(client)
    _, _, text = stream(client, f"/pools/{pool_id}/events", headers={"Last-Event-ID": ["5"]})
    assert [i for i, _, _ in parse(text)] == [6, 7, 8]
    _, _, text = stream(client, f"/pools/{pool_id}/events?after=7")
    assert [name for _, name, _ in parse(text)] == ["pool"]
    code, _, answer = client.request("GET", f"/pools/{pool_id}/events?after=x")
    assert code == 400 and "event id" in answer["message"]
    code, _, answer = client.request("GET", "/pools/nope/events")
    assert code == 404


def test_a_live_stream_sends_events_as_they_come_then_the_pool() -> None:
    client = Client()
    pool_id = client.submit("x", ["a"])
    d = client.stub.get(f"http://master/pools/{pool_id}/events", headers=client.headers)
    (response,) = client._settle(d)
    chunks: list[bytes] = []
    done = treq.collect(response, chunks.append)
    client.state.reports.job_started("a", pool_id, 7)
    client.stub.flush()
    assert [name for _, name, _ in parse(b"".join(chunks).decode())] == ["started"]
    client.state.reports.job_output("a", pool_id, "line\n", "stdout")
    client.stub.flush()
    assert parse(b"".join(chunks).decode())[-1][2]["data"] == "line\n"
    assert not done.called
    client.state.reports.job_ended("a", pool_id, 0)
    client._settle(done)
    assert [name for _, name, _ in parse(b"".join(chunks).decode())] == [
        "started", "output", "ended", "pool",
    ]


def test_dropped_output_stands_as_one_event_where_it_was() -> None:
    clock = Clock()
    state = ClusterState(clock, Settings(max_output=100))
    state.roster.join(FakeLink("a"))
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    state.reports.job_started("a", pool.id, 5)
    for i in range(10):
        state.reports.job_output("a", pool.id, f"{i:019d}\n")  # 20 bytes each
    names = [(e.name, e.data.get("bytes")) for e in pool_events(pool)]
    assert names[0] == ("started", None)
    assert ("dropped", 100) in names
    assert names.index(("dropped", 100)) == 3  # after the two kept from the start
    kept = [e.data["data"] for e in pool_events(pool) if e.name == "output"]
    assert kept[0].startswith("0000") and kept[-1].startswith("0000000000000000009")


class PacedRequest:
    """A request whose transport the test fills and drains by hand."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.producer: Any = None

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_a_paused_reader_costs_nothing_and_catches_up_in_order() -> None:
    clock = Clock()
    state = ClusterState(clock)
    state.roster.join(FakeLink("a"))
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    request = PacedRequest()
    EventStream(request, pool, 0, clock, _pool_pieces).start()
    state.reports.job_started("a", pool.id, 5)
    request.producer.pauseProducing()  # the client stopped reading
    for i in range(1000):
        state.reports.job_output("a", pool.id, f"{i}\n")
    assert len(request.written) == 2  # nothing buffered for it while paused
    request.producer.resumeProducing()
    events = parse(b"".join(request.written).decode())
    assert [i for i, _, _ in events] == list(range(1, 1002))
    assert "".join(e[2]["data"] for e in events[1:]) == "".join(f"{i}\n" for i in range(1000))


def test_an_idle_stream_gets_a_keep_alive_comment() -> None:
    clock = Clock()
    state = ClusterState(clock)
    state.roster.join(FakeLink("a"))
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    request = PacedRequest()
    done = EventStream(request, pool, 0, clock, _pool_pieces).start()
    clock.advance(KEEP_ALIVE - 0.1)
    assert len(request.written) == 1
    clock.advance(0.1)
    assert request.written[1:] == [b": keep-alive\n\n"]
    clock.advance(KEEP_ALIVE)
    assert len(request.written) == 3
    request.producer.stopProducing()  # the client left
    assert done.called and pool.listeners == [] and clock.getDelayedCalls() == []
