"""
The pcci command line: options, rendering, exit statuses and errors, with
the HTTP layer a StubTreq over a real MasterAPI (no reactor, no network).
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import treq
from click.testing import CliRunner
from test_api import TOKEN, Client
from twisted.internet.defer import ensureDeferred, fail
from twisted.python.failure import Failure

from pcci.cli import main as cli_main
from pcci.cli.client import EXIT_UNREACHABLE, CLIError, Event, EventParser, MasterClient
from pcci.cli.config import Config
from pcci.cli.facts import show_facts
from pcci.cli.main import cli
from pcci.cli.render import (
    LinePrinter,
    Terminal,
    exit_status,
    gather,
    print_gathered,
    progress_text,
    summary_lines,
)
from pcci.cli.run import RunRequest, run_pool
from pcci.cli.views import kill_pool, show_logs, show_token, show_workers


def job(name: str, state: str, status: int | None, result: str = "") -> dict[str, Any]:
    return {"worker_id": name, "state": state, "status": status, "result": result}


# Options


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """What the commands would run: go() is replaced."""
    calls: list[tuple] = []
    monkeypatch.setattr(cli_main, "go", lambda command, cfg, *args: calls.append((command.__name__, cfg, *args)))
    monkeypatch.setenv("PCCI_TOKEN", "sekrit")
    return calls


def test_run_joins_the_words_as_a_shell_would_read_them(asked: list[tuple]) -> None:
    result = CliRunner().invoke(cli, [
        "--url", "http://m:1", "run", "-w", "pi*", "-w", "gpu[1-2]", "-x", "pi3", "-l", "os=linux",
        "-t", "30", "-e", "A=1", "-e", "B=x=y", "--cwd", "/srv", "--batch", "25%",
        "--batch-wait", "2", "--max-failures", "1", "--", "sh", "-c", "df -h | grep sd",
    ])
    assert result.exit_code == 0, result.output
    (name, cfg, request), = asked
    assert name == "run_pool" and cfg.url == "http://m:1" and cfg.token == "sekrit"
    assert request.body() == {
        "cmd": "sh -c 'df -h | grep sd'",
        "workers": ["pi*", "gpu[1-2]"],
        "labels": ["os=linux"],
        "exclude": ["pi3"],
        "env": {"A": "1", "B": "x=y"},
        "timeout": 30.0,
        "cwd": "/srv",
        "batch": "25%",
        "batch_wait": 2.0,
        "max_failures": 1,
    }


def test_run_and_schedule_add_take_the_same_job_options(asked: list[tuple]) -> None:
    options = ["-w", "a", "-t", "5", "--batch-wait", "1", "--notify", "https://h/1", "--notify", "http://h/2",
               "--notify-on", "ended", "--"]
    assert CliRunner().invoke(cli, ["run", *options, "true"]).exit_code == 0
    assert CliRunner().invoke(cli, ["schedule", "add", "n", "--cron", "@daily", *options, "true"]).exit_code == 0
    (_, _, run), (_, _, schedule) = asked
    job = {"cmd": "true", "workers": ["a"], "timeout": 5.0, "batch_wait": 1.0,
           "notify": ["https://h/1", "http://h/2"], "notify_on": "ended"}
    assert run.body() == job
    assert schedule == {**job, "name": "n", "cron": "@daily", "overlap": False, "catch_up": False, "paused": False}


def test_job_options_help_is_the_request_field_s(asked: list[tuple]) -> None:
    from pcci.request import JOB_FIELDS

    for command in (["run"], ["schedule", "add"]):
        text = " ".join(CliRunner().invoke(cli, [*command, "--help"], terminal_width=1000).output.split())
        for name in ("timeout", "cwd", "batch", "max_failures", "notify_on"):
            assert JOB_FIELDS[name].help in text, (command, name)


def test_run_reads_stdin_from_a_file(asked: list[tuple], tmp_path) -> None:
    (tmp_path / "in").write_text("data\n")
    result = CliRunner().invoke(cli, ["run", "-w", "a", "--stdin", str(tmp_path / "in"), "cat"])
    assert result.exit_code == 0
    assert asked[0][2].body()["stdin"] == "data\n"
    result = CliRunner().invoke(cli, ["run", "-w", "a", "--stdin", "-", "cat"], input="typed")
    assert asked[1][2].body()["stdin"] == "typed"


@pytest.mark.parametrize(
    "args, why",
    [
        (["run", "--", "true"], "choose workers"),
        (["run", "-w", "a"], "Missing argument"),
        (["run", "-w", "a", "-e", "novalue", "true"], "KEY=VALUE"),
        (["run", "-w", "a", "--batch", "0", "true"], "--batch"),
        (["run", "-w", "a", "--batch", "150%", "true"], "--batch"),
        (["run", "-w", "a", "-t", "0", "true"], "--timeout"),
        (["run", "-w", "a", "--wait-offline", "1x", "true"], "--wait-offline"),
        (["run", "-w", "a", "--wait-offline", "0", "true"], "--wait-offline"),
        (["retry"], "give a POOL, or --last"),
        (["retry", "p1", "--last"], "give a POOL, or --last"),
        (["run", "-w", "a", "--bogus", "true"], "No such option"),
    ],
)
def test_usage_errors_exit_2_with_one_message(asked: list[tuple], args: list[str], why: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert why in result.output
    assert asked == []


@pytest.mark.parametrize(
    "text, seconds", [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0), ("1.5d", 129600.0)]
)
def test_wait_offline_takes_a_duration(asked: list[tuple], text: str, seconds: float) -> None:
    result = CliRunner().invoke(cli, ["run", "-w", "pi*", "--wait-offline", text, "--", "true"])
    assert result.exit_code == 0, result.output
    assert asked[0][2].body()["wait_offline"] == seconds


def test_the_progress_line_names_the_workers_waited_for() -> None:
    text = "".join(
        piece for piece, _ in progress_text(16, {"pi01": "ok", "pi02": "failed"}, 2, ["pi07", "pi11", "pi12"])
    )
    assert text == "2/16 done · 1 failed · 2 running · 3 waiting: pi[07,11-12]"


def test_a_token_file_that_is_not_there_is_a_usage_error(monkeypatch, asked) -> None:
    monkeypatch.delenv("PCCI_TOKEN")
    result = CliRunner().invoke(cli, ["--token-file", "/nonexistent", "workers"])
    assert result.exit_code == 2 and "/nonexistent does not exist" in result.output


def test_the_token_comes_from_the_environment_then_the_file(monkeypatch, tmp_path, asked) -> None:
    (tmp_path / "tokens").write_text("# comment\nfiletoken read\n")
    CliRunner().invoke(cli, ["--token-file", str(tmp_path / "tokens"), "workers"])
    assert asked[-1][1].token == "sekrit" and asked[-1][1].token_source == "PCCI_TOKEN"
    monkeypatch.delenv("PCCI_TOKEN")
    CliRunner().invoke(cli, ["--token-file", str(tmp_path / "tokens"), "workers"])
    assert asked[-1][1].token == "filetoken"
    assert asked[-1][1].token_source == str(tmp_path / "tokens")


def test_version_and_help_with_examples() -> None:
    assert CliRunner().invoke(cli, ["--version"]).output.startswith("pcci, version ")
    for command in ("run", "workers", "pools", "show", "logs", "kill"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "pcci " + command in result.output


# Rendering


def test_exit_status_is_the_worst_job_clipped() -> None:
    assert exit_status({"jobs": [job("a", "ok", 0), job("b", "ok", 0)]}) == 0
    assert exit_status({"jobs": [job("a", "failed", 2), job("b", "failed", 7)]}) == 7
    assert exit_status({"jobs": [job("a", "lost", -1), job("b", "failed", 7)]}) == 255
    assert exit_status({"jobs": [job("a", "cancelled", -2)]}) == 1
    assert exit_status({"jobs": [job("a", "timed_out", 124)]}) == 124
    assert exit_status({"jobs": [job("a", "failed", 300)]}) == 255


def streams() -> tuple[io.StringIO, io.StringIO, Terminal]:
    out, err = io.StringIO(), io.StringIO()
    return out, err, Terminal(out, err)


def test_lines_are_prefixed_whole_across_chunks_each_stream_to_its_own() -> None:
    out, err, terminal = streams()
    printer = LinePrinter(terminal, ["pi1", "pi2"])
    printer.feed("pi1", "stdout", "hel")
    printer.feed("pi2", "stdout", "other\n")
    printer.feed("pi1", "stdout", "lo\nwor")
    printer.feed("pi1", "stderr", "oops\n")
    assert out.getvalue() == "pi2: other\npi1: hello\n"
    printer.end("pi1")
    assert out.getvalue() == "pi2: other\npi1: hello\npi1: wor\n"
    assert err.getvalue() == "pi1: oops\n"


def test_the_summary_folds_names_by_state_and_exit_status() -> None:
    pool = {
        "jobs": [
            job("pi01", "ok", 0),
            job("pi02", "ok", 0),
            job("pi04", "ok", 0),
            job("pi03", "failed", 2),
            job("pi05", "failed", 137),
            job("pi07", "timed_out", 124),
            job("pi06", "failed", 2),
        ]
    }
    assert [(words, names) for words, _, names in summary_lines(pool)] == [
        ("ok", "pi[01-02,04]"),
        ("failed (exit 2)", "pi[03,06]"),
        ("failed (signal 9)", "pi05"),
        ("timed out", "pi07"),
    ]


def test_gathering_shows_each_output_once_with_who_printed_it() -> None:
    pool = {
        "jobs": [
            job("pi1", "ok", 0, "same\n"),
            job("pi2", "ok", 0, "same\n"),
            job("pi3", "ok", 0, "other\n"),
            job("pi4", "ok", 0, "same\n"),
        ]
    }
    assert gather(pool) == [(["pi1", "pi2", "pi4"], "same\n"), (["pi3"], "other\n")]
    out, _, terminal = streams()
    print_gathered(terminal, pool)
    assert out.getvalue() == (
        "---------------\npi[1-2,4] (3)\n---------------\nsame\n---------------\npi3 (1)\n---------------\nother\n"
    )
    out, _, terminal = streams()
    print_gathered(terminal, pool, diff=True)
    assert "--- pi[1-2,4]\n+++ pi3\n@@ -1 +1 @@\n-same\n+other\n" in out.getvalue()


def test_server_sent_events_parse_in_any_pieces() -> None:
    events: list[Event] = []
    parser = EventParser(events.append)
    stream = b': hi\n\nid: 1\nevent: output\ndata: {"a": 1}\n\nid: 2\r\nevent: pool\r\ndata: {}\r\n\r\n'
    for i in range(len(stream)):
        parser.feed(stream[i : i + 1])
    assert [(e.id, e.name, e.data) for e in events] == [(1, "output", {"a": 1}), (2, "pool", {})]


# Commands over a StubTreq


class TreqHTTP:
    """The command line's HTTP seam over treq's StubTreq: each call a Deferred."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.stub.request(method, url, **kwargs)

    def content(self, response: Any) -> Any:
        return response.content()

    def collect(self, response: Any, feed: Any) -> Any:
        return treq.collect(response, feed)


def config(client: Client, token: str | None = TOKEN) -> tuple[Config, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    http = TreqHTTP(client.stub)
    return Config(url="http://master", token=token, token_source="PCCI_TOKEN", out=out, err=err, http=http), out, err


def drive(client: Client, coroutine: Any, *steps: Any) -> Any:
    """Run a command, doing each step (a callable) once the command waits."""
    d = ensureDeferred(coroutine)
    results: list = []
    d.addBoth(results.append)
    for step in (*steps, None):
        for _ in range(100):
            client.stub.flush()
        if step is not None:
            step()
    if not results:
        d.cancel()
        raise AssertionError("the command had not finished after its last step")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def test_run_prints_lines_live_then_the_summary_and_exits_with_the_worst() -> None:
    client = Client(tokens=True)
    cfg, out, err = config(client)
    state = client.state
    pool_id: list[str] = []

    def start() -> None:
        pool_id.append(next(iter(state.history.pools)))
        state.reports.job_started("a", pool_id[0], 10)
        state.reports.job_started("b", pool_id[0], 11)
        state.reports.job_output("a", pool_id[0], "one\ntw", "stdout")

    def middle() -> None:
        assert out.getvalue() == "a: one\n"  # seen before the job ended
        state.reports.job_output("a", pool_id[0], "o\n", "stdout")
        state.reports.job_output("b", pool_id[0], "bad\n", "stderr")
        state.reports.job_ended("a", pool_id[0], 0)
        state.reports.job_ended("b", pool_id[0], 3)

    status = drive(client, run_pool(cfg, RunRequest(["echo", "x"], targets=("*",))), start, middle)
    assert status == 3
    assert out.getvalue() == "a: one\na: two\n"
    assert err.getvalue() == "b: bad\nok: a\nfailed (exit 3): b\n"


def test_run_detach_prints_the_pool_id() -> None:
    client = Client(tokens=True)
    cfg, out, _ = config(client)
    assert drive(client, run_pool(cfg, RunRequest(["true"], targets=("a",), detach=True))) == 0
    assert out.getvalue().strip() == next(iter(client.state.history.pools))


def test_run_dry_run_prints_the_selected_workers_and_starts_nothing() -> None:
    client = Client(tokens=True)
    cfg, out, _ = config(client)
    request = RunRequest(["reboot"], targets=("*",), exclude=("b",), dry_run=True)
    assert drive(client, run_pool(cfg, request)) == 0
    assert out.getvalue() == "a\n"
    assert client.state.history.pools == {}


def test_whoami_names_the_token_and_its_rights() -> None:
    client = Client(tokens=True)
    cfg, out, _ = config(client)
    assert drive(client, show_token(cfg)) == 0
    assert out.getvalue().startswith("admin (may run and kill) at ")


def test_run_json_prints_only_the_ended_pool() -> None:
    client = Client(tokens=True)
    cfg, out, err = config(client)

    def end() -> None:
        pool_id = next(iter(client.state.history.pools))
        client.state.reports.job_started("a", pool_id, 1)
        client.state.reports.job_output("a", pool_id, "hi\n")
        client.state.reports.job_ended("a", pool_id, 0)

    assert drive(client, run_pool(cfg, RunRequest(["echo", "hi"], targets=("a",), as_json=True)), end) == 0
    pool = json.loads(out.getvalue())
    assert pool["state"] == "ok" and pool["jobs"][0]["result"] == "hi\n"
    assert err.getvalue() == ""


def test_ctrl_c_kills_the_pool_and_exits_130() -> None:
    client = Client(tokens=True)
    cfg, _, err = config(client)

    def interrupt() -> None:
        pool_id = next(iter(client.state.history.pools))
        client.state.reports.job_started("a", pool_id, 1)
        ensureDeferred(cfg.on_interrupt())  # as the first Ctrl-C does

    def killed() -> None:
        pool_id = next(iter(client.state.history.pools))
        assert client.links["a"].kills == [pool_id]
        client.state.reports.job_ended("a", pool_id, 143, "killed")

    assert drive(client, run_pool(cfg, RunRequest(["sleep", "9"], targets=("a",))), interrupt, killed) == 130
    assert "killing pool" in err.getvalue() and "killed: a" in err.getvalue()


def test_errors_say_what_to_do() -> None:
    client = Client(tokens=True)
    cfg, _, _ = config(client, token="wrong")
    with pytest.raises(CLIError) as caught:
        drive(client, show_workers(cfg, False, False))
    assert caught.value.status == EXIT_UNREACHABLE
    assert "refused the token from PCCI_TOKEN" in caught.value.message
    cfg, _, _ = config(client, token=None)
    with pytest.raises(CLIError, match="wants a token: set PCCI_TOKEN"):
        drive(client, show_workers(cfg, False, False))
    cfg, _, _ = config(client)
    with pytest.raises(CLIError, match="no pool nope") as caught:
        drive(client, kill_pool(cfg, "nope", []))
    assert caught.value.status == 2


def test_an_unreachable_master_is_named() -> None:
    class Refusing:
        def request(self, *args: Any, **kwargs: Any) -> Any:
            return fail(ConnectionRefusedError("Connection refused"))

    client = MasterClient("http://10.9.9.9:8080", None, Refusing())
    with pytest.raises(CLIError) as caught:
        drive(Client(), client.call("GET", "/workers"))
    assert caught.value.status == EXIT_UNREACHABLE
    assert caught.value.message.startswith("cannot connect to the master at http://10.9.9.9:8080")


def test_workers_table_and_logs() -> None:
    client = Client(tokens=True)
    cfg, out, _ = config(client)
    assert drive(client, show_workers(cfg, False, False)) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "ADDRESS"]
    assert [line.split()[:2] for line in lines[1:]] == [["a", "online"], ["b", "online"]]
    pool_id = client.submit("x")
    client.state.reports.job_output("a", pool_id, "from a\n")
    client.state.reports.job_output("b", pool_id, "from b\n")
    cfg, out, _ = config(client)
    assert drive(client, show_logs(cfg, pool_id, ["b"], False)) == 0
    assert out.getvalue() == "b: from b\n"


def test_go_runs_a_command_to_its_end_without_a_reactor() -> None:
    from twisted.internet.defer import Deferred

    from pcci.cli.http import Ready, run_now

    async def command(cfg: Config, value: int) -> int:
        return await Ready(value)

    err = io.StringIO()
    with pytest.raises(SystemExit) as done:
        cli_main.go(command, Config(err=err), 4)
    assert done.value.code == 4 and err.getvalue() == ""

    async def refused(cfg: Config) -> int:
        raise CLIError("no such pool", 2)

    with pytest.raises(SystemExit) as done:
        cli_main.go(refused, Config(err=err))
    assert done.value.code == 2 and err.getvalue() == "pcci: no such pool\n"

    async def stuck() -> int:
        return await Deferred()

    with pytest.raises(RuntimeError, match="not ready"):
        run_now(stuck())


def test_ctrl_c_while_following_without_a_handler_ends_the_command() -> None:
    class Interrupted(TreqHTTP):
        def collect(self, response: Any, feed: Any) -> Any:
            raise KeyboardInterrupt

    client = Client(tokens=True)
    pool_id = client.submit("sleep 9", ["a"])
    http = MasterClient("http://master", TOKEN, Interrupted(client.stub))
    with pytest.raises(KeyboardInterrupt):
        drive(client, http.follow(pool_id, lambda event: None))
    killed: list[bool] = []

    async def kill() -> None:
        killed.append(True)
        client.state.reports.job_ended("a", pool_id, 143, "killed")

    http = MasterClient("http://master", TOKEN, Interrupted(client.stub))
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C leaves
        drive(client, http.follow(pool_id, lambda event: None, on_interrupt=kill))
    assert killed == [True]


def test_several_masters_the_first_that_answers_is_used_and_kept() -> None:
    answered = Client(tokens=True)
    tried: list[str] = []

    class Masters(TreqHTTP):
        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            tried.append(url.split("/")[2])
            if url.startswith("http://down"):
                return fail(ConnectionRefusedError("Connection refused"))
            return super().request(method, url.replace("http://up", "http://master"), **kwargs)

    client = MasterClient("http://down:8080, http://up:8080", TOKEN, Masters(answered.stub))
    assert drive(answered, client.call("GET", "/workers"))
    assert drive(answered, client.call("GET", "/workers"))
    assert tried == ["down:8080", "up:8080", "up:8080"]  # kept to the one that answered
    down = MasterClient("http://down:1,http://down:2", TOKEN, Masters(answered.stub))
    with pytest.raises(
        CLIError, match="cannot connect to any master: http://down:1: Connection refused; http://down:2"
    ):
        drive(answered, down.call("GET", "/workers"))


def test_a_scope_is_written_as_a_tokens_line_grants_included() -> None:
    from pcci.cli.views import _scope_text

    scope = {"workers": ["lab*"], "labels": [], "commands": ["make test"], "stdin": True, "cwd": ["/srv/app"]}
    assert _scope_text(scope) == "workers='lab*' commands='make test' stdin=yes cwd=/srv/app"


def test_facts_table_shows_sizes_and_json_keeps_bytes() -> None:
    client = Client(tokens=True)
    client.state.roster.set_facts("a", {"memory": 8 * 2**30, "filesystems": [{"size": 2**40}, {"size": 2**29}]})
    cfg, out, _ = config(client)
    fields = "memory,filesystems.size"
    assert drive(client, show_facts(cfg, {"targets": ["a"], "fields": fields})) == 0
    assert out.getvalue().splitlines()[1].split() == ["a", "8.0GiB", "1.0TiB,512.0MiB"]
    cfg, out, _ = config(client)
    assert drive(client, show_facts(cfg, {"targets": ["a"], "fields": fields, "as_json": True})) == 0
    assert json.loads(out.getvalue())[0]["fields"]["memory"] == 8 * 2**30
