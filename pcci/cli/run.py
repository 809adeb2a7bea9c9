"""C{pcci run}: start a pool, show its output as it comes, sum it up."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pcci.cli import EXIT_INTERRUPTED
from pcci.cli.client import CLIError, Event
from pcci.cli.config import Config
from pcci.cli.render import (
    LinePrinter,
    exit_status,
    print_gathered,
    print_summary,
    progress_text,
)
from pcci.nodes import fold


@dataclass
class RunRequest:
    """What C{pcci run} was asked."""

    command: list[str]
    targets: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    query: str | None = None
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: str | None = None
    batch: int | str | None = None
    batch_wait: float | None = None
    max_failures: int | str | None = None
    canary: int | None = None
    pause_every: int | None = None
    wait_offline: float | None = None
    notify: tuple[str, ...] = ()
    notify_on: str = "failed"
    gather: bool = False
    diff: bool = False
    as_json: bool = False
    detach: bool = False
    dry_run: bool = False

    def body(self) -> dict[str, Any]:
        """The C{POST /job} body: the words joined as a shell would read them."""
        body: dict[str, Any] = {"cmd": shlex.join(self.command)}
        if self.targets:
            body["workers"] = list(self.targets)
        for key in ("labels", "exclude", "notify"):
            if getattr(self, key):
                body[key] = list(getattr(self, key))
        if self.notify_on != "failed":
            body["notify_on"] = self.notify_on
        if self.env:
            body["env"] = self.env
        for key in ("query", "timeout", "cwd", "stdin", "batch", "batch_wait", "max_failures", "canary", "pause_every",
                    "wait_offline"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        return body


class RunView:
    """Follows a pool's events: live lines, the progress line, job ends."""

    def __init__(self, cfg: Config, pool: dict[str, Any], live: bool) -> None:
        self.terminal = cfg.terminal()
        names = [job["worker_id"] for job in pool["jobs"]]
        self.size = len(names)
        self.printer = LinePrinter(self.terminal, names) if live else None
        self.started: set[str] = set()
        self.ended: dict[str, str] = {}
        #: Workers whose job waits for them to connect.
        self.waiting = {job["worker_id"] for job in pool["jobs"] if job["state"] == "waiting"}
        self._show_progress()

    def event(self, event: Event) -> None:
        data = event.data
        if event.name == "output" and self.printer is not None:
            self.printer.feed(data["worker"], data["stream"], data["data"])
        elif event.name == "dropped" and self.printer is not None:
            self.printer.feed(data["worker"], "stderr", f"[pcci: {data['bytes']} bytes of output dropped]\n")
        elif event.name == "started":
            self.started.add(data["worker"])
            self.waiting.discard(data["worker"])
        elif event.name == "ended":
            self.ended[data["worker"]] = data["state"]
            self.waiting.discard(data["worker"])
            if self.printer is not None:
                self.printer.end(data["worker"])
        else:
            return
        self._show_progress()

    def _show_progress(self) -> None:
        running = len(self.started - set(self.ended))
        self.terminal.progress(progress_text(self.size, self.ended, running, self.waiting))


async def run_pool(cfg: Config, request: RunRequest) -> int:
    client = cfg.client()
    if request.dry_run:
        answer = await client.call("POST", "/job", request.body(), dry_run="true")
        cfg.out.write("".join(f"{name}\n" for name in answer["workers"]))
        return 0
    if request.detach:
        answer = await client.call("POST", "/job", request.body())
        cfg.out.write(answer["pool_id"] + "\n")
        return 0
    # ?wait=0: the answer holds the pool, so its workers are known at once.
    answer = await client.call("POST", "/job", request.body(), wait=0)
    return await follow_pool(cfg, client, answer, request.gather, request.diff, request.as_json)


async def retry_pool(cfg: Config, pool_id: str | None, states: list[str] | None, options: dict[str, Any]) -> int:
    """C{pcci retry}: a new pool of the jobs of C{pool_id} (or the latest of this token's) that failed."""
    client = cfg.client()
    if pool_id is None:
        me = await client.call("GET", "/whoami")
        query = {"limit": "1", "results": "false"}
        if me["name"] is not None:
            query["submitted_by"] = me["name"]
        latest = await client.call("GET", "/pools", **query)
        if not latest:
            raise CLIError("no pool to retry: this token has started none (or they expired)")
        pool_id = latest[0]["id"]
    body: dict[str, Any] = {}
    if states:
        body["states"] = states
    if options["wait_offline"] is not None:
        body["wait_offline"] = options["wait_offline"]
    if options.get("query"):
        body["query"] = options["query"]
    path = f"/pools/{quote(pool_id, safe='')}/retry"
    if options["detach"]:
        answer = await client.call("POST", path, body)
        cfg.out.write(answer["pool_id"] + "\n")
        return 0
    answer = await client.call("POST", path, body, wait=0)
    cfg.err.write(f"pcci: retrying pool {pool_id} on {fold(job['worker_id'] for job in answer['pool']['jobs'])}\n")
    return await follow_pool(cfg, client, answer, options["gather"], False, options["as_json"])


async def follow_pool(
    cfg: Config, client: Any, answer: dict[str, Any], gather: bool, diff: bool, as_json: bool
) -> int:
    """
    Follow a pool just started (C{answer}: its C{?wait=0} answer) to its
    end: live lines unless C{gather} or C{as_json}, the progress line, and
    at the end the pool as JSON, or its outputs gathered, then its summary.
    Ctrl-C kills it.  The exit status, as C{pcci run}'s.
    """
    pool_id = answer["pool_id"]
    view = RunView(cfg, answer["pool"], live=not (gather or as_json))
    interrupted: list[bool] = []

    async def interrupt() -> None:
        interrupted.append(True)
        view.terminal.write(
            "stderr", f"pcci: killing pool {pool_id} (Ctrl-C again to leave it)\n"
        )
        try:
            await client.call("PUT", f"/kill/{pool_id}")
        except CLIError as e:
            view.terminal.write("stderr", f"pcci: cannot kill the pool: {e.message}\n")

    cfg.on_interrupt = interrupt
    try:
        pool = await client.follow(pool_id, view.event, on_interrupt=interrupt)
    finally:
        view.terminal.done()
    if as_json:
        cfg.out.write(json.dumps(pool, indent=2) + "\n")
        return EXIT_INTERRUPTED if interrupted else exit_status(pool)
    if gather:
        print_gathered(view.terminal, pool, diff)
    print_summary(view.terminal, pool)
    return EXIT_INTERRUPTED if interrupted else exit_status(pool)
