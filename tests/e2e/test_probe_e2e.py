"""
What a hostile probe tried against real daemons, and what now stops it:
pools' notify URLs as a weapon (addresses, redirects, huge answers).
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cluster import Cluster, poll

pytestmark = pytest.mark.e2e

ADMIN = "admin-token-for-the-probe-tests"
ALICE = "alice-token-for-the-probe-tests"
HOOKED = "hooked-token-for-the-probe-test"


class Endpoint:
    """A local HTTP server: answers each POST with C{size} bytes (streamed), or a redirect."""

    def __init__(self, size: int = 0, redirect: str | None = None) -> None:
        self.hits: list[str] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.hits.append(f"POST {self.path}")
                if redirect is not None:
                    self.send_response(303)
                    self.send_header("Location", redirect)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = b"x" * 65536
                sent = 0
                try:
                    while sent < size:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:
                    endpoint.hits.append("dropped")

            def do_GET(self) -> None:
                endpoint.hits.append(f"GET {self.path}")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for endpoint in made:
        endpoint.close()


def start(cluster: Cluster, *args: str) -> None:
    tokens = cluster.directory / "tokens"
    tokens.write_text(
        f"{ADMIN} name=admin\n"
        f"{ALICE} name=alice commands=uptime\n"
        f"{HOOKED} name=hooked commands=uptime notify='http://127.0.0.1:*/hook'\n"
    )
    tokens.chmod(0o600)
    cluster.start_master("--api-token-file", str(tokens), *args)
    cluster.token = ADMIN
    cluster.start_worker("w1")


def notify(cluster: Cluster, url: str, token: str = ADMIN) -> tuple[int, Any]:
    return cluster.request(
        "POST", "/job?wait=30", {"cmd": "uptime", "workers": ["w1"], "notify": [url], "notify_on": "ended"},
        token=token,
    )


def test_notify_reaches_no_loopback_in_any_spelling_and_needs_a_grant(
    own_cluster: Cluster, endpoints: list[Endpoint]
) -> None:
    target = Endpoint()
    endpoints.append(target)
    start(own_cluster)
    port = target.port
    for host in ("127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "localhost", "[::1]",
                 "[::ffff:127.0.0.1]", "169.254.169.254", "0.0.0.0"):
        code, body = notify(own_cluster, f"http://{host}:{port}/hook")
        assert code == 403 and "notify" in body["message"], (host, body)
    # A scoped token needs notify= in its line, and then only its URLs.
    code, body = notify(own_cluster, "https://hooks.example.com/x", token=ALICE)
    assert code == 403 and "may not notify" in body["message"]
    assert target.hits == []


def test_a_redirect_is_never_followed_and_a_huge_answer_is_never_read(
    own_cluster: Cluster, endpoints: list[Endpoint]
) -> None:
    huge = Endpoint(size=600 * 2**20)
    elsewhere = Endpoint()
    bouncer = Endpoint(redirect=elsewhere.url)
    endpoints += [huge, elsewhere, bouncer]
    start(own_cluster, "--notify-allow", "127.0.0.0/8")
    master = psutil.Process(own_cluster.master.pid)
    before = master.memory_info().rss
    for _ in range(3):
        code, body = notify(own_cluster, huge.url, token=HOOKED)
        assert code == 200, body
    code, body = notify(own_cluster, bouncer.url)
    assert code == 200, body
    poll(lambda: huge.hits.count("dropped") >= 3, timeout=30, what="the master dropping the huge answers")
    poll(lambda: bouncer.hits, what="the redirecting endpoint's request")
    grown = master.memory_info().rss - before
    assert grown < 40 * 2**20, f"the master grew by {grown} bytes"
    assert elsewhere.hits == []  # the 303 was not followed, as a GET or at all
    assert own_cluster.request("GET", "/health")[0] == 200


def test_a_name_resolving_to_loopback_is_refused_when_sent(
    own_cluster: Cluster, endpoints: list[Endpoint]
) -> None:
    """A name is checked after resolving it: a delivery to it never leaves."""
    target = Endpoint()
    endpoints.append(target)
    start(own_cluster)
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    if not any(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{name} does not resolve to loopback here")
    code, body = notify(own_cluster, f"http://{name}:{target.port}/hook")
    assert code == 200, body
    log = Path(own_cluster.master.log)
    poll(lambda: "resolves to" in log.read_text(), what="the refused delivery logged")
    assert target.hits == []


def test_a_worker_whose_name_is_taken_stays_up_and_the_audit_log_names_both(own_cluster: Cluster) -> None:
    own_cluster.start_master()
    real = own_cluster.start_worker("db1")
    impostor = own_cluster.start_worker("db1", "--state-dir", str(own_cluster.directory / "impostor"), wait=False)
    log = Path(own_cluster.master.log)
    poll(lambda: "is replaced" in log.read_text(), what="the takeover in the audit log")
    line = next(line for line in log.read_text().splitlines() if "is replaced" in line)
    assert "[pcci.audit" in line and line.count("127.0.0.1:") == 3
    # The real worker was told to come back, not to quit: it is still running and comes back.
    poll(lambda: log.read_text().count("is replaced") >= 2, timeout=30, what="the real worker back")
    assert real.process.poll() is None and impostor.process.poll() is None


HEADERS = (b"content-security-policy: ", b"x-content-type-options: nosniff", b"x-frame-options: deny",
           b"referrer-policy: no-referrer")


def raw(cluster: Cluster, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", cluster.api_port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                return answer
            answer += piece


def test_raw_answers_carry_the_security_headers(own_cluster: Cluster) -> None:
    own_cluster.start_master("--max-body", "200")
    for request, status in (
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", b"400"),  # Twisted's own 400
        (b"NOT AN HTTP REQUEST LINE AT ALL\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n", b"400"),
        (b"POST /job HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{", b"413"),
    ):
        answer = raw(own_cluster, request)
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert answer.startswith(b"HTTP/1.1 " + status), answer
        assert all(header in head for header in HEADERS), answer
        assert b'"message"' in answer


def test_signed_in_clients_do_not_use_up_their_address_s_share(own_cluster: Cluster) -> None:
    """Streams held by a read-only token behind one address lock no one else out."""
    reader = "reader-token-of-the-probe-tests"
    tokens = own_cluster.directory / "tokens"
    tokens.write_text(f"{ADMIN} name=admin\n{reader} read name=grafana\n")
    tokens.chmod(0o600)
    own_cluster.start_master("--api-token-file", str(tokens), "--max-connections", "4")
    own_cluster.token = ADMIN
    own_cluster.start_worker("w1")
    pool = own_cluster.submit("sleep 30", ["w1"])
    streams = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", own_cluster.api_port), timeout=10)
            sock.sendall(
                f"GET /pools/{pool}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\n\r\n".encode()
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            streams.append(sock)
        # Twice the address's share is held, signed in: the admin still gets in.
        code, workers = own_cluster.request("GET", "/workers", timeout=10)
        assert code == 200 and [w["id"] for w in workers] == ["w1"]
    finally:
        for sock in streams:
            sock.close()
        own_cluster.request("PUT", f"/kill/{pool}")


def test_a_push_of_too_many_entries_is_refused_with_the_option_to_change(own_cluster: Cluster, tmp_path: Path) -> None:
    import io
    import tarfile

    own_cluster.start_master("--max-push-entries", "50")
    own_cluster.start_worker("w1")
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as archive:
        for n in range(51):
            archive.addfile(tarfile.TarInfo(f"e{n}"), io.BytesIO(b""))
    code, answer = own_cluster.request(
        "POST", f"/files?workers=w1&dest={tmp_path}/out/&mkdir=1", raw=body.getvalue(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert code == 400 and "more than 50 entries (--max-push-entries)" in answer["message"]
    assert not (tmp_path / "out").exists()
