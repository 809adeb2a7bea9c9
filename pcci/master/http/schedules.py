"""
The REST API's schedules (C{/schedules}), and the runs the scheduler starts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.web.iweb import IRequest

from pcci.master.access import permits
from pcci.master.cluster.jobspec import SpecError, parse_submission
from pcci.master.cluster.model import Pool, rfc3339
from pcci.master.cluster.schedules import (
    Schedule,
    ScheduleError,
    SchedulesStore,
    check_cron,
    check_name,
    check_timezone,
)
from pcci.master.cluster.targets import TargetError
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    SCHEDULE_FIELDS,
    APIError,
    as_object,
    bool_arg,
    json_answer,
    read_json,
    request_token,
    who_asks,
)
from pcci.master.http.guards import audit
from pcci.master.store.base import PoolQuery
from pcci.request import JOB_FIELDS, no_such_fields, unknown_fields


class ScheduleRoutes(APIBase):
    """Schedules: made, listed, changed, removed; and their runs."""

    # Schedules (see pcci.master.cluster.schedules)

    def _schedules_store(self) -> SchedulesStore:
        if self.scheduler is None or self.history.store is None:
            raise APIError(409, "this master has no store to keep schedules in")
        return self.history.store.schedules

    def _schedule(self, request: IRequest, name: str) -> Deferred[Schedule]:
        """A schedule the request's token may see (a scoped token sees its own)."""

        names = {name, self._own_name(request, name)}

        def found(schedules: list[Schedule]) -> Schedule:
            for schedule in schedules:
                if schedule.name in names and self._may_see(request, schedule.created_by):
                    return schedule
            raise APIError(404, f"no schedule {name}")

        return self._schedules_store().all().addCallback(found)

    @staticmethod
    def _own_name(request: IRequest, name: str) -> str:
        """
        A schedule's name as a scoped token's: under its own name
        (C{alice:nightly}), so that no name it picks is another's, whose
        schedules it cannot see.
        """
        token = request_token(request)
        if token is None or token.scope is None or name.startswith(f"{token.name}:"):
            return name
        return f"{token.name}:{name}"

    def _checked_schedule(self, request: IRequest, body: Any, existing: Schedule | None) -> Schedule:
        """A schedule from a C{POST} body, or C{existing} changed by a C{PATCH} body, checked."""
        body = as_object(body)
        unknown = unknown_fields(body, SCHEDULE_FIELDS | JOB_FIELDS.keys())
        if unknown:
            raise APIError(400, no_such_fields("a schedule", unknown))
        assert self.scheduler is not None
        try:
            if existing is None:
                schedule = Schedule(
                    name=check_name(self._own_name(request, check_name(body.get("name")))),
                    cron="",
                    job={},
                    created_by=who_asks(request),
                    created_at=self.state.wall(),
                )
            else:
                renamed = body.get("name", existing.name)
                if not isinstance(renamed, str) or self._own_name(request, renamed) != existing.name:
                    raise ScheduleError("a schedule cannot be renamed: make a new one")
                schedule = replace(existing)
            if existing is None or "cron" in body:
                schedule.cron = check_cron(body.get("cron"), self.scheduler.seconds)
            if "timezone" in body:
                check_timezone(body["timezone"])
                schedule.timezone = body["timezone"]
            for flag in ("paused", "overlap", "catch_up"):
                if flag in body:
                    if not isinstance(body[flag], bool):
                        raise ScheduleError(f"{flag} must be true or false")
                    setattr(schedule, flag, body[flag])
            # A field set to null is removed: the job goes back to its default.
            job = {**schedule.job, **{k: v for k, v in body.items() if k in JOB_FIELDS}}
            schedule.job = {k: v for k, v in job.items() if v is not None}
            asked = parse_submission(schedule.job, self.limits.max_command, self.limits.max_workers)
        except (ScheduleError, SpecError) as e:
            raise APIError(400, str(e)) from None
        self._permit(request, permits.check_run, asked.cmd, asked.options, asked.notify, self.limits.notify_policy)
        if asked.workers:
            try:
                self._permit(request, permits.check_names, self.roster, asked.workers, self.limits.max_workers)
            except TargetError as e:
                raise APIError(400, str(e)) from None
        return schedule

    def _schedule_json(self, schedule: Schedule) -> Deferred[dict[str, Any]]:
        """A schedule as the API shows it: with its next runs and its latest pools."""
        assert self.scheduler is not None
        body: dict[str, Any] = {
            "name": schedule.name,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "paused": schedule.paused,
            "overlap": schedule.overlap,
            "catch_up": schedule.catch_up,
            **schedule.job,
            "created_by": schedule.created_by,
            "created_at": rfc3339(schedule.created_at),
            "next_runs": [rfc3339(at) for at in self.scheduler.next_runs(schedule)],
            "last_run": rfc3339(schedule.last_run or None),
            "skipped": schedule.skipped,
            "runs": [{**run, "at": rfc3339(run["at"])} for run in schedule.runs[-5:]],
        }

        def pools(page: list[Pool | dict[str, Any]]) -> dict[str, Any]:
            body["last_pools"] = [
                {
                    key: (p.summary() if isinstance(p, Pool) else p)[key]
                    for key in ("id", "state", "counts", "started_at")
                }
                for p in page
            ]
            return body

        return self.history.page(PoolQuery(schedule=schedule.name), 3).addCallback(pools)

    @app.route("/schedules", methods=["GET"])
    def schedule_list(self, request: IRequest) -> Deferred[bytes]:
        """Every schedule (a scoped token's own), with its next runs and latest pools."""

        def answer(schedules: list[Schedule]) -> Deferred[bytes]:
            shown = [self._schedule_json(s) for s in schedules if self._may_see(request, s.created_by)]
            return gatherResults(shown, consumeErrors=True).addCallback(lambda body: json_answer(request, body))

        return self._schedules_store().all().addCallback(answer)

    @app.route("/schedules", methods=["POST"])
    def schedule_create(self, request: IRequest) -> Deferred[bytes]:
        """
        A new schedule: a cron line, a time zone, and a C{POST /job} body.
        With C{?dry_run=true}, check it and tell its next runs, keeping nothing.
        """
        store = self._schedules_store()
        schedule = self._checked_schedule(request, read_json(request, self.limits.max_body), None)
        if bool_arg(request, "dry_run", False):
            assert self.scheduler is not None
            runs = [rfc3339(at) for at in self.scheduler.next_runs(schedule)]
            answer = {"name": schedule.name, "next_runs": runs, "message": f"schedule {schedule.name} can be made"}
            return succeed(json_answer(request, answer))

        def put(fresh: bool) -> Deferred[bytes]:
            if not fresh:
                raise APIError(409, f"a schedule named {schedule.name} exists already")
            audit.info(
                "{who} made schedule {name}: {cron}: {cmd}",
                who=who_asks(request),
                name=schedule.name,
                cron=schedule.cron,
                cmd=schedule.job["cmd"],
            )
            return self._changed_schedule(request, schedule, 201)

        return store.put(schedule, True).addCallback(put)

    def _changed_schedule(self, request: IRequest, schedule: Schedule, status: int) -> Deferred[bytes]:
        scheduler = self.scheduler
        assert scheduler is not None
        d = scheduler.reload()
        d.addCallback(lambda _: self._schedule_json(scheduler.schedules.get(schedule.name, schedule)))
        return d.addCallback(lambda body: json_answer(request, body, status))

    @app.route("/schedules/<string:name>", methods=["GET"])
    def schedule_show(self, request: IRequest, name: str) -> Deferred[bytes]:
        d = self._schedule(request, name).addCallback(self._schedule_json)
        return d.addCallback(lambda body: json_answer(request, body))

    @app.route("/schedules/<string:name>", methods=["PATCH"])
    def schedule_change(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Change a schedule: any of its fields but its name (C{paused} pauses and resumes it)."""
        body = read_json(request, self.limits.max_body)

        def change(existing: Schedule) -> Deferred[bytes]:
            schedule = self._checked_schedule(request, body, existing)

            def put(found: bool) -> Deferred[bytes]:
                if not found:
                    raise APIError(404, f"no schedule {name}")
                audit.info(
                    "{who} changed schedule {name}: {fields}",
                    who=who_asks(request),
                    name=schedule.name,
                    fields=", ".join(sorted(body)),
                )
                return self._changed_schedule(request, schedule, 200)

            return self._schedules_store().put(schedule, False).addCallback(put)

        return self._schedule(request, name).addCallback(change)

    @app.route("/schedules/<string:name>", methods=["DELETE"])
    def schedule_remove(self, request: IRequest, name: str) -> Deferred[bytes]:
        def remove(schedule: Schedule) -> Deferred[bytes]:
            def removed(found: bool) -> Deferred[bytes]:
                if not found:
                    raise APIError(404, f"no schedule {name}")
                audit.info("{who} removed schedule {name}", who=who_asks(request), name=schedule.name)
                assert self.scheduler is not None
                answer = {"name": schedule.name, "message": f"schedule {schedule.name} removed"}
                return self.scheduler.reload().addCallback(lambda _: json_answer(request, answer))

            return self._schedules_store().remove(schedule.name).addCallback(removed)

        return self._schedule(request, name).addCallback(remove)

    def run_schedule(self, schedule: Schedule) -> Deferred[str]:
        """
        Start a run of C{schedule}, checked as its creator's token's (one
        revoked since, or now read-only, starts nothing): fires with the
        new pool's id, or fails saying why it did not start.
        """
        return maybeDeferred(self._run_schedule, schedule)

    def _run_schedule(self, schedule: Schedule) -> Deferred[str]:
        who = schedule.created_by
        token = None
        if self.tokens is not None:
            token = self.tokens.named(who) if who is not None else None
            if token is None or token.read_only:
                raise ScheduleError(f"the token {who} that made it is gone or may only read")
        try:
            launch = self.launcher.prepare(token, schedule.job)
        except permits.Forbidden as e:
            audit.info("refused schedule {name}'s run for {who}: {why}", name=schedule.name, who=who, why=e)
            raise
        d = self.launcher.start(launch, who, schedule.name)
        d.addCallback(self._audit_start, f"{who or 'anyone (no auth)'} (schedule {schedule.name})")
        return d.addCallback(lambda pool: pool.id)

