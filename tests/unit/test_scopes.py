"""Scoped tokens, retries and jobs waiting for offline workers, through the REST routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fakes import FakeLink
from test_api import JSON, Client
from twisted.logger import formatEvent, globalLogPublisher

from pcci import auth
from pcci.auth import APIToken
from pcci.scopes import Scope, ScopeError

ALICE = "alice-" + "a" * 26


AS_ALICE = {**JSON, "Authorization": [f"Bearer {ALICE}"]}


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def audit_lines() -> Any:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "pcci.audit":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def lab() -> Client:
    """Workers a, b and gpu1 (label gpu); alice may use a and gpu*, running echo or uptime."""
    scope = Scope(workers=("a", "gpu*"), commands=("echo *", "uptime"))
    client = Client(tokens=[APIToken(ALICE.encode(), False, "alice", scope)])
    link = FakeLink("gpu1", labels={"gpu": "1"})
    client.links["gpu1"] = link
    client.state.roster.join(link)
    return client


class TestScope:
    def test_commands_wildcards_stay_in_one_command(self) -> None:
        scope = Scope(commands=("make test*", "uptime"))
        assert scope.allows_command("make test")
        assert scope.allows_command("make test -j4")
        assert scope.allows_command("uptime")
        for cmd in ("make test; rm -rf /", "make test && id", "make test | sh", "make test $(id)",
                    "make test `id`", "make test > /etc/passwd", "make test\nid", "uptime -p"):
            assert not scope.allows_command(cmd), cmd

    @pytest.mark.parametrize(
        "cmd, allowed",
        [
            ("/opt/tools/bin/check", True),
            ("/opt/tools/bin/check --all -v", True),
            ("/opt/tools/bin/./check", True),  # made normal, it is the same program
            ("/opt/tools//bin/check", True),
            ("//opt/tools/bin/check", True),
            ("/opt/tools/bin/../../../bin/sh", False),  # the probe's escape
            ("/opt/tools/bin/../bin/check", False),  # .. anywhere: a link on the way could lead out
            ("/opt/tools/bin/check/../../../../bin/sh", False),
            ("/opt/tools/bin/..", False),
            ("/opt/tools/bin/sub/check", False),  # * never matches /
            ("/opt/tools/bin/", False),
            ('"/opt/tools/bin/"../../../bin/sh', False),  # quoting cannot smuggle what runs
            ("/opt/tools/bin/che'ck'", False),
            ("/opt/tools/bin/che\\ck", False),
            ("check", False),  # a relative program is not one of the directory's
            ("./check", False),
            ("bin/check", False),
            ("opt/tools/bin/check", False),
        ],
    )
    def test_a_wildcard_never_climbs_out_of_the_program_s_directory(self, cmd: str, allowed: bool) -> None:
        assert Scope(commands=("/opt/tools/bin/*",)).allows_command(cmd) is allowed

    @pytest.mark.parametrize(
        "cmd, allowed",
        [
            ("nvidia-smi", True),
            ("nvidia-smi -q -d TEMP", True),
            ("nvidia-smi-extra", True),
            ("nvidia-smi/../../bin/sh", False),
            ("nvidia-smi/x", False),
            ("./nvidia-smi", False),
            ("tools/nvidia-smi", False),
        ],
    )
    def test_a_relative_program_pattern_matches_only_programs_on_the_path(self, cmd: str, allowed: bool) -> None:
        assert Scope(commands=("nvidia-smi*",)).allows_command(cmd) is allowed

    def test_workers_and_labels_both_hold(self) -> None:
        scope = Scope(workers=("lab[01-20]",), labels=("gpu", "os=linux"))
        assert scope.allows_worker("lab03", {"gpu": "", "os": "linux"})
        assert not scope.allows_worker("lab21", {"gpu": "", "os": "linux"})
        assert not scope.allows_worker("lab03", {"os": "linux"})
        assert scope.outside(["lab[19-22]", "lab*"], {}, 100) == ["lab21", "lab22"]

    def test_bad_scopes_say_what_is_wrong(self) -> None:
        with pytest.raises(ScopeError, match="labels"):
            Scope(labels=("no spaces",))
        with pytest.raises(ScopeError, match="workers"):
            Scope(workers=("pi[9-1]",))
        with pytest.raises(ScopeError, match="only workers, labels, commands, stdin, cwd, notify, shell, not hosts"):
            Scope.from_json({"hosts": ["a"]})
        assert Scope.from_json({"workers": []}) is None

    def test_a_tokens_file_line_is_split_as_a_shell_would(self, tmp_path: Path) -> None:
        file = tmp_path / "tokens"
        file.write_text(
            "# the lab\n"
            f"{ALICE} name=alice workers='lab[01-20]' labels=gpu commands='nvidia-smi*' commands='uptime'\n"
            f"{'t' * 20} read name=teacher  # sees everything\n"
        )
        alice, teacher = auth.read_tokens(file)
        assert alice.scope == Scope(("lab[01-20]",), ("gpu",), ("nvidia-smi*", "uptime"))
        assert not alice.admin and not alice.read_only
        assert teacher.scope is None and teacher.read_only

    def test_a_bad_line_names_its_line(self, tmp_path: Path) -> None:
        file = tmp_path / "tokens"
        file.write_text(f"{ALICE} hosts=a\n")
        with pytest.raises(auth.AuthConfigError, match=":1: expected"):
            auth.read_tokens(file)
        file.write_text(f"{ALICE} labels='a b'\n")
        with pytest.raises(auth.AuthConfigError, match=":1: labels"):
            auth.read_tokens(file)


class TestScopedToken:
    def test_a_worker_outside_its_scope_is_refused_and_written_down(
        self, lab: Client, audit_lines: list[str]
    ) -> None:
        code, _, body = lab.request("POST", "/job", {"cmd": "uptime", "workers": ["a", "b"]}, headers=AS_ALICE)
        assert code == 403 and body["message"] == "outside this token's scope: b"
        assert any("refused alice POST /job: outside this token's scope: b" in line for line in audit_lines)
        assert lab.links["a"].runs == []

    def test_globs_and_labels_select_only_within_its_scope(self, lab: Client) -> None:
        code, _, body = lab.request("POST", "/job?dry_run=true", {"cmd": "uptime", "workers": ["*"]}, headers=AS_ALICE)
        assert code == 200 and body["workers"] == ["a", "gpu1"]
        code, _, body = lab.request("POST", "/job", {"cmd": "uptime", "labels": ["gpu"]}, headers=AS_ALICE)
        assert code == 200
        assert [run[1] for run in lab.links["gpu1"].runs] == ["uptime"]
        assert lab.links["a"].runs == [] and lab.links["b"].runs == []

    @pytest.mark.parametrize("cmd", ["rm -rf /", "echo hi; rm -rf /", "uptime -p", "echo $(id)"])
    def test_a_command_outside_its_patterns_is_refused(self, lab: Client, cmd: str) -> None:
        code, _, body = lab.request("POST", "/job", {"cmd": cmd, "workers": ["a"]}, headers=AS_ALICE)
        assert code == 403
        assert body["message"].startswith(f"this token may not run {cmd!r}: it may run 'echo *', 'uptime'")

    def test_no_env_and_no_files_with_command_patterns(self, lab: Client) -> None:
        code, _, body = lab.request(
            "POST", "/job", {"cmd": "uptime", "workers": ["a"], "env": {"LD_PRELOAD": "/tmp/x.so"}},
            headers=AS_ALICE,
        )
        assert code == 403 and "env" in body["message"]
        code, _, body = lab.request("POST", "/fetches?path=/etc/passwd&workers=a", b"", headers=AS_ALICE)
        assert code == 403 and "files need a token without commands=" in body["message"]

    @pytest.mark.parametrize(
        "extra",
        [
            {"stdin": "all: ; id\n"},
            {"stdin": ""},
            {"cwd": "/tmp"},
            {"cwd": "/"},
            {"env": {"MAKEFLAGS": "-f/dev/stdin"}},
        ],
    )
    def test_stdin_and_cwd_need_their_grant_with_command_patterns(
        self, lab: Client, extra: dict[str, Any], audit_lines: list[str]
    ) -> None:
        code, _, body = lab.request("POST", "/job", {"cmd": "uptime", "workers": ["a"], **extra}, headers=AS_ALICE)
        assert code == 403 and next(iter(extra)) in body["message"], body
        assert lab.links["a"].runs == []
        assert any("refused alice POST /job" in line for line in audit_lines)

    def test_a_line_grants_stdin_and_some_directories(self) -> None:
        granted = "make-" + "m" * 26
        scope = Scope(commands=("make test",), stdin=True, cwd=("/srv/app", "/srv/builds/*"))
        client = Client(tokens=[APIToken(granted.encode(), False, "make", scope)])
        as_make = {**JSON, "Authorization": [f"Bearer {granted}"]}
        for cwd, code in (
            ("/srv/app", 200),
            ("/srv/app/", 200),
            ("/srv/builds/42", 200),
            ("/srv/builds/42/x", 403),
            ("/srv/builds/../../etc", 403),
            ("/srv/other", 403),
            ("srv/app", 403),
        ):
            got = client.request(
                "POST", "/job", {"cmd": "make test", "workers": ["a"], "stdin": "x", "cwd": cwd}, headers=as_make
            )[0]
            assert got == code, cwd

    def test_a_tokens_line_names_its_grants(self, tmp_path: Path) -> None:
        file = tmp_path / "tokens"
        file.write_text(
            f"{ALICE} name=ci commands='make test' stdin=yes cwd=/srv/app notify='https://hooks.example.com/*'\n"
        )
        (ci,) = auth.read_tokens(file)
        assert ci.scope == Scope(
            commands=("make test",), stdin=True, cwd=("/srv/app",), notify=("https://hooks.example.com/*",)
        )
        assert ci.scope.describe() == ("commands=make test stdin=yes cwd=/srv/app notify=https://hooks.example.com/*")
        assert ci.describe()["scope"]["stdin"] is True
        file.write_text(f"{ALICE} commands=x cwd=/srv/../etc\n")
        with pytest.raises(auth.AuthConfigError, match="cwd"):
            auth.read_tokens(file)

    def test_it_sees_only_its_workers_and_its_pools(self, lab: Client) -> None:
        theirs = lab.submit("uptime", ["b"])
        code, _, body = lab.request("POST", "/job", {"cmd": "echo hi", "workers": ["a"]}, headers=AS_ALICE)
        mine = body["pool_id"]
        workers = lab.request("GET", "/workers", headers=AS_ALICE)[2]
        assert [w["id"] for w in workers] == ["a", "gpu1"]
        assert lab.request("GET", "/workers/b", headers=AS_ALICE)[0] == 404
        assert [p["id"] for p in lab.request("GET", "/pools", headers=AS_ALICE)[2]] == [mine]
        assert lab.request("GET", "/pools?submitted_by=admin", headers=AS_ALICE)[0] == 403
        for method, path in (
            ("GET", f"/pools/{theirs}"),
            ("GET", f"/pool/{theirs}"),
            ("GET", f"/pools/{theirs}/events"),
            ("PUT", f"/kill/{theirs}"),
            ("POST", f"/pools/{theirs}/retry"),
        ):
            code, _, body = lab.request(method, path, headers=AS_ALICE)
            assert code == 404 and body["message"] == f"no pool {theirs} (unknown, or expired)", path
        assert lab.request("PUT", f"/kill/{mine}", headers=AS_ALICE)[0] == 200
        # The administrator sees both.
        assert len(lab.request("GET", "/pools")[2]) == 2

    def test_it_may_not_manage_tokens(self, lab: Client) -> None:
        code, _, body = lab.request("GET", "/tokens", headers=AS_ALICE)
        assert code == 403 and "only a full token without a scope" in body["message"]
        assert lab.request("GET", "/tokens")[2][2] == {
            "name": "alice",
            "read_only": False,
            "source": "file",
            "scope": {"workers": ["a", "gpu*"], "labels": [], "commands": ["echo *", "uptime"]},
        }

    def test_whoami_tells_its_scope(self, lab: Client) -> None:
        body = lab.request("GET", "/whoami", headers=AS_ALICE)[2]
        assert body["name"] == "alice" and body["admin"] is False
        assert body["scope"]["commands"] == ["echo *", "uptime"]


def end(client: Client, pool_id: str, worker: str, status: int, reason: str | None = None) -> None:
    reports = client.state.reports
    reports.job_started(worker, pool_id, 1)
    reports.job_ended(worker, pool_id, status, reason)


class TestRetry:
    def test_runs_again_only_where_it_did_not_end_ok(self, client: Client) -> None:
        first = client.submit("make test", ["a", "b"])
        end(client, first, "a", 0)
        end(client, first, "b", 2)
        code, _, body = client.request("POST", f"/pools/{first}/retry?wait=0")
        assert code == 200, body
        assert body["pool"]["retry_of"] == first
        assert [job["worker_id"] for job in body["pool"]["jobs"]] == ["b"]
        assert client.links["b"].runs[-1] == (body["pool_id"], "make test")
        assert len(client.links["a"].runs) == 1

    def test_states_chooses_which_jobs(self, client: Client) -> None:
        first = client.submit("true", ["a", "b"])
        end(client, first, "a", 1)
        end(client, first, "b", -1, "timed_out")
        code, _, body = client.request("POST", f"/pools/{first}/retry", {"states": ["timed_out"]})
        assert code == 200
        assert client.links["b"].runs[-1] == (body["pool_id"], "true") and len(client.links["a"].runs) == 1

    def test_nothing_to_retry_is_a_conflict(self, client: Client) -> None:
        first = client.submit("true", ["a"])
        end(client, first, "a", 0)
        code, _, body = client.request("POST", f"/pools/{first}/retry")
        assert code == 409 and body["message"].startswith("nothing to retry")

    @pytest.mark.parametrize("body", [{"states": ["ok"]}, {"states": []}, {"states": "failed"}, {"hosts": 1}, []])
    def test_a_bad_body_is_a_400(self, client: Client, body: Any) -> None:
        first = client.submit("true", ["a"])
        assert client.request("POST", f"/pools/{first}/retry", body)[0] == 400

    def test_an_offline_worker_needs_wait_offline(self, client: Client) -> None:
        first = client.submit("true", ["a", "b"])
        end(client, first, "a", 1)
        client.state.roster.leave(client.links["b"], "gone")
        client.clock.advance(client.state.roster.reconnect_grace)  # b's job ends lost
        code, _, body = client.request("POST", f"/pools/{first}/retry")
        assert code == 409 and "workers offline: a,b" not in body["message"]
        assert "workers offline: b" in body["message"] and "wait_offline" in body["message"]
        code, _, body = client.request("POST", f"/pools/{first}/retry?wait=0", {"wait_offline": 60})
        assert code == 200
        assert {job["worker_id"]: job["state"] for job in body["pool"]["jobs"]} == {"a": "pending", "b": "waiting"}


class TestWaitOffline:
    def test_a_job_waits_for_its_worker_and_runs_when_it_connects(self, client: Client) -> None:
        client.state.roster.leave(client.links["b"], "gone")
        code, _, body = client.request("POST", "/job", {"cmd": "true", "workers": ["a", "b"]})
        assert code == 400 and "b" in body["message"]
        code, _, body = client.request("POST", "/job?wait=0", {"cmd": "true", "workers": ["*"], "wait_offline": 60})
        pool_id = body["pool_id"]
        assert body["pool"]["counts"] == {"pending": 1, "waiting": 1}
        assert body["pool"]["wait_offline"] == 60
        client.clock.advance(30)
        client.state.roster.join(client.links["b"])
        assert client.links["b"].runs[-1] == (pool_id, "true")
        end(client, pool_id, "a", 0)
        end(client, pool_id, "b", 0)
        assert client.request("GET", f"/pools/{pool_id}")[2]["state"] == "ok"

    def test_a_worker_that_does_not_come_back_ends_not_started(self, client: Client) -> None:
        client.state.roster.leave(client.links["b"], "gone")
        code, _, body = client.request("POST", "/job", {"cmd": "true", "workers": ["b"], "wait_offline": 60})
        pool_id = body["pool_id"]
        client.clock.advance(60)
        pool = client.request("GET", f"/pools/{pool_id}")[2]
        assert pool["state"] == "failed" and pool["jobs"][0]["state"] == "not_started"
        assert "did not connect within 60 s" in pool["jobs"][0]["result"]
        client.state.roster.join(client.links["b"])
        assert client.links["b"].runs == []

    def test_a_kill_cancels_the_waiting_jobs(self, client: Client) -> None:
        client.state.roster.leave(client.links["b"], "gone")
        code, _, body = client.request("POST", "/job", {"cmd": "true", "workers": ["b"], "wait_offline": 60})
        pool_id = body["pool_id"]
        assert client.request("PUT", f"/kill/{pool_id}")[2]["workers"] == ["b"]
        assert client.request("GET", f"/pools/{pool_id}")[2]["counts"] == {"cancelled": 1}
        client.state.roster.join(client.links["b"])
        assert client.links["b"].runs == []

    def test_a_rolling_pool_starts_waiting_jobs_within_its_window(self, client: Client) -> None:
        client.state.roster.leave(client.links["b"], "gone")
        code, _, body = client.request(
            "POST", "/job", {"cmd": "true", "workers": ["a", "b"], "batch": 1, "wait_offline": 60}
        )
        pool_id = body["pool_id"]
        client.state.roster.join(client.links["b"])
        assert client.links["b"].runs == []  # a's job holds the one slot
        end(client, pool_id, "a", 0)
        assert client.links["b"].runs == [(pool_id, "true")]
