"""C{pcci workers}, C{pools}, C{show}, C{logs}, C{kill}, C{token} and C{schedule}: reading and acting on a master."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pcci.cli.client import Event
from pcci.cli.config import Config
from pcci.cli.render import (
    LinePrinter,
    counts_text,
    json_out,
    labels_text,
    print_gathered,
    print_summary,
    size_text,
    table,
)
from pcci.nodes import TargetError, fold, select_among

if TYPE_CHECKING:
    from rich.text import Text


def _pool_path(pool_id: str) -> str:
    return "/pools/" + quote(pool_id, safe="")


def _ago(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    seconds = (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(0, seconds):.0f}s ago"


def _used(health: dict[str, Any] | None, what: str) -> str:
    if not health or health.get(f"{what}_total_bytes") is None:
        return "-"
    used, total = health[f"{what}_used_bytes"], health[f"{what}_total_bytes"]
    return f"{size_text(used)}/{size_text(total)}"


def _figure(health: dict[str, Any] | None, key: str, form: str) -> str:
    value = (health or {}).get(key)
    return "-" if value is None else form.format(value)


def _software(worker: dict[str, Any]) -> str:
    """The pcci and Python a worker runs: 2.0.0/py3.11.2 ("-" from a worker too old to say)."""
    pcci, python = worker.get("pcci_version"), worker.get("python_version")
    if not pcci:
        return "-"
    return f"{pcci}/py{python}" if python else pcci


async def show_workers(cfg: Config, every: bool, as_json: bool) -> int:
    workers = await cfg.client().call("GET", "/workers", all="true" if every else None)
    if as_json:
        return json_out(cfg.out, workers)
    terminal = cfg.terminal()
    now = datetime.now(timezone.utc)
    rows = []
    for w in workers:
        health = w.get("health")
        rows.append([
            w["id"],
            "online" if w["online"] else "offline",
            w["address"],
            _figure(health, "cpu_ratio", "{:.0%}"),
            _figure(health, "load_1m", "{:.2f}"),
            _used(health, "memory"),
            _used(health, "disk"),
            _figure(health, "temperature_celsius", "{:.0f}°C"),
            str(w["jobs_running"]),
            labels_text(w.get("labels", {})),
            w.get("auth") or "-",
            _software(w),
            _ago(w.get("last_seen"), now),
        ])
    columns = [
        "NAME", "STATE", "ADDRESS", "CPU", "LOAD", "MEMORY", "DISK", "TEMP", "JOBS", "LABELS", "AUTH", "VERSION",
        "LAST SEEN",
    ]
    terminal.print_table(table(columns, rows))
    if not workers:
        cfg.err.write("pcci: no worker is connected\n")
    return 0


def _duration(pool: dict[str, Any]) -> str:
    if not pool.get("ended_at"):
        return "running"
    start = datetime.fromisoformat(pool["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(pool["ended_at"].replace("Z", "+00:00"))
    return f"{(end - start).total_seconds():.1f}s"


async def show_pools(cfg: Config, limit: int, as_json: bool) -> int:
    pools = await cfg.client().call("GET", "/pools", limit=limit, results="false")
    if as_json:
        return json_out(cfg.out, pools)
    terminal = cfg.terminal()
    now = datetime.now(timezone.utc)
    rows = [
        [
            pool["id"],
            _ago(pool["started_at"], now),
            counts_text(pool.get("counts", {})),
            fold(job["worker_id"] for job in pool["jobs"]),
            _duration(pool),
            pool["cmd"],
        ]
        for pool in pools
    ]
    terminal.print_table(table(["POOL", "STARTED", "JOBS", "WORKERS", "TOOK", "COMMAND"], rows))
    return 0


async def show_pool(cfg: Config, pool_id: str, as_json: bool) -> int:
    pool = await cfg.client().call("GET", _pool_path(pool_id))
    if as_json:
        return json_out(cfg.out, pool)
    terminal = cfg.terminal()
    terminal.out.write(
        f"pool {pool['id']}: {pool['cmd']}\n"
        f"started {pool['started_at']}, {_duration(pool)}, {pool['state']}\n"
    )
    if pool["jobs"]:
        print_gathered(terminal, pool)
    print_summary(terminal, pool)
    return 0


async def show_logs(cfg: Config, pool_id: str, targets: list[str], follow: bool
) -> int:
    client = cfg.client()
    pool = await client.call("GET", _pool_path(pool_id), results="false" if follow else None)
    names = [job["worker_id"] for job in pool["jobs"]]
    if targets:
        try:
            names = select_among(targets, names)
        except TargetError as e:
            from pcci.cli.client import EXIT_USAGE, CLIError

            raise CLIError(str(e), EXIT_USAGE) from None
    wanted = set(names)
    terminal = cfg.terminal()
    printer = LinePrinter(terminal, names)
    if not follow:
        for job in pool["jobs"]:
            if job["worker_id"] in wanted:
                printer.feed(job["worker_id"], "stdout", job.get("result", ""))
                printer.end(job["worker_id"])
        return 0

    def heard(event: Event) -> None:
        data = event.data
        if data.get("worker") not in wanted:
            return
        if event.name == "output":
            printer.feed(data["worker"], data["stream"], data["data"])
        elif event.name == "dropped":
            printer.feed(data["worker"], "stderr", f"[pcci: {data['bytes']} bytes of output dropped]\n")
        elif event.name == "ended":
            printer.end(data["worker"])

    await client.follow(pool["id"], heard)
    return 0


async def kill_pool(cfg: Config, pool_id: str, targets: list[str]) -> int:
    body = {"workers": targets} if targets else None
    answer = await cfg.client().call("PUT", "/kill/" + quote(pool_id, safe=""), body)
    asked = answer["workers"]
    if asked:
        cfg.err.write(f"pcci: kill sent to {len(asked)} jobs: {fold(asked)}\n")
    else:
        cfg.err.write("pcci: nothing to kill: the pool's jobs have ended\n")
    return 0


async def show_token(cfg: Config) -> int:
    answer = await cfg.client().call("GET", "/whoami")
    if not answer["auth"]:
        cfg.out.write(f"no token needed: the master at {cfg.url} runs with --no-auth\n")
    else:
        rights = "read-only" if answer["read_only"] else "may run and kill"
        cfg.out.write(f"{answer['name']} ({rights}) at {cfg.url}\n")
        if answer["scope"]:
            cfg.out.write(f"limited to: {_scope_text(answer['scope'])}\n")
    return 0


def _scope_text(scope: dict[str, Any] | None) -> str:
    """A scope as a tokens file line writes it: C{workers=lab* commands=uptime stdin=yes}."""
    if not scope:
        return "-"
    return " ".join(
        f"{kind}={shlex.quote(item)}"
        for kind, items in scope.items()
        for item in (["yes"] if items is True else [] if items is False else items)
    )


async def create_token(cfg: Config, name: str, read_only: bool, scope: dict[str, Any]) -> int:
    answer = await cfg.client().call("POST", "/tokens", {"name": name, "read_only": read_only, **scope})
    cfg.out.write(answer["token"] + "\n")
    cfg.err.write(f"pcci: token {name} made: this is the only time it is shown\n")
    return 0


async def list_tokens(cfg: Config, as_json: bool) -> int:
    tokens = await cfg.client().call("GET", "/tokens")
    if as_json:
        return json_out(cfg.out, tokens)
    rows = [
        [t["name"], "read" if t["read_only"] else "run", t["source"], _scope_text(t["scope"]),
         t.get("created_by") or ""]
        for t in tokens
    ]
    cfg.terminal().print_table(table(["NAME", "MAY", "FROM", "SCOPE", "MADE BY"], rows))
    return 0


async def revoke_token(cfg: Config, name: str) -> int:
    answer = await cfg.client().call("DELETE", "/tokens/" + quote(name, safe=""))
    cfg.err.write(f"pcci: {answer['message']}\n")
    return 0


# Schedules


def _when(stamp: str | None) -> str:
    """An API time in this machine's time zone."""
    if not stamp:
        return "-"
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def _outcome(schedule: dict[str, Any]) -> Text | str:
    """A schedule's last outcome: its latest pool's states, or why its last run did not start."""
    runs = schedule["runs"]
    if runs and runs[-1]["outcome"] != "started":
        return f"{runs[-1]['outcome']}: {runs[-1].get('why', '')}"
    pools = schedule.get("last_pools") or []
    return counts_text(pools[0]["counts"]) if pools else "-"


async def add_schedule(cfg: Config, body: dict[str, Any]) -> int:
    made = await cfg.client().call("POST", "/schedules", body)
    first = _when(made["next_runs"][0]) if made["next_runs"] else "none: paused"
    cfg.err.write(f"pcci: schedule {made['name']} made: next run {first}\n")
    return 0


async def list_schedules(cfg: Config, as_json: bool) -> int:
    schedules = await cfg.client().call("GET", "/schedules")
    if as_json:
        return json_out(cfg.out, schedules)
    rows = [
        [s["name"], s["cron"] + ("" if s["timezone"] == "UTC" else f" ({s['timezone']})"),
         "paused" if s["paused"] else _when(s["next_runs"][0] if s["next_runs"] else None),
         _outcome(s), str(s["skipped"]), s["cmd"]]
        for s in schedules
    ]
    cfg.terminal().print_table(table(["NAME", "CRON", "NEXT RUN", "LAST OUTCOME", "SKIPPED", "COMMAND"], rows))
    return 0


async def show_schedule(cfg: Config, name: str, as_json: bool) -> int:
    s = await cfg.client().call("GET", "/schedules/" + quote(name, safe=""))
    if as_json:
        return json_out(cfg.out, s)
    out = cfg.out
    out.write(f"{s['name']}: {s['cmd']}\n")
    targets = " ".join(s.get("workers") or []) or "-"
    out.write(f"  on: {targets}" + (f"  labels: {' '.join(s['labels'])}" if s.get("labels") else "") + "\n")
    out.write(f"  cron: {s['cron']} ({s['timezone']})" + ("  PAUSED" if s["paused"] else "") + "\n")
    out.write(f"  next runs: {', '.join(_when(t) for t in s['next_runs']) or '-'}\n")
    out.write(f"  made by {s['created_by'] or '-'} at {_when(s['created_at'])}; skipped {s['skipped']} runs\n")
    for run in s["runs"]:
        what = run.get("pool") or run.get("why", "")
        out.write(f"  {_when(run['at'])}  {run['outcome']:<8} {what}\n")
    return 0


async def change_schedule(cfg: Config, name: str, change: dict[str, Any]) -> int:
    s = await cfg.client().call("PATCH", "/schedules/" + quote(name, safe=""), change)
    state = "paused" if s["paused"] else f"next run {_when(s['next_runs'][0])}"
    cfg.err.write(f"pcci: schedule {name}: {state}\n")
    return 0


async def remove_schedule(cfg: Config, name: str) -> int:
    answer = await cfg.client().call("DELETE", "/schedules/" + quote(name, safe=""))
    cfg.err.write(f"pcci: {answer['message']}\n")
    return 0


async def continue_pool(cfg: Config, pool_id: str) -> int:
    answer = await cfg.client().call("POST", _pool_path(pool_id) + "/continue", {})
    cfg.err.write(f"pcci: {answer['message']}\n")
    return 0
