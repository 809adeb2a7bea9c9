"""Rolling pools: a sliding window of jobs, waits between them, a failure limit."""

from __future__ import annotations

from fakes import FakeLink, started
from twisted.internet.task import Clock

from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.cluster.jobspec import JobOptions, Rollout
from pcci.master.cluster.model import STATUS_CANCELLED, STATUS_LOST
from pcci.master.cluster.state import ClusterState

NAMES = ("w1", "w2", "w3", "w4", "w5")


def cluster() -> tuple[ClusterState, Clock, dict[str, FakeLink]]:
    clock = Clock()
    state = ClusterState(clock)
    links = {name: FakeLink(name) for name in NAMES}
    for link in links.values():
        state.roster.join(link)
    return state, clock, links


def sent(links: dict[str, FakeLink]) -> list[str]:
    return [name for name, link in links.items() if link.runs]


def finish(state: ClusterState, pool_id: str, name: str, status: int = 0) -> None:
    state.reports.job_started(name, pool_id, 100)
    state.reports.job_ended(name, pool_id, status)


def test_a_batch_is_a_sliding_window() -> None:
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=2)), NAMES))
    assert sent(links) == ["w1", "w2"]
    assert [j.state for j in pool.jobs.values()] == ["pending"] * 5
    finish(state, pool.id, "w2")
    assert sent(links) == ["w1", "w2", "w3"]
    finish(state, pool.id, "w1")
    finish(state, pool.id, "w3")
    assert sent(links) == list(NAMES)
    finish(state, pool.id, "w4")
    finish(state, pool.id, "w5")
    assert pool.state == "ok"


def test_a_percent_batch_is_rounded_up() -> None:
    state, _, links = cluster()
    started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch="30%")), NAMES))
    assert sent(links) == ["w1", "w2"]  # 1.5 of 5, rounded up


def test_batch_wait_separates_an_end_from_the_next_start() -> None:
    state, clock, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=1, batch_wait=10)), NAMES[:3]))
    finish(state, pool.id, "w1")
    clock.advance(9.9)
    assert sent(links) == ["w1"]
    clock.advance(0.1)
    assert sent(links) == ["w1", "w2"]


def test_max_failures_cancels_the_jobs_not_started() -> None:
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=2, max_failures=2)), NAMES))
    finish(state, pool.id, "w1", 1)
    assert sent(links) == ["w1", "w2", "w3"]
    finish(state, pool.id, "w2", 0)
    finish(state, pool.id, "w3", 2)  # the second failure
    assert sent(links) == ["w1", "w2", "w3", "w4"]
    assert [pool.jobs[n].state for n in ("w4", "w5")] == ["pending", "cancelled"]
    assert pool.jobs["w5"].status == STATUS_CANCELLED
    # w4 was sent but has not started: it is called back.
    assert links["w4"].kills == [pool.id]
    state.reports.job_ended("w4", pool.id, -1, "cancelled")
    assert pool.finished and pool.counts() == {"failed": 2, "ok": 1, "cancelled": 2}


def test_max_failures_without_batch_calls_back_the_queued_jobs() -> None:
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(max_failures=1)), NAMES[:3]))
    finish(state, pool.id, "w1", 1)
    assert links["w2"].kills == [pool.id] and links["w3"].kills == [pool.id]


def test_killing_a_rolling_pool_cancels_what_waits() -> None:
    state, clock, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=1, batch_wait=5)), NAMES))
    state.reports.job_started("w1", pool.id, 100)
    asked = state.dispatcher.kill(pool.id)
    assert asked == list(NAMES)
    assert links["w1"].kills == [pool.id]
    assert [pool.jobs[n].state for n in NAMES[1:]] == ["cancelled"] * 4
    state.reports.job_ended("w1", pool.id, 143, "killed")
    clock.advance(60)
    assert sent(links) == ["w1"]
    assert pool.counts() == {"killed": 1, "cancelled": 4}


def test_a_worker_gone_before_its_turn_is_lost_and_the_next_goes() -> None:
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=1)), NAMES[:3]))
    state.roster.leave(links["w2"], "disconnected")
    finish(state, pool.id, "w1")
    assert pool.jobs["w2"].status == STATUS_LOST
    assert "left before its turn" in pool.jobs["w2"].output.text()
    assert sent(links) == ["w1", "w3"]


def test_options_travel_with_each_run() -> None:
    state, _, links = cluster()
    options = JobOptions(timeout=5.0, env={"A": "1"}, cwd="/tmp", stdin="x")
    started(state.dispatcher.submit(PoolOrder("x", options), ["w1"]))
    assert links["w1"].options == [
        {"timeout": 5.0, "env": {"A": "1"}, "cwd": "/tmp", "stdin": "x"}
    ]
    started(state.dispatcher.submit(PoolOrder("x"), ["w1"]))
    assert links["w1"].options[-1] == {}


def test_a_timed_out_job_reads_124() -> None:
    state, _, _ = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", JobOptions(timeout=1.0)), ["w1"]))
    state.reports.job_started("w1", pool.id, 100)
    state.reports.job_ended("w1", pool.id, 143, "timed_out")
    assert (pool.jobs["w1"].status, pool.jobs["w1"].state) == (124, "timed_out")


def test_a_canary_that_ends_ok_lets_the_rest_start() -> None:
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(canary=2, batch=2)), NAMES))
    assert sent(links) == ["w1", "w2"]
    finish(state, pool.id, "w1")
    assert sent(links) == ["w1", "w2"]  # the other canary still runs
    finish(state, pool.id, "w2")
    assert sent(links) == ["w1", "w2", "w3", "w4"]  # then a window of 2
    assert pool.canary_passed and pool.state == "running"


def test_a_canary_that_fails_stops_the_pool_saying_so() -> None:
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(canary=1)), NAMES))
    assert sent(links) == ["w1"]
    finish(state, pool.id, "w1", status=3)
    assert sent(links) == ["w1"]
    assert pool.state == "failed" and pool.stopped == "its canary failed: 1 of 1 canary jobs did not end ok"
    assert pool.counts() == {"failed": 1, "cancelled": 4}
    assert pool.summary()["stopped"] == pool.stopped
    # Webhooks say so too.
    from pcci.master.webhooks.notifier import pool_message, slack_message

    message = pool_message(pool, None, False)
    assert message["stopped"] == pool.stopped and f"stopped: {pool.stopped}" in slack_message(message)["text"]


def test_a_failure_budget_in_percent_stops_the_rest() -> None:
    state, _, links = cluster()
    names = [f"w{i}" for i in range(1, 6)]
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=1, max_failures="40%")), names))
    finish(state, pool.id, "w1", status=1)
    assert sent(links) == ["w1", "w2"]  # 1 of the 2 allowed (40% of 5)
    finish(state, pool.id, "w2", status=1)
    assert pool.stopped == "its failure budget is spent: 2 jobs failed, the most it allows (40% of the jobs)"
    assert pool.counts() == {"failed": 2, "cancelled": 3}


def test_a_pool_pauses_after_every_n_ends_until_continued() -> None:
    state, clock, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=1, pause_every=2)), NAMES))
    finish(state, pool.id, "w1")
    finish(state, pool.id, "w2")
    assert sent(links) == ["w1", "w2"] and pool.state == "paused"
    clock.advance(3600)
    assert sent(links) == ["w1", "w2"]  # it waits for a person, however long
    assert state.dispatcher.resume(pool.id) == 1
    assert sent(links) == ["w1", "w2", "w3"] and pool.state == "running"
    finish(state, pool.id, "w3")
    finish(state, pool.id, "w4")
    assert pool.state == "paused"
    state.dispatcher.kill(pool.id)  # a kill ends a paused pool: what waits is cancelled
    assert pool.state == "failed" and pool.counts() == {"ok": 4, "cancelled": 1}


def test_the_rollout_s_place_is_in_the_pool_s_record() -> None:
    from pcci.master.cluster.model import Pool

    state, _, links = cluster()
    pool = started(state.dispatcher.submit(
        PoolOrder("x", rollout=Rollout(batch=1, canary=1, pause_every=1, max_failures="50%")), NAMES[:3]))
    finish(state, pool.id, "w1")
    finish(state, pool.id, "w2")
    record = pool.snapshot().record
    again = Pool.from_record(record, lambda _: state.history.new_output())
    assert (again.canary_passed, again.paused, again.ended_since_pause, again.rollout) == (
        True, True, 1, Rollout(batch=1, canary=1, pause_every=1, max_failures="50%"))
    assert again.state == "paused"


def test_the_jobs_in_flight_are_counted_as_they_are_sent_and_end() -> None:
    """The window reads a count kept at each send and end (not a walk of every job at every end)."""
    state, _, links = cluster()
    pool = started(state.dispatcher.submit(PoolOrder("x", rollout=Rollout(batch=2)), NAMES))
    walked = lambda: sum(1 for job in pool.jobs.values() if job.sent and job.status is None)  # noqa: E731
    assert pool.in_flight() == walked() == 2
    state.dispatcher.kill(pool.id, ["w1"])
    state.reports.job_ended("w1", pool.id, 137)
    finish(state, pool.id, "w2")
    assert pool.in_flight() == walked() == 2 and sent(links) == ["w1", "w2", "w3", "w4"]
    state.reports.job_ended("w3", pool.id, 0)  # ended without a start seen
    state.reports.job_ended("w3", pool.id, 0)  # twice
    assert pool.in_flight() == walked() == 2
