"""The REST routes, through treq's StubTreq."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import FakeLink
from hypothesis import given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock

from pcci.auth import APIToken
from pcci.master.access.tokens import TokenBook
from pcci.master.cluster.state import ClusterState, Settings
from pcci.master.http.api import MasterAPI
from pcci.master.http.base import APIParts
from pcci.master.http.common import MAX_BODY, MAX_COMMAND, APILimits
from pcci.wire import FIGURES

URL = "http://master"
JSON = {"Content-Type": ["application/json"]}


TOKEN = "t" * 32
READER = "r" * 32


class Client:
    """
    A StubTreq over a master with workers a and b, answering synchronously.
    With C{tokens}, the API wants them, and the client sends C{TOKEN}.
    """

    def __init__(self, tokens: bool | list[APIToken] = False, **limits: Any) -> None:
        self.clock = Clock()
        self.state = ClusterState(self.clock, Settings(retention=60, max_pools=limits.pop("max_pools", 100)))
        self.links = {name: FakeLink(name) for name in ("a", "b")}
        for link in self.links.values():
            self.state.roster.join(link)
        self.headers = dict(JSON)
        book = None
        if tokens:
            self.headers["Authorization"] = [f"Bearer {TOKEN}"]
            extra = tokens if isinstance(tokens, list) else []
            book = TokenBook([APIToken(TOKEN.encode(), False), APIToken(READER.encode(), True), *extra])
        api = MasterAPI(self.state, limits=APILimits(**limits), parts=APIParts(tokens=book))
        self.stub = StubTreq(api.resource())

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        kwargs.setdefault("headers", self.headers)
        d = self.stub.request(method, URL + path, data=body, **kwargs)
        return self.result(d)

    def result(self, d: Any) -> Any:
        (response,) = self._settle(d)
        (body,) = self._settle(response.content())
        return response.code, response.headers, json.loads(body)

    def result_of(self, d: Any) -> Any:
        return self._settle(d)[0]

    def _settle(self, d: Any) -> list:
        """Pump the in-memory connection until C{d} fires (answers may come in pieces)."""
        results: list = []
        d.addBoth(results.append)
        for _ in range(10_000):
            if results:
                break
            self.stub.flush()
        return results

    def submit(self, cmd: str = "uname -a", workers: list[str] | None = None) -> str:
        code, _, body = self.request("POST", "/job", {"cmd": cmd, "workers": workers or ["a", "b"]})
        assert code == 200, body
        return body["pool_id"]


@pytest.fixture
def client() -> Client:
    return Client()


def test_submit_and_read_a_pool(client: Client) -> None:
    pool_id = client.submit("echo hi", ["a"])
    assert client.links["a"].runs == [(pool_id, "echo hi")]
    client.state.reports.job_output("a", pool_id, "hi\n")
    client.state.reports.job_ended("a", pool_id, 0)
    code, headers, body = client.request("GET", f"/pool/{pool_id}")
    assert code == 200
    assert headers.getRawHeaders("content-type") == ["application/json"]
    assert isinstance(body, list) and body[0]["id"] == pool_id
    assert body[0]["jobs"][0]["result"] == "hi\n"
    code, _, single = client.request("GET", f"/pools/{pool_id}")
    assert single == body[0]
    code, _, every = client.request("GET", "/pools")
    assert [p["id"] for p in every] == [pool_id]


def test_workers(client: Client) -> None:
    client.submit("sleep 5", ["a"])
    code, _, body = client.request("GET", "/workers")
    assert code == 200
    assert [(w["id"], w["jobs_running"]) for w in body] == [("a", 1), ("b", 0)]
    assert body[0]["address"] == "192.0.2.1:5000"
    assert body[0]["connected_at"] == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"{", "invalid JSON"),
        (b"", "JSON body is required"),
        (b"[]", "JSON object"),
        ({"workers": ["a"]}, "cmd"),
        ({"cmd": "", "workers": ["a"]}, "cmd"),
        ({"cmd": "   ", "workers": ["a"]}, "cmd"),
        ({"cmd": 5, "workers": ["a"]}, "cmd"),
        ({"cmd": "echo 'unbalanced", "workers": ["a"]}, "parsed"),
        (b'{"cmd": "echo \\ud800", "workers": ["a"]}', "Unicode"),
        ({"cmd": "echo \x00", "workers": ["a"]}, "NUL"),
        ({"cmd": "x" * (MAX_COMMAND + 1), "workers": ["a"]}, "cmd"),
        ({"cmd": "true"}, "workers"),
        ({"cmd": "true", "workers": []}, "workers"),
        ({"cmd": "true", "workers": "a"}, "workers"),
        ({"cmd": "true", "workers": ["a", 3]}, "workers"),
        ({"cmd": "true", "workers": ["a", "ghost"]}, "ghost"),
        ({"cmd": "true", "workers": ["a"], "timeout": 0}, "timeout"),
        ({"cmd": "true", "workers": ["a"], "timeout": "5"}, "timeout"),
        ({"cmd": "true", "workers": ["a"], "timeout": True}, "timeout"),
        ({"cmd": "true", "workers": ["a"], "env": ["A=1"]}, "env"),
        ({"cmd": "true", "workers": ["a"], "env": {"A": 1}}, "env: A"),
        ({"cmd": "true", "workers": ["a"], "env": {"A": "x\x00"}}, "env: A"),
        ({"cmd": "true", "workers": ["a"], "env": {"1A": "x"}}, "env"),
        ({"cmd": "true", "workers": ["a"], "cwd": 3}, "cwd"),
        ({"cmd": "true", "workers": ["a"], "cwd": "/tmp\x00"}, "cwd"),
        ({"cmd": "true", "workers": ["a"], "stdin": ["x"]}, "stdin"),
        ({"cmd": "true", "workers": ["a"], "batch": 0}, "batch"),
        ({"cmd": "true", "workers": ["a"], "batch": "0%"}, "batch"),
        ({"cmd": "true", "workers": ["a"], "batch": "101%"}, "batch"),
        ({"cmd": "true", "workers": ["a"], "batch": 1.5}, "batch"),
        ({"cmd": "true", "workers": ["a"], "batch_wait": -1}, "batch_wait"),
        ({"cmd": "true", "workers": ["a"], "max_failures": 0}, "max_failures"),
        ({"cmd": "true", "workers": ["a"], "labels": "gpu"}, "labels"),
        ({"cmd": "true", "workers": ["a"], "labels": ["a b"]}, "label"),
        ({"cmd": "true", "workers": ["a"], "exclude": [1]}, "exclude"),
        ({"cmd": "true", "workers": ["z*"]}, "matches no worker"),
        ({"cmd": "true", "workers": ["a"], "exclude": ["a"]}, "no worker selected"),
        # One rule for jobs and schedules: a field no request has is refused, not ignored.
        ({"cmd": "true", "workers": ["a"], "timout": 5}, "a pool request has no timout"),
        ({"cmd": "true", "workers": ["a"], "name": "x", "cron": "@daily"}, "has no cron, name"),
    ],
)
def test_bad_submissions_are_400_and_create_nothing(
    client: Client, body: Any, expected: str
) -> None:
    code, _, answer = client.request("POST", "/job", body)
    assert code == 400
    assert expected in answer["message"]
    assert client.state.history.pools == {}
    assert client.links["a"].runs == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": ["application/x-www-form-urlencoded"]},
        {},  # none at all: what docs/api.md says is a 415, not a pool
        {"Content-Type": ["text/plain"]},
        {"Content-Type": ["application/jsonx"]},
        {"Content-Type": [""]},
    ],
)
def test_a_json_body_not_sent_as_json_is_415_and_starts_nothing(client: Client, headers: dict) -> None:
    code, answer_headers, answer = client.request("POST", "/job", {"cmd": "true", "workers": ["a"]}, headers=headers)
    assert code == 415 and "application/json" in answer["message"]
    assert answer_headers.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    assert client.state.history.pools == {} and client.links["a"].runs == []


def test_json_with_a_charset_is_json(client: Client) -> None:
    code, _, _ = client.request(
        "POST", "/job", {"cmd": "true", "workers": ["a"]},
        headers={"Content-Type": ["application/json; charset=utf-8"]},
    )
    assert code == 200


def test_body_over_the_limit_is_413(client: Client) -> None:
    code, _, answer = client.request("POST", "/job", b" " * (MAX_BODY + 1))
    assert code == 413 and "message" in answer


def test_unknown_route_and_wrong_method(client: Client) -> None:
    code, _, answer = client.request("GET", "/nowhere")
    assert code == 404 and "message" in answer
    code, headers, answer = client.request("DELETE", "/pools")
    assert code == 405 and "DELETE" in answer["message"]
    assert "GET" in headers.getRawHeaders("allow")[0]


def test_unknown_pool_is_404(client: Client) -> None:
    for method, path in [("GET", "/pool/x"), ("GET", "/pools/x"), ("PUT", "/kill/x")]:
        code, _, answer = client.request(method, path)
        assert code == 404 and "x" in answer["message"]


def test_expired_pool_is_404(client: Client) -> None:
    pool_id = client.submit("true", ["a"])
    client.state.reports.job_ended("a", pool_id, 0)
    client.state.reports.job_ended("b", pool_id, 0)
    client.clock.advance(60)
    code, _, _ = client.request("GET", f"/pool/{pool_id}")
    assert code == 404


def test_kill_all_workers_or_the_named_ones(client: Client) -> None:
    pool_id = client.submit("sleep 100")
    code, _, body = client.request("PUT", f"/kill/{pool_id}", {"workers": ["b"]})
    assert code == 200 and body["workers"] == ["b"]
    assert client.links["a"].kills == [] and client.links["b"].kills == [pool_id]
    code, _, body = client.request("PUT", f"/kill/{pool_id}")
    assert body["workers"] == ["a", "b"]
    code, _, body = client.request("PUT", f"/kill/{pool_id}", {"workers": ["zed"]})
    assert code == 400 and "zed" in body["message"]


def test_kill_takes_globs_and_node_sets_among_the_pools_workers(client: Client) -> None:
    pool_id = client.submit("sleep 100")
    code, _, body = client.request("PUT", f"/kill/{pool_id}", {"workers": ["*"]})
    assert body["workers"] == ["a", "b"]
    code, _, body = client.request("PUT", f"/kill/{pool_id}", {"workers": ["c*"]})
    assert code == 400 and "matches no worker" in body["message"]


def test_submit_with_wait_answers_with_the_ended_pool(client: Client) -> None:
    fired: list = []
    d = client.stub.post(
        URL + "/job?wait=30",
        data=json.dumps({"cmd": "echo hi", "workers": ["a"]}).encode(),
        headers=client.headers,
    )
    d.addCallback(lambda r: fired.append(r) or r)
    client.stub.flush()
    assert fired == []
    (pool_id, _), = client.links["a"].runs
    client.state.reports.job_started("a", pool_id, 3)
    client.state.reports.job_output("a", pool_id, "hi\n")
    client.state.reports.job_ended("a", pool_id, 0)
    code, _, body = client.result(d)
    assert code == 200 and body["pool_id"] == pool_id
    assert body["message"] == "pool started on 1 workers"
    assert body["pool"]["state"] == "ok" and body["pool"]["jobs"][0]["result"] == "hi\n"


def test_submit_with_wait_answers_after_the_wait_if_still_running(client: Client) -> None:
    d = client.stub.post(
        URL + "/job?wait=5",
        data=json.dumps({"cmd": "sleep 9", "workers": ["a"]}).encode(),
        headers=client.headers,
    )
    client.stub.flush()
    client.clock.advance(5)
    code, _, body = client.result(d)
    assert code == 200 and body["pool"]["state"] == "running"
    assert body["pool"]["jobs"][0]["state"] == "pending"


def test_workers_show_their_labels() -> None:
    client = Client()
    client.state.roster.leave(client.links["b"], "gone")
    client.links["b"].labels = {"os": "linux", "gpu": ""}
    client.state.roster.join(client.links["b"])
    _, _, body = client.request("GET", "/workers")
    assert {w["id"]: w["labels"] for w in body} == {"a": {}, "b": {"os": "linux", "gpu": ""}}
    code, _, answer = client.request("POST", "/job", {"cmd": "true", "labels": ["gpu"]})
    assert code == 200 and client.links["b"].runs and not client.links["a"].runs


def long_poll(client: Client, path: str) -> tuple[list, Any]:
    """Start a GET that may be held; return what it answered so far, and a reader."""
    fired: list = []
    client.stub.get(f"{URL}{path}", headers=client.headers).addBoth(fired.append)
    client.stub.flush()

    def body() -> Any:
        client.stub.flush()
        (response,) = fired
        return json.loads(client.result_of(response.content()))

    return fired, body


def test_long_poll_answers_when_the_pool_ends(client: Client) -> None:
    pool_id = client.submit("sleep 1", ["a"])
    fired, body = long_poll(client, f"/pool/{pool_id}?wait=30")
    client.clock.advance(5)
    client.stub.flush()
    assert fired == []
    client.state.reports.job_ended("a", pool_id, 0)
    assert body()[0]["status"] == 0


def test_long_poll_is_capped_and_answers_the_running_pool(client: Client) -> None:
    pool_id = client.submit("sleep 1000", ["a"])
    fired, body = long_poll(client, f"/pools/{pool_id}?wait=3600")
    client.clock.advance(59.9)
    client.stub.flush()
    assert fired == []
    client.clock.advance(0.1)
    assert body()["status"] is None


@pytest.mark.parametrize("wait", ["soon", "-1", "nan"])
def test_bad_wait_is_400(client: Client, wait: str) -> None:
    pool_id = client.submit("true", ["a"])
    code, _, answer = client.request("GET", f"/pool/{pool_id}?wait={wait}")
    assert code == 400 and "wait" in answer["message"]


def test_unexpected_errors_are_json_500(client: Client, monkeypatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(client.state.dispatcher, "submit", broken)
    code, _, answer = client.request("POST", "/job", {"cmd": "true", "workers": ["a"]})
    assert code == 500
    assert "boom" not in answer["message"]


def test_health_and_openapi(client: Client) -> None:
    assert client.request("GET", "/health")[2] == {"status": "ok"}
    code, _, document = client.request("GET", "/openapi.json")
    assert code == 200 and document["openapi"].startswith("3.")
    assert {"/job", "/pool/{pool_id}", "/pools", "/workers", "/kill/{pool_id}"} <= set(document["paths"])


def test_too_many_workers_in_a_pool() -> None:
    client = Client(max_workers=1)
    code, _, answer = client.request("POST", "/job", {"cmd": "true", "workers": ["a", "b"]})
    assert code == 400 and "more than 1" in answer["message"]


def test_full_of_running_pools_is_503() -> None:
    client = Client(max_pools=1)
    client.submit("sleep 9", ["a"])
    code, _, answer = client.request("POST", "/job", {"cmd": "true", "workers": ["a"]})
    assert code == 503 and "running" in answer["message"]


class TestTokens:
    def test_a_valid_token_passes(self) -> None:
        client = Client(tokens=True)
        assert client.request("GET", "/workers")[0] == 200
        client.submit("true", ["a"])

    @pytest.mark.parametrize(
        "authorization", [None, "Bearer", "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
    )
    def test_no_or_wrong_token_is_401(self, authorization: str | None) -> None:
        client = Client(tokens=True)
        headers = dict(JSON)
        if authorization:
            headers["Authorization"] = [authorization]
        for method, path in [("GET", "/workers"), ("POST", "/job"), ("GET", "/nowhere")]:
            code, response_headers, answer = client.request(method, path, {}, headers=headers)
            assert code == 401 and "token" in answer["message"]
            assert response_headers.getRawHeaders("www-authenticate") == ['Bearer realm="pcci"']
        assert client.state.history.pools == {}

    def test_read_only_token_reads_but_cannot_write(self) -> None:
        client = Client(tokens=True)
        pool_id = client.submit("sleep 9", ["a"])
        reader = {**JSON, "Authorization": [f"Bearer {READER}"]}
        assert client.request("GET", f"/pools/{pool_id}", headers=reader)[0] == 200
        code, _, answer = client.request("PUT", f"/kill/{pool_id}", headers=reader)
        assert code == 403 and "read-only" in answer["message"]
        code, _, _ = client.request("POST", "/job", {"cmd": "true", "workers": ["a"]}, headers=reader)
        assert code == 403
        assert client.links["a"].kills == [] and len(client.state.history.pools) == 1

    def test_health_needs_no_token(self) -> None:
        client = Client(tokens=True)
        code, _, answer = client.request("GET", "/health", headers=JSON)
        assert (code, answer) == (200, {"status": "ok"})


class TestHealth:
    FIGURES = {"cpu_ratio": 0.5, "load_1m": 1.5, "memory_used_bytes": 2048, "temperature_celsius": None}

    def test_workers_carry_their_latest_figures(self, client: Client) -> None:
        client.clock.advance(10)
        client.state.roster.heartbeat("a", self.FIGURES)
        code, _, body = client.request("GET", "/workers")
        a = body[0]
        assert (a["online"], a["last_seen"], a["heartbeat_seconds"]) == (True, "1970-01-01T00:00:10.000Z", 5.0)
        assert a["health"]["cpu_ratio"] == 0.5 and a["health"]["temperature_celsius"] is None
        assert body[1]["health"] is None  # b never sent a heartbeat

    def test_offline_workers_only_with_all(self, client: Client) -> None:
        client.state.roster.leave(client.links["b"], "disconnected")
        assert [w["id"] for w in client.request("GET", "/workers")[2]] == ["a"]
        code, _, every = client.request("GET", "/workers?all=true")
        assert [(w["id"], w["online"]) for w in every] == [("a", True), ("b", False)]
        assert client.request("GET", "/workers?all=maybe")[0] == 400

    def test_one_worker_with_its_history(self, client: Client) -> None:
        for second in (1, 2):
            client.clock.advance(1)
            client.state.roster.heartbeat("a", {**self.FIGURES, "cpu_ratio": second / 10})
        code, _, a = client.request("GET", "/workers/a")
        assert code == 200 and a["id"] == "a"
        assert a["history"]["time"] == [1.0, 2.0]
        assert a["history"]["cpu_ratio"] == [0.1, 0.2]
        assert a["history"]["temperature_celsius"] == [None, None]
        assert client.request("GET", "/workers/nobody")[0] == 404

    def test_metrics(self, client: Client) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        client.state.roster.heartbeat("a", self.FIGURES)
        done = client.submit("true", ["a", "b"])
        client.clock.advance(0.2)
        client.state.reports.job_ended("a", done, 0)
        client.state.reports.job_ended("b", done, 2)
        client.submit("sleep 9", ["a"])
        response = client.result_of(client.stub.get(f"{URL}/metrics"))
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
        text = client.result_of(response.text())
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("pcci_worker_up", (("worker", "a"),))] == 1
        assert samples[("pcci_worker_cpu_usage_ratio", (("worker", "a"),))] == 0.5
        assert samples[("pcci_worker_load_average", (("period", "1m"), ("worker", "a")))] == 1.5
        assert ("pcci_worker_temperature_celsius", (("worker", "a"),)) not in samples
        assert samples[("pcci_pools_total", (("outcome", "failure"),))] == 1
        assert samples[("pcci_jobs_total", (("outcome", "success"),))] == 1
        assert samples[("pcci_jobs_total", (("outcome", "failure"),))] == 1
        assert samples[("pcci_job_duration_seconds_count", ())] == 2
        assert samples[("pcci_job_duration_seconds_bucket", (("le", "0.25"),))] == 2
        assert samples[("pcci_pools_running", ())] == 1
        assert samples[("pcci_pools_retained", ())] == 1
        assert samples[("pcci_workers_connected", ())] == 2


def test_grafana_dashboard_queries_only_exported_metrics(client: Client) -> None:
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).parents[2] / "examples" / "grafana-dashboard.json").read_text()
    )
    client.state.roster.heartbeat("a", {name: 1.0 for name in FIGURES})
    pool_id = client.submit("true", ["a"])
    client.state.reports.job_ended("a", pool_id, 0)
    client.state.reports.job_ended("b", pool_id, 0)
    exported = client.result_of(client.result_of(client.stub.get(f"{URL}/metrics")).text())
    names = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"pcci_\w+", target["expr"])
    }
    assert {"pcci_worker_up", "pcci_worker_temperature_celsius", "pcci_worker_cpu_usage_ratio"} <= names
    for name in names:
        assert re.search(rf"^{name}[{{ ]", exported, re.M), name


def test_deeply_nested_json_is_a_json_400(client: Client) -> None:
    code, _, body = client.request("POST", "/job", b"[" * 100_000 + b"]" * 100_000)
    assert code == 400 and "nested too deeply" in body["message"]


def test_a_path_that_is_not_utf8_is_a_json_400(client: Client) -> None:
    code, headers, body = client.request("GET", "/pool/%ff")
    assert code == 400 and "UTF-8" in body["message"]
    assert headers.getRawHeaders("content-type") == ["application/json"]


def test_pools_page_newest_first_with_a_next_link(client: Client) -> None:
    made = []
    for i in range(5):
        client.clock.advance(1)
        made.append(client.submit(f"echo {i}", ["a"]))
    code, headers, page = client.request("GET", "/pools?limit=2&results=false")
    assert code == 200 and [p["id"] for p in page] == made[:2:-1][:2] == [made[4], made[3]]
    assert "result" not in page[0]["jobs"][0] and page[0]["counts"] == {"pending": 1}
    (link,) = headers.getRawHeaders("link")
    assert link.endswith('rel="next"') and f"before={made[3]}" in link
    code, headers, rest = client.request("GET", link[1 : link.index(">")])
    assert [p["id"] for p in rest] == [made[2], made[1]]
    code, _, body = client.request("GET", "/pools?limit=0")
    assert code == 400 and "limit" in body["message"]
    code, _, body = client.request("GET", "/pools?state=sleepy")
    assert code == 400 and "state" in body["message"]


class TestWhoAmI:
    def test_names_the_token_and_what_it_may_do(self) -> None:
        client = Client(tokens=True)
        assert client.request("GET", "/whoami")[2] == {
            "auth": True, "name": "admin", "read_only": False, "admin": True, "scope": None,
        }
        reader = {**JSON, "Authorization": [f"Bearer {READER}"]}
        assert client.request("GET", "/whoami", headers=reader)[2]["read_only"] is True
        assert client.request("GET", "/whoami", headers=JSON)[0] == 401

    def test_without_auth(self, client: Client) -> None:
        assert client.request("GET", "/whoami")[2] == {
            "auth": False, "name": None, "read_only": False, "admin": True, "scope": None,
        }


class TestDryRun:
    def test_tells_the_workers_and_starts_nothing(self, client: Client) -> None:
        code, _, body = client.request(
            "POST", "/job?dry_run=true", {"cmd": "reboot", "workers": ["*"], "exclude": ["b"]}
        )
        assert (code, body) == (200, {"workers": ["a"], "message": "would start on 1 workers"})
        assert client.state.history.pools == {}
        assert client.links["a"].runs == []

    @pytest.mark.parametrize(
        "body, message",
        [
            ({"cmd": "true", "workers": ["nobody"]}, "nobody"),
            ({"cmd": "", "workers": ["a"]}, "cmd"),
            ({"cmd": "true", "workers": ["a"], "timeout": -1}, "timeout"),
        ],
    )
    def test_checks_the_whole_body(self, client: Client, body: Any, message: str) -> None:
        code, _, answer = client.request("POST", "/job?dry_run=1", body)
        assert code == 400 and message in answer["message"]

    def test_a_read_only_token_cannot_ask(self) -> None:
        client = Client(tokens=True)
        reader = {**JSON, "Authorization": [f"Bearer {READER}"]}
        body = {"cmd": "true", "workers": ["a"]}
        assert client.request("POST", "/job?dry_run=true", body, headers=reader)[0] == 403


def test_a_pool_without_its_results(client: Client) -> None:
    pool_id = client.submit("echo hi", ["a"])
    client.state.reports.job_output("a", pool_id, "hi\n", "stdout")
    code, _, body = client.request("GET", f"/pools/{pool_id}?results=false")
    assert code == 200 and "result" not in body["jobs"][0]
    assert client.request("GET", f"/pools/{pool_id}")[2]["jobs"][0]["result"] == "hi\n"


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.text(), st.integers(), st.none()), max_size=5),
       st.text(min_size=1, max_size=40))
def test_an_object_in_pieces_is_its_json(value: dict, long_text: str) -> None:
    from pcci.master.http import streaming
    value = {**value, "result": long_text * 4000}  # over one piece of characters
    pieces = list(streaming.object_pieces(value))
    assert b"".join(pieces) == json.dumps(value).encode()
    # At worst 12 bytes a character: a character past U+FFFF, as two escapes.
    assert max(len(p) for p in pieces) <= 12 * streaming.STRING_PIECE + 100


@pytest.mark.parametrize(
    "body",
    [
        {"cmd": "true", "workers": ["a", "b", "c"]},
        {"cmd": "true", "workers": ["w[1-3]"]},
        {"cmd": "true", "workers": ["*"], "labels": []},
        {"cmd": "true", "workers": ["a"], "exclude": ["x", "y", "z"]},
    ],
)
def test_too_many_workers_says_which_option_raises_the_limit(body: dict) -> None:
    client = Client(max_workers=2)
    client.links["c"] = FakeLink("c")
    client.state.roster.join(client.links["c"])
    code, _, answer = client.request("POST", "/job", body)
    assert code == 400 and "more than 2" in answer["message"], answer
    assert answer["message"].endswith("a pool holds at most that many (the master's --max-workers raises it)")
