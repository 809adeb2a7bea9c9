"""Facts and queries through the REST routes (StubTreq): GET /facts, POST /facts/refresh, POST /job's query."""

from __future__ import annotations

import pytest
from fakes import FakeLink
from test_api import Client

DEBIAN = {"os": {"id": "debian", "version": "12"}, "cpus": 4, "memory": 8 * 2**30, "gpu": {"count": 0}}
ROCKY = {"os": {"id": "rocky", "version": "9.3"}, "cpus": 16, "memory": 64 * 2**30, "gpu": {"count": 2}}


@pytest.fixture
def client() -> Client:
    c = Client()
    c.state.roster.set_facts("a", DEBIAN)
    c.state.roster.set_facts("b", ROCKY)
    return c


def test_facts_of_every_worker_or_some_of_them(client: Client) -> None:
    code, _, every = client.request("GET", "/facts")
    assert code == 200 and [(w["name"], w["facts"]) for w in every] == [("a", DEBIAN), ("b", ROCKY)]
    client.state.roster.records["b"].labels["rack"] = "3"
    code, _, some = client.request("GET", "/facts?query=cpus>=8&fields=os.id,cpus,labels.rack,gpu")
    assert [(w["name"], w["fields"]) for w in some] == [
        ("b", {"os.id": "rocky", "cpus": 16, "labels.rack": "3", "gpu": {"count": 2}}),
    ]
    code, _, none = client.request("GET", "/facts?query=cpus>100")
    assert (code, none) == (200, [])


def test_a_query_selects_a_pool_s_workers(client: Client) -> None:
    code, _, body = client.request("POST", "/job", {"cmd": "nvidia-smi", "query": "gpu.count>0 and memory>=32G"})
    assert code == 200, body
    assert [run for run in client.links["b"].runs if run[1] == "nvidia-smi"] and not client.links["a"].runs
    code, _, body = client.request("POST", "/job?dry_run=true",
                                   {"cmd": "true", "workers": ["a", "b"], "query": "os.id=debian"})
    assert (code, body["workers"]) == (200, ["a"])


@pytest.mark.parametrize(("query", "message"), [
    ("os.id=", "query: expected a value at character 7:\n  os.id=\n        ^"),
    ("os.idd=debian", "query: no worker has a fact os.idd"),
    ("os.id=arch", "no worker selected: the online workers matching os.id=arch"),
])
def test_a_query_that_cannot_be_or_selects_nobody_is_a_400(client: Client, query: str, message: str) -> None:
    code, _, body = client.request("POST", "/job", {"cmd": "true", "query": query})
    assert (code, body["message"]) == (400, message)
    code, _, body = client.request("GET", "/facts", params={"query": query})
    assert code == (200 if query == "os.id=arch" else 400)


def test_a_refresh_asks_the_workers_connected_here(client: Client) -> None:
    code, _, body = client.request("POST", "/facts/refresh", {"query": "os.id=rocky"})
    assert (code, body) == (202, {"asked": [], "not_asked": {"b": "its pcci tells no facts: upgrade it"}})
    client.links["b"].tells_facts = True
    code, _, body = client.request("POST", "/facts/refresh", {})
    assert body["asked"] == ["b"] and client.links["b"].facts_refreshes == 1


def test_a_retry_narrowed_by_a_query(client: Client) -> None:
    pool_id = client.submit("false", ["a", "b"])
    for name in ("a", "b"):
        client.state.reports.job_ended(name, pool_id, 1)
    code, _, body = client.request("POST", f"/pools/{pool_id}/retry", {"query": "os.id=rocky"})
    assert code == 200, body
    assert client.links["b"].runs[-1][1] == "false" and len(client.links["a"].runs) == 1
    code, _, body = client.request("POST", f"/pools/{pool_id}/retry", {"query": "cpus>100"})
    assert (code, body["message"]) == (409, f"nothing to retry: no job of pool {pool_id} is failed or killed"
                                             " or timed_out or lost or not_started or cancelled matching the query")


def test_facts_kept_from_before_are_a_worker_s_until_it_tells_them_again() -> None:

    c = Client()
    c.state.roster.remember_facts({"c": (5.0, {"cpus": 2}), "a": (1.0, {"cpus": 1})})
    c.state.roster.join(FakeLink("c"))
    assert c.state.roster.records["c"].facts == {"cpus": 2}
    c.state.roster.set_facts("c", {"cpus": 3})
    assert c.state.roster.records["c"].facts == {"cpus": 3}
    assert c.state.roster.known_facts["c"][1] == {"cpus": 3}


def test_workers_are_listed_by_name_numbers_as_numbers_and_a_limit_cuts_the_list(client: Client) -> None:
    for name in ("b10", "b9", "b100"):
        client.state.roster.join(FakeLink(name))
    code, _, body = client.request("GET", "/facts", params={"fields": "cpus"})
    assert code == 200 and [w["name"] for w in body] == ["a", "b", "b9", "b10", "b100"]
    code, _, body = client.request("GET", "/facts", params={"fields": "cpus", "limit": "2"})
    assert [w["name"] for w in body] == ["a", "b"]
    code, _, body = client.request("GET", "/facts", params={"limit": "0"})
    assert code == 400
