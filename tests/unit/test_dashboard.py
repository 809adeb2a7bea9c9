"""The dashboard's files as the master serves them (the page itself is
tested in a browser: test_dashboard_browser.py)."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path

import pytest
from test_api import JSON, Client

from pcci.master.http.dashboard import STATIC_DIR
from pcci.master.http.guards import CONTENT_SECURITY_POLICY

ROOT = Path(__file__).parents[2]


def raw(client: Client, path: str, headers: dict | None = None, method: str = "GET"):
    response = client.result_of(client.stub.request(method, "http://master" + path, headers=headers or {}))
    body = client.result_of(response.content())
    return response.code, response.headers, body


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def guarded() -> Client:
    return Client(tokens=True)


def test_the_page_needs_no_token(guarded: Client) -> None:
    code, headers, body = raw(guarded, "/")
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/html")
    assert b'<script type="module" src="/ui/js/app.js">' in body


@pytest.mark.parametrize(
    "path, media",
    [("/ui/js/app.js", "text/javascript"), ("/ui/style.css", "text/css"), ("/ui/icon.svg", "image/svg+xml")],
)
def test_its_files_need_no_token_and_have_their_types(guarded: Client, path: str, media: str) -> None:
    code, headers, _ = raw(guarded, path)
    assert code == 200
    assert headers.getRawHeaders("content-type")[0].startswith(media)
    assert headers.getRawHeaders("cache-control") == ["no-cache"]


def test_every_answer_is_locked_down(guarded: Client) -> None:
    for path in ("/", "/ui/js/api.js", "/workers", "/health"):
        _, headers, _ = raw(guarded, path)
        assert headers.getRawHeaders("content-security-policy") == [CONTENT_SECURITY_POLICY]
        assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        assert headers.getRawHeaders("x-frame-options") == ["DENY"]
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY


def test_the_data_still_needs_a_token(guarded: Client) -> None:
    assert raw(guarded, "/workers")[0] == 401
    assert raw(guarded, "/", method="POST")[0] == 401


@pytest.mark.parametrize("path", ["/ui/js/", "/ui/nothing.js", "/ui/../setup.cfg", "/ui/%2e%2e/setup.cfg"])
def test_no_listing_and_nothing_outside(guarded: Client, path: str) -> None:
    assert raw(guarded, path)[0] == 404


def test_unknown_api_routes_are_still_json_404s(client: Client) -> None:
    code, _, body = client.request("GET", "/nowhere", headers=JSON)
    assert (code, body) == (404, {"message": "no such route"})


def static_files() -> list[str]:
    return sorted(str(p.relative_to(STATIC_DIR)) for p in STATIC_DIR.rglob("*") if p.is_file())


def test_every_file_the_page_loads_is_there(client: Client) -> None:
    """The page's links and the modules' imports all resolve."""
    wanted = set(re.findall(r'(?:src|href)="/ui/([^"]+)"', (STATIC_DIR / "index.html").read_text()))
    for script in (STATIC_DIR / "js").glob("*.js"):
        for module in re.findall(r'from "\./([^"]+)"', script.read_text()):
            wanted.add(f"js/{module}")
    assert wanted and wanted <= set(static_files())
    for name in wanted:
        assert raw(client, f"/ui/{name}")[0] == 200, name


def test_every_file_is_shipped_in_the_package() -> None:
    """setup.cfg's package data globs cover each file of the page."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    globs = [g.strip() for g in config["options.package_data"]["pcci.master.http"].split(",")]
    for name in static_files():
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), name


def test_no_script_builds_html_from_text() -> None:
    """Names and output reach the page as text: no innerHTML and the like."""
    for script in (STATIC_DIR / "js").glob("*.js"):
        source = script.read_text()
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert risky not in source, f"{script.name} uses {risky}"


def test_a_current_copy_is_not_sent_again(guarded: Client) -> None:
    _, headers, body = raw(guarded, "/ui/js/app.js")
    etag = headers.getRawHeaders("etag")[0]
    code, _, again = raw(guarded, "/ui/js/app.js", {"If-None-Match": [etag]})
    assert (code, again) == (304, b"")
    assert raw(guarded, "/ui/js/app.js", {"If-None-Match": ['"old"']})[2] == body
