"""
What a master hands a new machine: its own wheel, the install script with
the hashes written in, the one line pinning the script, and the routes that
serve them without a token (through treq's StubTreq).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

import pcci
from pcci.auth import APIToken
from pcci.master.access.tokens import TokenBook
from pcci.master.cluster.state import ClusterState
from pcci.master.http.api import MasterAPI
from pcci.master.http.base import APIParts
from pcci.master.install.kit import Kit, read_wheelhouse, render
from pcci.master.install.wheel import build

TOKEN = "t" * 32


@pytest.fixture(scope="module")
def wheel() -> Any:
    return build()


@pytest.fixture
def kit(wheel: Any, tmp_path: Path) -> Kit:
    (tmp_path / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"six")
    (tmp_path / "notes.txt").write_text("not served")
    (tmp_path / "bad name;rm -rf.whl").write_bytes(b"x")
    wheelhouse = read_wheelhouse(tmp_path)
    return Kit(wheel, wheelhouse, render(wheel, wheelhouse))


def test_the_master_s_wheel_is_the_same_byte_for_byte_and_holds_what_the_master_runs(wheel: Any) -> None:
    assert build().sha256 == wheel.sha256 == hashlib.sha256(wheel.data).hexdigest()
    assert wheel.name == f"pcci-{pcci.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(wheel.data)) as archive:
        names = archive.namelist()
        info = f"pcci-{pcci.__version__}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        record = archive.read(f"{info}/RECORD").decode().splitlines()
        for line in record[:-1]:  # every file but RECORD, with its hash and size
            name, digest, size = line.rsplit(",", 2)
            data = archive.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
    assert {"pcci/__init__.py", "pcci/worker/tap.py", "pcci/master/install/install.sh",
            "twisted/plugins/pcci_worker.py", "twisted/plugins/pcci_master.py"} <= set(names)
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert f"Version: {pcci.__version__}\n" in metadata and "Requires-Dist: psutil" in metadata
    assert "Requires-Python: >=3.9" in metadata
    assert record[-1] == f"{info}/RECORD,,"


def test_the_script_carries_the_hashes_of_what_it_installs_and_is_sh(kit: Kit, tmp_path: Path) -> None:
    script = kit.script.decode()
    assert f"PCCI_WHEEL='{kit.wheel.name}'" in script and f"PCCI_WHEEL_SHA256='{kit.wheel.sha256}'" in script
    assert set(kit.wheelhouse) == {"six-1.17.0-py2.py3-none-any.whl"}  # only files a URL carries as they are
    assert f"{hashlib.sha256(b'six').hexdigest()} six-1.17.0-py2.py3-none-any.whl" in script
    assert "@" + "WHEEL" not in script
    (tmp_path / "install.sh").write_bytes(kit.script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "install.sh")]).returncode == 0


def test_the_line_pins_the_script_and_names_the_worker_only_when_the_token_does(kit: Kit) -> None:
    line = kit.line("http://m.lab:8080/", "tls:m.lab:7000", "TOKEN", "pi07")
    assert f'echo "{kit.script_sha256}  $f" | sha256sum -c --status' in line
    assert "curl -fsSL http://m.lab:8080/install.sh" in line
    assert line.endswith("sh \"$f\" --url http://m.lab:8080 --join tls:m.lab:7000 --token TOKEN --name pi07)")
    assert "--name" not in kit.line("http://m.lab:8080", "tls:m.lab:7000", "TOKEN", None)


class ReadyKit:
    """The install kit, made already (the master makes it in a thread)."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit

    def get(self) -> Deferred[Kit]:
        return succeed(self.kit)


def serve(kit: Kit | None) -> StubTreq:
    book = TokenBook([APIToken(TOKEN.encode(), False)])
    ready = None if kit is None else ReadyKit(kit)
    api = MasterAPI(ClusterState(Clock()), parts=APIParts(tokens=book, install_kit=ready))  # type: ignore[arg-type]
    return StubTreq(api.resource())


def get(stub: StubTreq, path: str) -> tuple[int, bytes, str]:
    """A GET without a token: its status, body and content type."""
    response = settle(stub, stub.get("http://m.lab:8080" + path))
    body = settle(stub, response.content())
    return response.code, body, (response.headers.getRawHeaders("content-type") or [""])[0]


def settle(stub: StubTreq, d: Deferred[Any]) -> Any:
    """Pump the in-memory connection until C{d} fires (a file is served in pieces)."""
    results: list = []
    d.addBoth(results.append)
    for _ in range(1000):
        if results:
            return results[0]
        stub.flush()
    raise AssertionError("no answer")


def test_a_new_machine_gets_the_script_the_wheel_and_the_wheelhouse_without_a_token(kit: Kit) -> None:
    stub = serve(kit)
    assert get(stub, "/install.sh") == (200, kit.script, "text/x-shellscript; charset=utf-8")
    code, page, _ = get(stub, "/dist/")
    assert code == 200 and f'href="{kit.wheel.name}#sha256={kit.wheel.sha256}"'.encode() in page
    assert get(stub, f"/dist/{kit.wheel.name}")[:2] == (200, kit.wheel.data)
    code, page, _ = get(stub, "/wheelhouse/")
    assert code == 200 and re.findall(rb'href="([^"#]+)#sha256=', page) == [b"six-1.17.0-py2.py3-none-any.whl"]
    # (A wheelhouse file is streamed from disk, a pull producer StubTreq does
    # not drive: tests/e2e/test_install_e2e.py installs from them.)
    for path in ("/dist/pcci-0.1-py3-none-any.whl", "/wheelhouse/notes.txt", "/wheelhouse/..%2Fnotes.txt"):
        code, body, media = get(stub, path)
        assert code == 404 and media == "application/json" and b'"message"' in body, path
    # The rest still wants a token.
    assert get(stub, "/workers")[0] == 401


def test_a_master_that_serves_no_installs_says_so(kit: Kit) -> None:
    code, body, _ = get(serve(None), "/install.sh")
    assert code == 404 and b"serves no install kit" in body


def test_an_upgrade_with_a_field_it_does_not_have_is_refused_by_name(kit: Kit) -> None:
    """Unknown fields are refused by one rule, for an upgrade as for a pool or a schedule."""
    stub = serve(kit)
    d = stub.post(
        "http://m.lab:8080/workers/upgrade", data=json.dumps({"bacth": 2}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    response = settle(stub, d)
    body = json.loads(settle(stub, response.content()))
    assert response.code == 400 and body["message"].startswith("an upgrade has no bacth")
