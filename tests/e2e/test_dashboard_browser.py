"""
The web dashboard in a real browser: Debian's chromium, driven through its
chromium-driver by Selenium, against a real master and two workers.

Each page is photographed as the tests go; with C{PCCI_SCREENSHOTS=DIR}
the pictures are written there (C{docs/screenshots/} holds the current
ones), else in the test's temporary folder.

Without chromium and chromium-driver these tests are skipped, except under
CI (C{CI} set), where that is a failure: C{.ci/run} installs them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from cluster import Cluster, processes_with

from pcci.nodes import expand, split_item

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.long(70)]

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
DESKTOP = (1280, 900)
PHONE = (390, 844)
DEADLINE = 20.0

if not (CHROMIUM and DRIVER):
    reason = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        raise RuntimeError(reason + ": .ci/run should have installed them")
    pytest.skip(reason, allow_module_level=True)

ADMIN = "admin-token-for-the-browser-tests"
VIEWER = "viewer-token-for-the-browser-tests"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master with two workers, node1 and node2, and two named tokens; its
    cron lines may have seconds (tests only)."""
    directory = tmp_path_factory.mktemp("web")
    c = Cluster(directory, worker_auth="both")  # the secret's workers, and identities too
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PCCI_TEST_CRON_SECONDS", "1")
            c.start_master_with_tokens(ADMIN, VIEWER, names=("alice", "viewer"))
        c.start_worker("node1", "--kill-grace", "1", "--heartbeat", "1", "--label", "rack=a")
        c.start_worker("node2", "--kill-grace", "1", "--heartbeat", "1", "--label", "rack=b")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    yield from chromium()


def chromium() -> Iterator[WebDriver]:
    """Headless Chromium at desktop size, quit when done."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(web: Cluster, browser: WebDriver, tmp_path: Path) -> Iterator[Page]:
    """The browser on the dashboard, signed out, at desktop size."""
    browser.set_window_size(*DESKTOP)
    browser.get(f"http://127.0.0.1:{web.api_port}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"http://127.0.0.1:{web.api_port}/#/nodes")
    browser.get_log("browser")  # what came before this test is not its own
    shown = Page(browser, web, Path(os.environ.get("PCCI_SCREENSHOTS") or tmp_path))
    yield shown
    # No script error and no Content-Security-Policy violation on the way
    # (a refused token's 401 is a failed load a test may cause).
    errors = [
        entry["message"] for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
        and not any(expected in entry["message"] for expected in shown.expected_errors)
    ]
    assert errors == [], '\n'.join(errors)


class Page:
    def __init__(self, driver: WebDriver, cluster: Cluster, shots: Path) -> None:
        self.driver = driver
        self.cluster = cluster
        self.shots = shots
        #: Parts of console errors a test expects (and the page handles).
        self.expected_errors = ["status of 401"]

    def wait(self, check: Callable[[WebDriver], Any], what: str, deadline: float = DEADLINE) -> Any:
        try:
            return WebDriverWait(self.driver, deadline, poll_frequency=0.05).until(check)
        except TimeoutException:
            shown = self.driver.execute_script("return document.body.innerText").strip()[:600]
            raise TimeoutException(f"timed out waiting for {what}; the page showed:\n{shown}") from None

    def find(self, css: str) -> Any:
        return self.wait(lambda d: d.find_element(By.CSS_SELECTOR, css), css)

    def text(self, css: str) -> str:
        """The text shown in the first element C{css} selects, read in one
        step (the page redraws parts of itself as figures arrive)."""
        script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''"
        return self.driver.execute_script(script, css)

    def wait_text(self, css: str, expected: str, deadline: float = DEADLINE) -> None:
        try:
            self.wait(lambda d: expected in self.text(css), f"{expected!r} in {css}", deadline)
        except TimeoutException as e:
            raise TimeoutException(f"{e.msg}\n{css} showed: {self.text(css)[:300]!r}") from None

    def sign_in(self, token: str) -> None:
        field = self.find("#token")
        field.clear()
        field.send_keys(token)
        self.find("#sign-in button[type=submit]").click()

    def go(self, address: str) -> None:
        self.driver.get(f"http://127.0.0.1:{self.cluster.api_port}/{address}")

    def shoot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        width = self.driver.get_window_size()["width"]
        if height > self.driver.get_window_size()["height"]:
            self.driver.set_window_size(width, min(height + 120, 2400))
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def no_alert(self) -> bool:
        try:
            _ = self.driver.switch_to.alert
        except NoAlertPresentException:
            return True
        return False


def test_a_wrong_token_gets_a_clear_message(page: Page) -> None:
    page.sign_in("not-a-token")
    page.wait_text("#sign-in [role=alert]", "The master refused this token")
    assert page.driver.execute_script("return sessionStorage.getItem('pcci.token')") is None
    page.shoot("sign-in-refused")


def test_a_token_saved_while_the_first_answer_is_on_its_way_is_kept(page: Page) -> None:
    """The page's first /whoami goes without a token and is refused; a token
    stored meanwhile (another script, a test) is not the one refused, and
    is kept.  The network is slowed so that the refusal surely comes after."""
    driver = page.driver
    driver.execute_cdp_cmd("Network.enable", {})
    slow = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    try:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**slow, "latency": 1000})
        driver.refresh()
        driver.execute_script("sessionStorage.setItem('pcci.token', arguments[0])", ADMIN)
        page.find("#sign-in")
        assert driver.execute_script("return sessionStorage.getItem('pcci.token')") == ADMIN
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", slow)
        driver.execute_cdp_cmd("Network.disable", {})
    driver.refresh()
    page.wait_text("#who-name", "alice")


def test_nodes_show_both_workers_with_their_figures(page: Page) -> None:
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    for name in ("node1", "node2"):
        card = f"[data-worker={name}]"
        page.wait_text(card, "online")
        page.wait_text(card, "rack=")
        # A CPU figure, and a chart of at least two heartbeats.
        page.wait(lambda d, c=card: "CPU\n–" not in page.text(c), f"{name}'s CPU figure")
        page.wait(
            lambda d, c=card: d.find_elements(By.CSS_SELECTOR, f"{c} .sparkline path"),
            f"{name}'s charts",
        )
    # The token is kept for the tab only, never in a cookie.
    assert page.driver.execute_script("return sessionStorage.getItem('pcci.token')") == ADMIN
    assert page.driver.get_cookies() == []
    page.shoot("nodes")


def test_run_on_a_glob_and_watch_the_output_arrive(page: Page, tmp_path: Path) -> None:
    go = tmp_path / "go"
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    page.go("#/run")
    page.find("#run-form input[name=cmd]").send_keys(
        "sh -c 'echo first from $(hostname); while [ ! -e go ]; do sleep 0.05; done; echo second'"
    )
    page.find("#run-form input[name=workers]").send_keys("node*")
    page.find("#run-form summary").click()
    page.find("#run-form input[name=cwd]").send_keys(str(tmp_path))
    page.wait_text("#matches", "Matches 2 workers: node1, node2")
    page.shoot("run")
    page.find("#run-submit").click()

    page.wait(lambda d: "#/pools/" in d.current_url, "the new pool's page")
    for name in ("node1", "node2"):
        page.wait_text(f"section[data-worker={name}] pre", "first from")
    # Live: the jobs still run, and the rest is yet to come.
    assert "running" in page.text("#pool-state")
    assert "second" not in page.text("#outputs")
    page.shoot("pool-running")

    go.touch()
    page.wait_text("#pool-state", "ok")
    for name in ("node1", "node2"):
        page.wait_text(f"section[data-worker={name}] pre", "second")
        row = page.find(f"#pool-jobs tr[data-worker={name}]")
        assert row.get_attribute("data-state") == "ok"
    page.shoot("pool")

    # Gathered: both workers printed the same, so one group of two.
    page.find("#tab-gathered").click()
    page.wait_text("#outputs .gathered h3", "(2 workers)")
    assert page.text("#outputs .gathered h3").startswith("node1, node2")
    assert len(page.driver.find_elements(By.CSS_SELECTOR, "#outputs .gathered")) == 1
    # Run again: the form comes back filled in with this pool's command and workers.
    page.find("#run-again").click()
    page.wait_text("#matches", "Matches 2 workers: node1, node2")
    command = page.find("#run-form input[name=cmd]").get_attribute("value")
    assert command.startswith("sh -c 'echo first from $(hostname);")
    assert page.find("#run-form input[name=workers]").get_attribute("value") == "node1 node2"
    page.go("#/pools")
    page.wait_text("#pools", "echo first")
    page.shoot("pools")


def test_kill_a_running_pool(page: Page, marker: str) -> None:
    pool = page.cluster.submit(f"sleep {marker}", ["node1", "node2"])
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    page.go(f"#/pools/{pool}")
    page.wait(lambda d: len(processes_with(f"sleep {marker}")) == 2, "both sleeps")
    page.wait_text("#pool-jobs tr[data-worker=node2]", "running")
    kill = page.find("#kill-all")
    kill.click()
    page.wait_text("#kill-all", "Really kill all?")
    kill.click()
    for name in ("node1", "node2"):
        page.wait_text(f"#pool-jobs tr[data-worker={name}]", "killed")
    page.wait_text("#pool-state", "failed")
    page.wait(lambda d: not processes_with(f"sleep {marker}"), "the sleeps to be gone")


def test_a_read_only_token_has_no_run_or_kill(page: Page, marker: str) -> None:
    pool = page.cluster.submit(f"sleep {marker}", ["node1"])
    page.sign_in(VIEWER)
    page.wait_text(".who", "read-only")
    assert not page.find("#nav-run").is_displayed()
    page.go(f"#/pools/{pool}")
    page.wait_text("#pool-jobs tr[data-worker=node1]", "running")
    assert page.driver.find_elements(By.CSS_SELECTOR, "#kill-all, #pool-jobs button.danger") == []
    # The Run page's address leads back to the nodes.
    page.go("#/run")
    page.wait_text("h1", "Nodes")
    page.cluster.request("PUT", f"/kill/{pool}")


def test_a_scoped_token_sees_its_scope_and_retries_what_failed(page: Page, tmp_path: Path) -> None:
    code, made = page.cluster.request(
        "POST", "/tokens", {"name": "student", "workers": ["node1"], "commands": ["test -e *"]}
    )
    assert code == 201, made
    try:
        page.sign_in(made["token"])
        page.wait_text(".who", "student")
        assert page.find("#scope-badge").get_attribute("title") == "workers=node1 commands=test -e *"
        page.wait_text("[data-worker=node1]", "online")
        assert page.driver.find_elements(By.CSS_SELECTOR, "[data-worker=node2]") == []
        page.go("#/run")
        page.wait_text("#run-scope", "workers=node1")
        go = tmp_path / "go"
        page.find("#run-form input[name=cmd]").send_keys(f"test -e {go}")
        page.find("#run-form input[name=workers]").send_keys("node*")
        page.wait_text("#matches", "Matches 1 worker: node1")
        page.shoot("run-scoped")
        page.find("#run-submit").click()
        page.wait(lambda d: "#/pools/" in d.current_url, "the new pool's page")
        first = page.driver.current_url
        page.wait_text("#pool-state", "failed")
        go.touch()
        page.find("#retry-failed").click()
        page.wait(lambda d: d.current_url != first, "the retry's page")
        page.wait_text("#pool-state", "ok")
        page.wait_text(".view-head", "retry of")
        assert page.driver.find_element(By.CSS_SELECTOR, "#retry-failed").is_displayed() is False
        page.shoot("pool-retried")
    finally:
        page.cluster.request("DELETE", "/tokens/student")


def test_output_and_names_show_as_text(page: Page) -> None:
    xss = "<img src=x onerror=alert(1)>"
    pool = page.cluster.submit(f"echo '{xss}'", ["node1"])
    page.cluster.wait_pool(pool)
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    page.go(f"#/pools/{pool}")
    page.wait_text("section[data-worker=node1] pre", xss)
    assert xss in page.text(".cmd-line")
    assert page.driver.find_elements(By.CSS_SELECTOR, "main img") == []
    assert page.no_alert()


def test_on_a_phone_nothing_runs_off_the_screen(page: Page) -> None:
    page.driver.set_window_size(*PHONE)
    page.sign_in(ADMIN)
    page.wait_text("[data-worker=node1]", "online")
    fits = "return document.documentElement.scrollWidth <= window.innerWidth"
    assert page.driver.execute_script(fits)
    page.shoot("phone-nodes")
    pool = page.cluster.submit("echo hello from a phone", ["node1", "node2"])
    page.go(f"#/pools/{pool}")
    page.wait_text("#pool-state", "ok")
    assert page.driver.execute_script(fits)
    page.shoot("phone-pool")
    page.go("#/fleet")
    page.wait_text("#fleet tr[data-worker=node1]", "node1")
    named = ("return getComputedStyle(document.querySelector('#fleet tr[data-worker=node1] td[data-label=cpus]'),"
             " '::before').content")
    assert page.driver.execute_script(named) == '"cpus: "'  # each fact named on its card
    assert page.driver.execute_script(fits)
    page.shoot("phone-fleet")


def test_pools_page_back_in_time_and_filter(page: Page) -> None:
    failed = page.cluster.run("sh -c 'exit 7'", ["node2"])["id"]
    for _ in range(30):
        page.cluster.submit("true", ["node1"])
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    page.go("#/pools")
    rows = "#pools tbody tr"
    page.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 25, "a page of 25")
    newest = page.driver.find_elements(By.CSS_SELECTOR, rows)[0].get_attribute("data-pool")
    page.find("#older").click()
    page.wait_text(".pager", "Newest")
    page.wait(
        lambda d: newest not in [r.get_attribute("data-pool") for r in d.find_elements(By.CSS_SELECTOR, rows)],
        "the next page",
    )
    # Only the failed ones.
    page.go("#/pools")
    page.find("#pool-filters select[name=state]")
    page.driver.execute_script(
        "const s = document.querySelector('#pool-filters select[name=state]');"
        " s.value = 'failed'; s.dispatchEvent(new Event('change'));"
    )
    page.wait(lambda d: "state=failed" in d.current_url, "the filter in the address")
    page.wait(
        lambda d: [r.get_attribute("data-pool") for r in d.find_elements(By.CSS_SELECTOR, rows)][:1] == [failed],
        "the failed pool first",
    )
    states = page.driver.execute_script(
        "return [...document.querySelectorAll('#pools tbody tr .badge')].map(b => b.textContent)"
    )
    assert states and set(states) == {"failed"}


def test_the_event_parser_takes_a_stream_cut_anywhere(page: Page) -> None:
    """The page's server-sent event parser, run in the browser itself."""
    events = page.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import("/ui/js/api.js").then(({ EventParser }) => {
          const seen = [];
          const parser = new EventParser((event) => seen.push(event));
          const text = ": keep-alive\\n\\nid: 1\\nevent: output\\ndata: {\\"data\\": \\"a\\\\nb\\"}\\n\\n"
            + "id: 2\\r\\nevent: ended\\r\\ndata: {\\"status\\": 0}\\r\\n\\r\\n";
          for (const piece of text.match(/[\\s\\S]{1,3}/g)) parser.feed(piece);
          done(seen);
        });
        """
    )
    assert events == [
        {"id": 1, "name": "output", "data": {"data": "a\nb"}},
        {"id": 2, "name": "ended", "data": {"status": 0}},
    ]


def test_names_fold_into_node_sets_the_master_reads(page: Page) -> None:
    """The page's node sets, made in the browser, name the same workers
    when the master's own parser expands them."""
    lists = [
        [f"sim-{i:05d}" for i in range(10_000)],
        ["pi01", "pi02", "pi03", "pi10", "pi11", "gpu", "node1", "node2", "node10", "web.b-7"],
        ["rack1-n01", "rack1-n02", "rack2-n01", "x9", "x"],
    ]
    folded = page.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import("/ui/js/dom.js").then(({ nodeSet }) => done(arguments[0].map(nodeSet)));
        """,
        lists,
    )
    assert folded[0] == "sim-[00000-09999]"
    assert folded[1] == "gpu node[1-2,10] pi[01-03,10-11] web.b-7"
    for names, text in zip(lists, folded):
        expanded = [name for item in text.split() for part in split_item(item) for name in expand(part, 100_000)]
        assert sorted(expanded) == sorted(names)


def test_another_master_shows_the_cluster_and_a_pool_live(
    browser: WebDriver, tmp_path: Path, pg_url: str
) -> None:
    """Two masters on one PostgreSQL: m2's dashboard shows m1's pool, live."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} name=alice\n")
    tokens.chmod(0o600)
    m1, m2 = Cluster(tmp_path / "m1"), Cluster(tmp_path / "m2")
    try:
        for cluster, name in ((m1, "m1"), (m2, "m2")):
            if cluster is m2:
                shutil.copytree(m1.state_dir, m2.state_dir)
            cluster.start_master("--api-token-file", str(tokens), "--db", pg_url, "--name", name)
            cluster.token = ADMIN
        m1.start_worker("node1", "--heartbeat", "0.5", wait=False)
        m2.start_worker("node2", "--heartbeat", "0.5", wait=False)
        m2.wait_for_workers("node1", "node2")
        page = Page(browser, m2, Path(os.environ.get("PCCI_SCREENSHOTS") or tmp_path))
        page.go("")
        page.sign_in(ADMIN)
        page.wait_text(".who", "alice")
        for name, master in (("node1", "m1"), ("node2", "m2")):
            page.wait_text(f"[data-worker={name}]", "online")
            page.wait_text(f"[data-worker={name}] .node-where", f"on master {master}")
        pool = m1.submit(
            f"sh -c 'echo first; while [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done; echo second'",
            ["node1", "node2"],
        )
        page.go(f"#/pools/{pool}")
        for name in ("node1", "node2"):
            page.wait_text(f"section[data-worker={name}] pre", "first")
        assert "running" in page.text("#pool-state")
        (tmp_path / "go").touch()
        page.wait_text("#pool-state", "ok")
        for name in ("node1", "node2"):
            assert page.text(f"section[data-worker={name}] pre") == "first\nsecond\n"
        page.shoot("pool-on-another-master")
    finally:
        m2.stop()
        m1.stop()


def test_a_schedule_made_run_paused_changed_and_removed(page: Page) -> None:
    page.expected_errors.append("status of 400")  # the form's dry run of a wrong cron line
    try:
        page.sign_in(ADMIN)
        page.wait_text(".who", "alice")
        page.find("#nav a[data-view=schedules]").click()
        page.wait_text("#schedules", "No schedule yet")
        page.find("#new-schedule").click()
        form = "#schedule-new"
        page.find(f"{form} input[name=name]").send_keys("tick")
        cron = page.find(f"{form} input[name=cron]")
        cron.send_keys("61 * * * *")
        page.wait_text("#schedule-next", "cron '61 * * * *'")  # the master's word on it, as it is typed
        cron.clear()
        cron.send_keys("@daily")
        page.wait_text("#schedule-next", "Next runs:")
        shown = page.text("#schedule-next")  # Next runs: Dec 2, 2026, 12:00 AM UTC (in 9 h) · …
        assert shown.count(" · ") == 2 and shown.count("UTC (in ") == 3, shown
        cron.clear()
        cron.send_keys("* * * * * *")  # every second: the test masters' seconds field
        page.find(f"{form} input[name=cmd]").send_keys("echo tick")
        page.find(f"{form} input[name=workers]").send_keys("node*")
        page.wait_text(f"{form} #matches", "Matches 2 workers: node1, node2")
        page.shoot("schedule-new")
        page.find("#schedule-submit").click()

        page.wait(lambda d: d.current_url.endswith("#/schedules/tick"), "the schedule's page")
        page.wait_text("#schedule-state", "active")
        page.wait_text("#schedule-runs", "started")
        page.wait_text("#schedule-pools", "ok")
        page.shoot("schedule")
        page.find(".view-head .pause").click()
        page.wait_text("#schedule-state", "paused")
        page.wait_text("#next-runs", "None while paused")

        # Changed: another command, a timeout; the workers' field emptied
        # and labels given instead.
        change = "#schedule-change"
        field = page.find(f"{change} input[name=cmd]")
        field.clear()
        field.send_keys("echo tock")
        page.find(f"{change} input[name=workers]").clear()
        page.find(f"{change} summary").click()
        page.find(f"{change} input[name=labels]").send_keys("rack=b")
        page.find(f"{change} input[name=timeout]").send_keys("30")
        page.wait_text(f"{change} #matches", "Matches 1 worker: node2")
        page.find(f"{change} button[type=submit]").click()
        page.wait_text("#schedule-status", "Saved.")
        page.wait_text(".cmd-line", "echo tock")
        saved = page.cluster.request("GET", "/schedules/tick")[1]
        assert (saved["cmd"], saved["labels"], saved["timeout"], saved["paused"]) == ("echo tock", ["rack=b"], 30, True)
        assert "workers" not in saved

        # The list: paused, then resumed in place; its pools a click away.
        page.find("#nav a[data-view=schedules]").click()
        page.wait_text("tr[data-schedule=tick]", "paused")
        assert "echo tock" in page.text("tr[data-schedule=tick]")
        page.shoot("schedules")
        page.find("tr[data-schedule=tick] .pause").click()
        page.wait(lambda d: "paused" not in page.text("tr[data-schedule=tick] .next-run"), "the schedule resumed")
        runs = lambda: str(page.cluster.request("GET", "/pools?schedule=tick")[1])  # noqa: E731
        page.wait(lambda d: "echo tock" in runs(), "a run of echo tock")
        page.go("#/schedules/tick")
        page.find("#all-pools").click()
        page.wait_text("h1", "Pools of schedule tick")
        page.wait_text("#pools", "echo tock")
        page.wait_text("#pools", "echo tick")

        # A read-only token sees it all, and changes nothing.
        page.find("#sign-out").click()
        page.sign_in(VIEWER)
        page.wait_text(".who", "read-only")
        page.go("#/schedules")
        page.wait_text("tr[data-schedule=tick]", "echo tock")
        assert page.driver.find_elements(By.CSS_SELECTOR, "#new-schedule, .pause") == []
        page.go("#/schedules/tick")
        page.wait_text("#schedule-state", "active")
        assert page.driver.find_elements(By.CSS_SELECTOR, "#remove-schedule, #schedule-change") == []

        page.find("#sign-out").click()
        page.sign_in(ADMIN)
        page.wait_text("#schedule-state", "active")
        remove = page.find("#remove-schedule")
        remove.click()
        page.wait_text("#remove-schedule", "Really remove?")
        remove.click()
        page.wait(lambda d: d.current_url.endswith("#/schedules"), "the list")
        page.wait_text("#schedules", "No schedule yet")
    finally:
        page.cluster.request("DELETE", "/schedules/tick")


def test_a_worker_waiting_for_approval_is_listed_with_its_key_and_approved(page: Page) -> None:
    c = page.cluster
    token = c.join_token("pi-new", approve=True)
    c._start("join-pi-new", "pcci-worker", "--join", f"tls:127.0.0.1:{c.worker_port}", "--token", token,
             "--name", "pi-new", "--heartbeat", "1", "--state-dir", str(c.directory / "state-pi-new"))
    try:
        page.sign_in(ADMIN)
        page.wait_text("#nodes-pending", "pi-new")
        (pending,) = c.request("GET", "/workers/pending")[1]
        page.wait_text("#nodes-pending li[data-worker=pi-new]", pending["fingerprint"])
        page.shoot("nodes-pending")
        page.find("#nodes-pending li[data-worker=pi-new] .approve").click()
        page.wait_text("article[data-worker=pi-new]", "by its identity")
        page.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "#nodes-pending"), "the list of pending gone")
    finally:
        c.request("POST", "/workers/pi-new/revoke")


def test_a_pool_page_carries_on_across_a_master_restart(page: Page, tmp_path: Path) -> None:
    """Last in the module: it restarts the shared master."""
    code, answer = page.cluster.request(
        "POST",
        "/job",
        {
            "cmd": "sh -c 'echo before; while [ ! -e go ]; do sleep 0.05; done; echo after'",
            "workers": ["node1"],
            "cwd": str(tmp_path),
        },
    )
    assert code == 200, answer
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    page.go(f"#/pools/{answer['pool_id']}")
    page.wait_text("section[data-worker=node1] pre", "before")

    page.cluster.master.stop()
    page.wait_text("#pool-status", "reconnecting")
    page.expected_errors += ["ERR_INCOMPLETE_CHUNKED_ENCODING", "ERR_CONNECTION_REFUSED"]
    page.cluster.start_master("--api-token-file", str(page.cluster.directory / "tokens"))
    page.cluster.token = ADMIN
    page.cluster.wait_for_workers("node1")
    (tmp_path / "go").touch()
    page.wait_text("#pool-state", "ok")
    # Resumed after the last event seen: nothing twice, nothing missing.
    assert page.text("section[data-worker=node1] pre") == "before\nafter\n"
    assert page.text("#pool-status") == ""


def test_a_shell_in_the_page_answers_what_is_typed_and_is_replayed(page: Page) -> None:
    page.sign_in(ADMIN)
    page.wait_text(".who", "alice")
    # The card is drawn again as figures come: click it in one step.
    click = "const a = document.querySelector('[data-worker=node1] .shell-link'); if (a) a.click(); return !!a"
    page.wait(lambda d: d.execute_script(click), "node1's Shell button")
    page.wait_text("#shell-status", "Connected to node1")
    page.wait(lambda d: page.text(".xterm-rows").rstrip().endswith(("$", "#")), "the shell's prompt")
    # xterm.js's theme reached the page (mirrored: the policy refused no style, see the fixture).
    color = page.driver.execute_script("return getComputedStyle(document.querySelector('.xterm-rows')).color")
    assert color == "rgb(255, 255, 255)"
    typing = page.find(".xterm-helper-textarea")
    typing.send_keys("echo the answer is $((6*7))\n")
    page.wait_text(".xterm-rows", "the answer is 42")
    page.shoot("shell")
    typing.send_keys("exit 5\n")
    page.wait_text("#shell-status", "The shell ended (status 5)")
    page.wait_text(".xterm-rows", "[pcci: the shell ended: status 5]")
    # Kept, and played back as it was shown.
    page.go("#/shells")
    page.find("#shells tbody tr a").click()
    page.wait_text("#replay-status", "the end of the recording")
    page.wait_text(".xterm-rows", "the answer is 42")


def test_a_read_only_token_has_no_shell(page: Page) -> None:
    page.sign_in(VIEWER)
    page.wait_text("[data-worker=node1]", "online")
    assert page.driver.find_elements(By.CSS_SELECTOR, ".shell-link") == []
