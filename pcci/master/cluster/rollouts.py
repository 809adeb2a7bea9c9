"""
A pool's rollout, one decision at a time: how many of its jobs may start
now, and what a job's end changes (L{turn}).  The dispatcher sends; this
module only decides, from the pool's record, so the rollout's place is kept
with the pool across a master's restart and a take-over.

  - C{canary: N}: the first N jobs run; the others start only once all N
    ended ok, else the pool stops, saying its canary failed.
  - C{max_failures}: N jobs (or N% of them) failed: the rest are cancelled,
    the pool saying its failure budget was spent.
  - C{pause_every: N}: after every N ends the pool is C{paused}, sending
    nothing, until it is continued (or killed).
  - C{batch}, C{batch_wait}: a sliding window of jobs running at once, a
    wait between an end and the next start.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcci.master.cluster.model import CANCELLED, OK, Job, Pool


@dataclass(frozen=True)
class Turn:
    """What a job's end asks of the dispatcher: send C{send} more, or stop with C{stop} (why)."""

    send: int = 0
    stop: str = ""


def slots(pool: Pool) -> int:
    """How many more of the pool's jobs may start now."""
    if pool.halted or pool.paused or not pool.waiting:
        return 0
    rollout = pool.rollout
    if rollout.canary is not None and not pool.canary_passed:
        return max(0, rollout.canary - sum(1 for job in pool.jobs.values() if job.sent))
    return max(0, rollout.window(len(pool.jobs)) - pool.in_flight())


def turn(pool: Pool, job: Job) -> Turn:
    """A job of the pool ended: count it, and say what comes next."""
    if job.state not in (OK, CANCELLED):
        pool.failures += 1
    if pool.halted:
        return Turn()
    rollout = pool.rollout
    limit = rollout.failure_limit(len(pool.jobs))
    if limit is not None and pool.failures >= limit:
        share = f" ({rollout.max_failures} of the jobs)" if isinstance(rollout.max_failures, str) else ""
        return Turn(stop=f"its failure budget is spent: {pool.failures} jobs failed, the most it allows{share}")
    if rollout.canary is not None and not pool.canary_passed:
        left = slots(pool)
        if left or pool.in_flight():
            return Turn(send=left)  # canaries still to start, or still running
        if pool.failures:
            return Turn(stop=f"its canary failed: {pool.failures} of {rollout.canary} canary jobs did not end ok")
        pool.canary_passed = True
        return Turn(send=slots(pool))
    if not job.sent:
        return Turn()  # a job that never started (cancelled, waited out) frees no slot
    if rollout.pause_every is not None:
        pool.ended_since_pause += 1
        if pool.ended_since_pause >= rollout.pause_every and pool.waiting:
            pool.paused = True
            return Turn()
    return Turn(send=min(1, slots(pool)))


def resume(pool: Pool) -> int:
    """A paused pool continues: how many jobs it may start."""
    pool.paused = False
    pool.ended_since_pause = 0
    return slots(pool)
