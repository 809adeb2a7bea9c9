"""
Schedules and webhooks end to end, with real daemons: a schedule (on a
test-only seconds field) runs its pools on real workers, once across a
master restart (and once with two masters on PostgreSQL), and not while paused; a local HTTP server receives signed
deliveries, one tried again after a 500, while a hanging one delays nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, poll
from test_masters_e2e import masters
from test_restart_e2e import restart_master

pytestmark = pytest.mark.e2e


@pytest.fixture
def every_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masters started now take cron lines with seconds (tests only)."""
    monkeypatch.setenv("PCCI_TEST_CRON_SECONDS", "1")


def pools_of(cluster: Cluster, schedule: str) -> list[dict[str, Any]]:
    return cluster.request("GET", f"/pools?schedule={schedule}&results=false")[1]


def test_a_schedule_runs_its_pools_once_each_across_a_restart_and_not_while_paused(
    own_cluster: Cluster, every_second: None
) -> None:
    own_cluster.start_master()
    own_cluster.start_worker("w1")
    code, tried = own_cluster.request(
        "POST", "/schedules?dry_run=true", {"name": "tick", "cron": "@daily", "cmd": "true", "workers": ["w1"]}
    )
    assert code == 200 and len(tried["next_runs"]) == 3 and tried["next_runs"][0].endswith("T00:00:00.000Z")
    code, wrong = own_cluster.request(
        "POST", "/schedules?dry_run=true", {"name": "tick", "cron": "61 * * * *", "cmd": "true", "workers": ["w1"]}
    )
    assert code == 400 and "cron" in wrong["message"]
    assert own_cluster.request("GET", "/schedules")[1] == []  # a dry run keeps nothing
    code, made = own_cluster.request(
        "POST", "/schedules", {"name": "tick", "cron": "* * * * * *", "cmd": "echo tock", "workers": ["w*"]}
    )
    assert code == 201, made
    assert len(made["next_runs"]) == 3
    poll(lambda: len(pools_of(own_cluster, "tick")) >= 2, what="two runs")
    pool = own_cluster.wait_pool(pools_of(own_cluster, "tick")[-1]["id"])
    assert pool["state"] == "ok" and pool["schedule"] == "tick" and pool["jobs"][0]["result"] == "tock\n"

    restart_master(own_cluster)
    own_cluster.wait_for_workers("w1")
    poll(lambda: len(own_cluster.request("GET", "/schedules/tick")[1]["runs"]) >= 4, what="runs after the restart")
    runs = own_cluster.request("GET", "/schedules/tick")[1]["runs"]
    started = [run["at"] for run in runs if run["outcome"] == "started"]
    assert len(started) == len(set(started))  # no run twice
    ats = [p["started_at"] for p in pools_of(own_cluster, "tick")]
    assert len(ats) == len({at[:19] for at in ats})  # one pool a second at most

    code, paused = own_cluster.request("PATCH", "/schedules/tick", {"paused": True})
    assert code == 200 and paused["paused"] and paused["next_runs"] == []
    code, changed = own_cluster.request("PATCH", "/schedules/tick", {"cmd": "echo tick", "timeout": 30})
    assert code == 200 and changed["cmd"] == "echo tick" and changed["timeout"] == 30 and changed["paused"]
    code, changed = own_cluster.request("PATCH", "/schedules/tick", {"timeout": None})  # null: back to none
    assert code == 200 and "timeout" not in changed
    count = len(pools_of(own_cluster, "tick"))
    # Another schedule is the clock: two of its runs later, tick has none more.
    own_cluster.request(
        "POST", "/schedules", {"name": "clock", "cron": "* * * * * *", "cmd": "true", "workers": ["w1"]}
    )
    poll(lambda: len(pools_of(own_cluster, "clock")) >= 2, what="two runs of the clock")
    assert len(pools_of(own_cluster, "tick")) == count
    assert own_cluster.request("DELETE", "/schedules/tick")[0] == 200
    assert [s["name"] for s in own_cluster.request("GET", "/schedules")[1]] == ["clock"]


class Receiver:
    """A local HTTP server that keeps what it receives; its first answer may be a 500."""

    def __init__(self, first_status: int = 200, hang: bool = False) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.first_status = first_status
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                if hang:
                    time.sleep(30)
                    return
                status = receiver.first_status if len(receiver.received) == 1 else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def test_a_failed_pool_is_told_signed_and_again_after_a_500(own_cluster: Cluster, receivers: list[Receiver]) -> None:
    flaky = Receiver(first_status=500)
    hanging = Receiver(hang=True)
    receivers += [flaky, hanging]
    own_cluster.start_master("--webhook", hanging.url, "--webhook", flaky.url, "--public-url", "http://pcci.lab/")
    own_cluster.start_worker("w1")
    own_cluster.start_worker("w2")
    started = time.monotonic()
    failed = own_cluster.run("sh -c 'exit 3'", ["w1"])
    assert failed["state"] == "failed"
    assert own_cluster.run("true", ["w2"])["state"] == "ok"  # not told: --webhook-on failed
    # The hanging endpoint held up neither the pools nor the other endpoint.
    poll(lambda: len(flaky.received) >= 2, timeout=30, what="the delivery tried again")
    assert time.monotonic() - started < 20
    secret = (own_cluster.state_dir / "webhook-secret").read_text().strip().encode()
    for headers, body in flaky.received:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Pcci-Signature"], expected)
    message = json.loads(flaky.received[-1][1])
    assert message["pool"] == failed["id"] and message["state"] == "failed"
    assert message["workers"] == {"failed": ["w1"]} and message["counts"] == {"failed": 1}
    assert message["link"] == f"http://pcci.lab/#/pools/{failed['id']}"
    assert "output" not in message
    assert len(flaky.received) == 2  # the ok pool was not told
    # Counted once the master has read the endpoint's answer, a moment
    # after the endpoint had the request.
    sent = 'pcci_webhook_deliveries_total{result="sent"} 1.0'
    poll(lambda: sent in metrics_text(own_cluster), what="the delivery counted as sent")
    assert 'pcci_webhook_deliveries_total{result="retried"}' in metrics_text(own_cluster)


def test_a_pool_s_own_notify_url_hears_every_end_with_slack_text(
    own_cluster: Cluster, receivers: list[Receiver]
) -> None:
    slack = Receiver()
    receivers.append(slack)
    own_cluster.start_master("--webhook-format", "slack", "--notify-allow", "127.0.0.0/8")
    own_cluster.start_worker("w1")
    code, body = own_cluster.request(
        "POST", "/job?wait=30", {"cmd": "echo hi", "workers": ["w1"], "notify": [slack.url], "notify_on": "ended"}
    )
    assert body["pool"]["state"] == "ok"
    poll(lambda: slack.received, what="the delivery")
    text = json.loads(slack.received[0][1])["text"]
    assert text.startswith("pcci pool OK: `echo hi` (1 ok)")


def metrics_text(cluster: Cluster) -> str:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.api_port}/metrics", headers={"Authorization": f"Bearer {cluster.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_with_two_masters_each_run_starts_once(tmp_path: Path, pg_url: str, every_second: None) -> None:
    """Both masters on one PostgreSQL know the schedule; one starts each run."""
    m1, m2 = masters(tmp_path, pg_url)
    try:
        m1.start_worker("w1", wait=False)
        m2.start_worker("w2", wait=False)
        m1.wait_for_workers("w1", "w2")
        began = time.time()
        code, made = m1.request(
            "POST", "/schedules", {"name": "tick", "cron": "* * * * * *", "cmd": "true", "workers": ["w*"]}
        )
        assert code == 201, made
        poll(lambda: m2.request("GET", "/schedules/tick")[0] == 200, what="m2 to know the schedule")
        poll(lambda: len(pools_of(m2, "tick")) >= 6, timeout=30, what="six runs")
        m2.request("PATCH", "/schedules/tick", {"paused": True})
        # One pool a second at most (each master starting each run would make two).
        assert len(pools_of(m1, "tick")) <= time.time() - began + 1
        runs = m1.request("GET", "/schedules/tick")[1]["runs"]
        assert all(run["outcome"] == "started" for run in runs), runs
        assert len({run["at"] for run in runs}) == len(runs)
    finally:
        m2.stop()
        m1.stop()
