"""The master's state, driven by a Clock."""

from __future__ import annotations

import pytest
from fakes import FakeLink, started
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from pcci.master.cluster.dispatch import PoolOrder, SubmitError
from pcci.master.cluster.history import TooManyPools
from pcci.master.cluster.model import STATUS_LOST, Pool, rfc3339
from pcci.master.cluster.state import ClusterState, Settings
from pcci.master.store.base import PoolQuery
from pcci.output import Chunk, OutputBuffer


def cluster(*names: str, **kwargs) -> tuple[ClusterState, Clock, dict[str, FakeLink]]:
    clock = Clock()
    clock.advance(1_700_000_000)
    state = ClusterState(clock, Settings(**kwargs))
    links = {name: FakeLink(name) for name in names}
    for link in links.values():
        state.roster.join(link)
    return state, clock, links


def test_submit_runs_the_command_on_each_named_worker() -> None:
    state, _, links = cluster("a", "b", "c")
    pool = started(state.dispatcher.submit(PoolOrder("uname -a"), ["a", "b", "a"]))
    assert links["a"].runs == [(pool.id, "uname -a")]
    assert links["b"].runs == [(pool.id, "uname -a")]
    assert links["c"].runs == []
    assert list(pool.jobs) == ["a", "b"]
    assert pool.status is None
    assert state.roster.running_jobs("a") == 1


def test_submit_to_unknown_worker_creates_nothing() -> None:
    state, _, links = cluster("a")
    with pytest.raises(SubmitError, match="ghost"):
        started(state.dispatcher.submit(PoolOrder("true"), ["a", "ghost"]))
    assert state.history.pools == {}
    assert links["a"].runs == []


@pytest.mark.parametrize(
    "statuses, expected", [([0, 0], 0), ([0, 1], 1), ([2, 0], 1), ([0, 137], 1)]
)
def test_pool_status(statuses: list[int], expected: int) -> None:
    state, _, _ = cluster("a", "b")
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a", "b"]))
    state.reports.job_ended("a", pool.id, statuses[0])
    assert pool.status is None
    state.reports.job_ended("b", pool.id, statuses[1])
    assert pool.status == expected


def test_a_pool_is_finished_once_every_job_has_ended_even_jobs_replaced() -> None:
    state, _, _ = cluster("a", "b", "c")
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a", "b", "c"]))
    state.reports.job_ended("b", pool.id, 0)  # out of order
    assert not pool.finished
    state.reports.job_ended("a", pool.id, 0)
    assert not pool.finished
    # A replica's jobs become those of its stored end (pcci.master.peers.peers).
    ended = Pool.from_record(pool.snapshot().record, lambda record: OutputBuffer(100))
    ended.jobs["c"].end(0, "ok", 1.0, 1.0)
    pool.jobs.update(ended.jobs)
    assert pool.finished and pool.status == 0


def test_job_fields_and_times() -> None:
    state, clock, _ = cluster("a")
    pool = started(state.dispatcher.submit(PoolOrder("echo hi"), ["a"]))
    assert pool.jobs["a"].to_json()["state"] == "pending"
    clock.advance(0.5)
    state.reports.job_started("a", pool.id, 4242)
    assert pool.jobs["a"].to_json()["state"] == "running"
    state.reports.job_output("a", pool.id, "hi\n")
    state.reports.job_output("a", pool.id, "there\n")
    clock.advance(1.5)
    state.reports.job_ended("a", pool.id, 0)
    job = pool.to_json()["jobs"][0]
    assert job == {
        "pool": pool.id,
        "worker_id": "a",
        "cmd": "echo hi",
        "pid": 4242,
        "status": 0,
        "state": "ok",
        "result": "hi\nthere\n",
        "time_to_calc": 1500,
        "started_at": "2023-11-14T22:13:20.500Z",
        "ended_at": "2023-11-14T22:13:22.000Z",
    }
    assert pool.to_json()["ended_at"] == job["ended_at"]


def test_reports_for_unknown_pools_are_ignored() -> None:
    state, _, _ = cluster("a")
    state.reports.job_started("a", "nope", 1)
    state.reports.job_output("a", "nope", "x")
    state.reports.job_ended("a", "nope", 0)
    state.reports.job_ended("ghost", "nope", 0)
    assert state.history.pools == {}


def test_finished_pools_are_dropped_after_retention() -> None:
    state, clock, _ = cluster("a", retention=10)
    done = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    running = started(state.dispatcher.submit(PoolOrder("y"), ["a"]))
    clock.advance(5)
    state.reports.job_ended("a", done.id, 0)
    clock.advance(9.9)
    assert done.id in state.history.pools
    clock.advance(0.1)
    assert done.id not in state.history.pools
    clock.advance(10_000)
    assert running.id in state.history.pools  # running pools are never dropped


def test_past_max_pools_the_oldest_finished_pool_is_dropped() -> None:
    state, _, _ = cluster("a", max_pools=2)
    old = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    running = started(state.dispatcher.submit(PoolOrder("y"), ["a"]))
    state.reports.job_ended("a", old.id, 0)
    newest = started(state.dispatcher.submit(PoolOrder("z"), ["a"]))
    assert list(state.history.pools) == [running.id, newest.id]
    with pytest.raises(TooManyPools):
        started(state.dispatcher.submit(PoolOrder("w"), ["a"]))  # both kept pools still run
    assert list(state.history.pools) == [running.id, newest.id]


def test_worker_lost_fails_its_running_jobs() -> None:
    state, clock, links = cluster("a", "b")
    pool = started(state.dispatcher.submit(PoolOrder("sleep 100"), ["a", "b"]))
    state.reports.job_ended("b", pool.id, 0)
    state.reports.job_output("a", pool.id, "a line\n")
    state.roster.leave(links["a"], "disconnected")
    clock.advance(state.roster.reconnect_grace)
    job = pool.jobs["a"]
    assert job.status == STATUS_LOST
    assert job.output.text() == "a line\npcci: job lost: worker disconnected\n"
    assert pool.status == 1
    assert "a" not in state.roster.links


def test_new_connection_under_a_name_replaces_the_old_one() -> None:
    state, _, links = cluster("a")
    pool = started(state.dispatcher.submit(PoolOrder("sleep 100"), ["a"]))
    newcomer = FakeLink("a", address="192.0.2.9:1")
    state.roster.join(newcomer)
    assert state.roster.links["a"] is newcomer
    assert links["a"].dismissed and "192.0.2.9:1" in links["a"].dismissed[0]
    assert pool.jobs["a"].status == STATUS_LOST
    # The old connection closing later changes nothing.
    state.roster.leave(links["a"], "disconnected")
    assert state.roster.links["a"] is newcomer


def test_kill_asks_only_running_jobs() -> None:
    state, _, links = cluster("a", "b")
    pool = started(state.dispatcher.submit(PoolOrder("sleep 100"), ["a", "b"]))
    state.reports.job_ended("b", pool.id, 0)
    assert state.dispatcher.kill(pool.id) == ["a"]
    assert links["a"].kills == [pool.id]
    assert links["b"].kills == []


def test_kill_named_workers() -> None:
    state, _, links = cluster("a", "b")
    pool = started(state.dispatcher.submit(PoolOrder("sleep 100"), ["a", "b"]))
    assert state.dispatcher.kill(pool.id, ["b"]) == ["b"]
    assert links["a"].kills == []
    with pytest.raises(SubmitError, match="c"):
        state.dispatcher.kill(pool.id, ["c"])
    with pytest.raises(KeyError):
        state.dispatcher.kill("nope")


def test_wait_fires_when_the_pool_finishes() -> None:
    state, clock, _ = cluster("a")
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    results: list = []
    state.dispatcher.wait(pool, 30).addCallback(results.append)
    clock.advance(10)
    assert results == []
    state.reports.job_ended("a", pool.id, 0)
    assert results == [pool]
    assert clock.getDelayedCalls() == [state.history._expiries[pool.id]]


def test_wait_times_out_with_the_running_pool() -> None:
    state, clock, _ = cluster("a")
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    results: list = []
    state.dispatcher.wait(pool, 30).addCallback(results.append)
    clock.advance(30)
    assert results == [pool] and pool.status is None
    assert pool.waiters == []


def test_cancelled_wait_leaves_nothing_behind() -> None:
    state, clock, _ = cluster("a")
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    d = state.dispatcher.wait(pool, 30)
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert pool.waiters == []
    assert clock.getDelayedCalls() == []


def test_rfc3339() -> None:
    assert rfc3339(None) is None
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250Z"
    assert rfc3339(1.9999996) == "1970-01-01T00:00:02.000Z"  # rounded to the µs first


@given(st.floats(min_value=-1e10, max_value=1e10) | st.integers(-10**10, 10**10).map(lambda n: n / 1e6))
def test_rfc3339_writes_what_datetime_would(seconds: float) -> None:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(seconds, timezone.utc)
    assert rfc3339(seconds) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TestOutputBuffer:
    def test_under_the_cap_everything_is_kept(self) -> None:
        out = OutputBuffer(100)
        for piece in ["a" * 40, "b" * 40, "c" * 20]:
            out.append(piece)
        assert out.text() == "a" * 40 + "b" * 40 + "c" * 20
        assert out.dropped == 0

    def test_over_the_cap_head_and_tail_are_kept(self) -> None:
        out = OutputBuffer(100)
        text = "".join(f"{i:04d}" for i in range(1000))  # 4000 bytes
        for start in range(0, len(text), 7):
            out.append(text[start : start + 7])
        kept = out.text()
        head, marker, tail = kept.partition("\n[pcci: 3900 bytes of output dropped]\n")
        assert marker
        assert text.startswith(head) and 0 < len(head.encode()) <= 50
        assert text.endswith(tail) and len(head) + len(tail) == 100
        assert len(head) + len(tail) + out.dropped == len(text)

    def test_multibyte_characters_are_never_cut(self) -> None:
        out = OutputBuffer(11)
        out.append("é" * 20)  # 40 bytes: the 11th byte kept would cut an é
        assert "\ufffd" not in out.text()
        assert out.text().rpartition("]\n")[2] == "é" * 5
        assert out.dropped == 30


def test_pieces_past_a_gap_wait_for_the_worker_to_send_them_again() -> None:
    # A master that died had read piece 1 of a relayed job; its successor
    # reads piece 2 and the end late, from the mail, before the replay it asked.
    state, _, links = cluster("a")
    links["a"].contiguous_seq = True
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    state.reports.job_output("a", pool.id, "done\n", "stdout", 2)
    state.reports.job_ended("a", pool.id, 0, seq=2)
    job = pool.jobs["a"]
    assert (job.output.text(), job.status) == ("", None)
    assert links["a"].attached == [(pool.id, 0)]  # asked once, for all after 0
    state.reports.job_ended("a", pool.id, 0, seq=2)
    assert links["a"].attached == [(pool.id, 0)]
    for seq, text in enumerate(["start\n", "done\n"], 1):  # the replay
        state.reports.job_output("a", pool.id, text, "stdout", seq)
    state.reports.job_ended("a", pool.id, 0, seq=2)
    assert (job.output.text(), job.state) == ("start\ndone\n", "ok")


def test_an_older_worker_s_pieces_are_taken_past_a_gap() -> None:
    state, _, links = cluster("a")  # its hello did not say contiguous_seq
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    state.reports.job_output("a", pool.id, "b", "stdout", 2)
    state.reports.job_output("a", pool.id, "a", "stdout", 1)  # had: a number not above
    state.reports.job_ended("a", pool.id, 0)
    assert (pool.jobs["a"].output.text(), pool.state) == ("b", "ok") and not links["a"].attached


@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=40),
    limit=st.integers(2, 60),
    after=st.integers(0, 40),
)
@example(sizes=[1] * 30, limit=10, after=10)  # within what was dropped
def test_a_worker_s_replay_after_any_piece_reaches_the_master_whole(
    sizes: list[int], limit: int, after: int
) -> None:
    kept = OutputBuffer(limit)  # the worker's, capped
    for seq, size in enumerate(sizes, 1):
        kept.append(chr(ord("a") + seq % 26) * size, "stdout", seq)
    after = min(after, len(sizes))
    state, _, links = cluster("a")
    links["a"].contiguous_seq = True
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    job = pool.jobs["a"]
    job.seq = after
    for piece in kept.chunks(after, whole=True):
        if isinstance(piece, Chunk):
            state.reports.job_output("a", pool.id, piece.text, piece.stream, piece.event)
        else:
            last = len(sizes) if piece.last is None else piece.last
            state.reports.job_output("a", pool.id, "[dropped]", "stderr", last, piece.event)
    state.reports.job_ended("a", pool.id, 0, seq=len(sizes))
    assert job.state == "ok" and not links["a"].attached  # nothing missed: never asked again
    if after == 0:
        assert job.output.text() == kept.text().replace(kept.marker(), "[dropped]")


def test_history_covers_the_period_within_a_bound() -> None:
    state, _, _ = cluster(history=60)
    state.roster.join(FakeLink("slow", heartbeat=5))
    state.roster.join(FakeLink("fast", heartbeat=0.05))
    assert state.roster.records["slow"].history.size == 13
    assert state.roster.records["fast"].history.size == 1200
    state, _, _ = cluster(history=3600)
    state.roster.join(FakeLink("fast", heartbeat=0.05))
    assert state.roster.records["fast"].history.size == 3600  # not 72,000


def test_records_outlive_connections() -> None:
    state, clock, links = cluster("a")
    clock.advance(7)
    state.roster.heartbeat("a", {"cpu_ratio": 0.5})
    state.roster.leave(links["a"], "disconnected")
    record = state.roster.records["a"]
    assert (record.online, record.figures["cpu_ratio"], len(record.history)) == (False, 0.5, 1)
    state.roster.heartbeat("a", {"cpu_ratio": 0.9})  # a late frame changes nothing
    assert record.figures["cpu_ratio"] == 0.5
    state.roster.join(FakeLink("a", address="192.0.2.7:9"))
    assert state.roster.records["a"] is record and record.online and record.address == "192.0.2.7:9"


def test_total_output_is_bounded_oldest_finished_first() -> None:
    state, _, _ = cluster("a", max_output=1000, max_output_total=2500)
    old = started(state.dispatcher.submit(PoolOrder("x"), ["a"]))
    state.reports.job_output("a", old.id, "o" * 1000)
    state.reports.job_ended("a", old.id, 0)
    running = started(state.dispatcher.submit(PoolOrder("y"), ["a"]))
    state.reports.job_output("a", running.id, "r" * 1000)
    assert state.history.output_total == 2000
    state.reports.job_output("a", running.id, "s" * 600)  # a third job's worth arrives
    newest = started(state.dispatcher.submit(PoolOrder("z"), ["a"]))
    state.reports.job_output("a", newest.id, "n" * 1000)
    assert state.history.output_total <= 2500
    assert "1000 bytes of output dropped" in old.jobs["a"].output.text()
    assert old.id in state.history.pools  # the pool stays, its output went


def test_running_jobs_are_squeezed_when_nothing_else_is_left() -> None:
    from pcci.output import MIN_SQUEEZED

    state, _, _ = cluster("a", "b", max_output=4 * MIN_SQUEEZED, max_output_total=5 * MIN_SQUEEZED)
    pool = started(state.dispatcher.submit(PoolOrder("x"), ["a", "b"]))
    for _ in range(4):
        state.reports.job_output("a", pool.id, "a" * MIN_SQUEEZED)
        state.reports.job_output("b", pool.id, "b" * MIN_SQUEEZED)
    assert state.history.output_total <= 5 * MIN_SQUEEZED
    assert all(job.output.text().endswith(job.worker_id * 100) for job in pool.jobs.values())


def test_offline_workers_are_forgotten_after_a_while() -> None:
    state, clock, links = cluster("a", forget_after=100)
    state.roster.leave(links["a"], "disconnected")
    clock.advance(99)
    assert "a" in state.roster.records
    state.roster.join(FakeLink("a"))  # back in time: the countdown stops
    state.roster.leave(state.roster.links["a"], "disconnected")
    clock.advance(99)
    assert "a" in state.roster.records
    clock.advance(1)
    assert "a" not in state.roster.records


def test_pools_listed_newest_first_with_filters_and_paging() -> None:
    state, clock, _ = cluster("a", "b")
    made = []
    for i in range(6):
        clock.advance(1)
        pool = started(state.dispatcher.submit(PoolOrder(f"job {i}"), ["a"] if i % 2 else ["a", "b"]))
        made.append(pool)
    state.reports.job_ended("a", made[1].id, 0)
    state.reports.job_ended("a", made[3].id, 2)
    ids = lambda pools: [p.id for p in pools]  # noqa: E731
    assert ids(state.history.list_pools()) == ids(reversed(made))
    assert ids(state.history.list_pools(PoolQuery(before=made[3].id))) == ids([made[2], made[1], made[0]])
    assert ids(state.history.list_pools(PoolQuery(state="ok"))) == [made[1].id]
    assert ids(state.history.list_pools(PoolQuery(state="failed"))) == [made[3].id]
    assert ids(state.history.list_pools(PoolQuery(worker="b"))) == ids([made[4], made[2], made[0]])
    assert ids(state.history.list_pools(PoolQuery(cmd="job 5"))) == [made[5].id]
