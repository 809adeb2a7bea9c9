"""
Trust by default, with real daemons: a new master admits workers by
identity only; workers join with tokens, wait for approval, and are
revoked on every master; and every impersonation a probe would try is
refused, with an audit line and a status a supervisor will not restart.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, Daemon, poll

from pcci.identity import EXIT_NAME, EXIT_PIN, EXIT_REVOKED, EXIT_TOKEN, JoinToken
from pcci.wire import PROTOCOL_VERSION, TERMINATOR, encode

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Cluster]:
    """A master as the README starts it, on a new state directory: identities only."""
    c = Cluster(tmp_path, worker_auth="identity")
    try:
        c.start_master("--reconnect-grace", "0")
        yield c
    finally:
        c.stop()


def exit_status(daemon: Daemon, timeout: float = 30) -> int:
    return daemon.process.wait(timeout)


def joiner(c: Cluster, name: str, token: str, *args: str) -> Daemon:
    """A worker that joins with C{token} (its own state directory)."""
    return c._start(
        f"join-{name}-{len(c.daemons)}", "pcci-worker", "--join", f"tls:127.0.0.1:{c.worker_port}",
        "--token", token, "--name", name, "--state-dir", str(c.directory / f"state-{name}"), *args,
    )


def workers(c: Cluster) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in c.request("GET", "/workers")[1]}


def frames_over_tls(c: Cluster, name: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Speak the wire protocol over TLS as the worker C{name} whose identity
    is in C{state-NAME/identity} (or with no certificate if there is none),
    send C{messages}, and read what the master says until it closes.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    directory = c.directory / f"state-{name}" / "identity"
    if (directory / f"{name}.crt").exists():
        context.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
    with socket.create_connection(("127.0.0.1", c.worker_port), timeout=20) as raw:
        with context.wrap_socket(raw) as tls:
            for message in messages:
                tls.sendall(encode(message))
            data = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
    return [json.loads(frame) for frame in data.split(TERMINATOR) if frame.strip()]


def hello(name: str) -> dict[str, Any]:
    return {"code": "hello", "name": name, "version": PROTOCOL_VERSION, "nonce": "n" * 32, "heartbeat": 5}


def test_a_new_master_admits_workers_by_identity_only(fresh: Cluster) -> None:
    c = fresh
    assert not c.secret_file.exists(), "no cluster secret is made any more"
    assert stat.S_IMODE((c.state_dir / "ca.key").stat().st_mode) == 0o600
    assert "pcci join-token create" in c.master.log_text()
    code, made = c.request("POST", "/join-tokens", {"name": "pi01", "labels": {"room": "b12"}})
    assert code == 201 and made["join_command"].startswith("twistd -n pcci-worker --join tls:")
    assert made["join_command"].endswith(f"--token {made['token']} --name pi01")
    assert made["command"].endswith(f"--token {made['token']} --name pi01)")  # the install line
    joiner(c, "pi01", made["token"])
    c.wait_for_workers("pi01")
    seen = workers(c)["pi01"]
    assert seen["auth"] == "identity" and seen["labels"]["room"] == "b12"
    assert c.run("echo over mutual TLS", ["pi01"])["jobs"][0]["result"] == "over mutual TLS\n"
    key = c.directory / "state-pi01" / "identity" / "pi01.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # A worker without an identity, on plain TCP, is told why and not admitted.
    plain = c._start("plain", "pcci-worker", "--master", f"tcp:127.0.0.1:{c.worker_port}", "--name", "plain",
                     "--no-auth", "--state-dir", str(c.directory / "state-plain"))
    poll(lambda: "admits workers by identity only" in plain.log_text(), what="the refusal")
    assert "plain" not in workers(c)
    plain.stop()
    listed = c.request("GET", "/join-tokens")[1]
    assert [(t["name"], t["state"], t["used"]) for t in listed] == [("pi01", "used", 1)]
    assert made["token"] not in json.dumps(listed)


def test_tokens_reused_expired_or_pinned_elsewhere_end_the_worker_with_its_status(fresh: Cluster) -> None:
    c = fresh
    token = c.join_token("lab*")
    first = joiner(c, "lab1", token)
    c.wait_for_workers("lab1")
    reused = joiner(c, "lab2", token)
    assert exit_status(reused) == EXIT_TOKEN
    assert "join token used up" in reused.log_text()
    assert exit_status(joiner(c, "db1", c.join_token("lab*"))) == EXIT_NAME
    expired = c.request("POST", "/join-tokens", {"ttl": 0.001})[1]["token"]
    assert exit_status(joiner(c, "late", expired)) == EXIT_TOKEN
    revoked = c.request("POST", "/join-tokens", {})[1]
    assert c.request("DELETE", f"/join-tokens/{revoked['id']}")[0] == 200
    assert exit_status(joiner(c, "gone", revoked["token"])) == EXIT_TOKEN
    # A pin that is not this master's CA: the worker sends nothing, not even the token.
    parsed = JoinToken.parse(c.join_token("elsewhere"))
    wrong = str(JoinToken(parsed.id, parsed.secret, "A" * 43))
    elsewhere = joiner(c, "elsewhere", wrong)
    assert exit_status(elsewhere) == EXIT_PIN
    assert "does not match the token's pin" in elsewhere.log_text()
    assert "join as 'elsewhere'" not in c.master.log_text()
    (held,) = [t for t in c.request("GET", "/join-tokens")[1] if t["id"] == parsed.id]
    assert held["used"] == 0
    log = c.master.log_text()
    assert "join as 'lab2' from" in log and "used up" in log and "outside this token's pattern" in log
    assert first.alive()


def test_a_certificate_is_its_own_name_only_and_bad_requests_are_refused(fresh: Cluster) -> None:
    c = fresh
    joiner(c, "pi01", c.join_token("pi01"))
    joiner(c, "db1", c.join_token("db1"))
    c.wait_for_workers("pi01", "db1")
    # pi01's certificate asking to be db1.
    (bye,) = frames_over_tls(c, "pi01", [hello("db1")])
    assert bye["code"] == "bye" and bye["reconnect"] is False and "not 'db1'" in bye["reason"]
    assert "worker pi01 at" in c.master.log_text() and "asked for the name db1: refused" in c.master.log_text()
    assert workers(c)["db1"]["online"]
    # No certificate over TLS, and no secret: refused.
    (bye,) = frames_over_tls(c, "nobody", [hello("db1")])
    assert bye["code"] == "bye" and "identity only" in bye["reason"]
    # A join whose request is not one: refused, and the token kept.
    token = c.join_token("x")
    (bye,) = frames_over_tls(c, "x", [{"code": "join", "token": token, "name": "x", "csr": "junk"}])
    assert (bye["code"], bye["refusal"]) == ("bye", "csr")
    assert [t["used"] for t in c.request("GET", "/join-tokens")[1] if t["name"] == "x"] == [0]
    # Garbage on the port drops that connection and nothing else.
    assert frames_over_tls(c, "x", [{"code": "join", "token": 5}]) == []
    with socket.create_connection(("127.0.0.1", c.worker_port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05garbage" * 10)
        while raw.recv(1024):  # a TLS alert, perhaps; then the master closes it
            pass
    assert c.run("true", ["pi01", "db1"])["state"] == "ok"


def test_approval_then_revocation_ends_the_worker_and_its_jobs(fresh: Cluster, marker: str) -> None:
    c = fresh
    worker = joiner(c, "pi07", c.join_token("pi07", approve=True), "--heartbeat", "0.5")
    poll(lambda: [p["name"] for p in c.request("GET", "/workers/pending")[1]] == ["pi07"], what="pi07 pending")
    (pending,) = c.request("GET", "/workers/pending")[1]
    assert pending["fingerprint"].startswith("SHA256:")
    assert "pi07" not in workers(c)
    code, approved = c.request("POST", "/workers/pi07/approve")
    assert code == 200 and approved["state"] == "approved"
    c.wait_for_workers("pi07")
    pool_id = c.submit(f"sleep {marker}", ["pi07"])
    poll(lambda: c.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"], what="the job's start")
    code, revoked = c.request("POST", "/workers/pi07/revoke")
    assert code == 200 and revoked["state"] == "revoked"
    assert exit_status(worker) == EXIT_REVOKED
    job = c.wait_pool(pool_id)["jobs"][0]
    assert job["state"] == "lost" and "revoked" in job["result"]
    assert "pi07" not in workers(c)
    # The worker set its certificate aside; put back, it is refused, and stops again.
    kept = c.directory / "state-pi07" / "identity" / "pi07.crt"
    assert not kept.exists()
    kept.with_name("pi07.crt.revoked").rename(kept)
    again = c._start("again", "pcci-worker", "--master", f"tcp:127.0.0.1:{c.worker_port}", "--name", "pi07",
                     "--state-dir", str(c.directory / "state-pi07"))
    assert exit_status(again) == EXIT_REVOKED
    # Back only by joining again, with a new token.
    joiner(c, "pi07", c.join_token("pi07"))
    c.wait_for_workers("pi07")
    assert c.request("POST", "/workers/pi07/approve")[0] == 409
    assert c.request("POST", "/workers/nobody/revoke")[0] == 404


def test_join_tokens_and_decisions_are_an_administrator_s(tmp_path: Path) -> None:
    c = Cluster(tmp_path, worker_auth="identity")
    try:
        c.start_master_with_tokens("a" * 32, "r" * 32, "--join-address", "master.lab:7000")
        for method, path in (("GET", "/join-tokens"), ("POST", "/join-tokens"), ("GET", "/workers/pending"),
                             ("POST", "/workers/x/revoke"), ("GET", "/identities")):
            code, answer = c.request(method, path, {} if method == "POST" else None, token="r" * 32)
            assert code == 403 and answer["message"], (method, path)
        code, answer = c.request("POST", "/join-tokens", {"uses": 0})
        assert code == 400 and "uses" in answer["message"]
        code, answer = c.request("POST", "/join-tokens", {"name": "pi07"})
        assert code == 201 and answer["join_command"].startswith("twistd -n pcci-worker --join tls:master.lab:7000 ")
        assert " --join tls:master.lab:7000 " in answer["command"]  # the install line
    finally:
        c.stop()


def test_joining_approval_and_revocation_across_two_masters(tmp_path: Path, pg_url: str, marker: str) -> None:
    """Two masters on PostgreSQL share the CA (a copy of its files), the tokens and the identities."""
    m1, m2 = Cluster(tmp_path / "m1", worker_auth="identity"), Cluster(tmp_path / "m2", worker_auth="identity")
    try:
        m1.start_master("--db", pg_url, "--name", "m1", "--reconnect-grace", "0")
        shutil.copytree(m1.state_dir, m2.state_dir)
        m2.start_master("--db", pg_url, "--name", "m2", "--reconnect-grace", "0")
        token = m1.join_token("w*", approve=True)  # made on m1, spent on m2
        worker = joiner(m2, "w1", token, "--heartbeat", "0.5")
        poll(lambda: [p["name"] for p in m1.request("GET", "/workers/pending")[1]] == ["w1"], what="pending on m1")
        assert m1.request("POST", "/workers/w1/approve")[0] == 200
        for master in (m1, m2):
            master.wait_for_workers("w1")
        assert workers(m1)["w1"]["master"] == "m2"
        pool_id = m1.submit(f"sleep {marker}", ["w1"])
        poll(lambda: m1.request("GET", f"/pools/{pool_id}")[1]["jobs"][0]["pid"], what="the job's start")
        assert m1.request("POST", "/workers/w1/revoke")[0] == 200  # m2 holds it, and closes it
        assert exit_status(worker) == EXIT_REVOKED
        # Its job ends lost at once (m1 hears that w1 left m2, and why).
        job = m1.wait_pool(pool_id)["jobs"][0]
        assert job["state"] == "lost" and "left master m2: identity revoked" in job["result"], job
        poll(lambda: "w1" not in workers(m1), what="w1 gone from m1")
        # A second join with the spent token, at either master: refused.
        assert exit_status(joiner(m1, "w2", token)) == EXIT_TOKEN
    finally:
        m2.stop()
        m1.stop()
