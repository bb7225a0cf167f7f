"""The status page (GET / on the admin port) in a real headless Chromium.

A three-node cluster (the twin of the compose environment) takes traffic through Envoy
while Playwright drives Debian's Chromium (/usr/bin/chromium; `make test` installs it
when it runs as root) to the page of one node. The test reads what a person reads:
this node, every member with state, address, last heard, round trip and clock offset,
the rules in force with their version and load time, the busiest counters of the
current second, the error counts; then stops a node and sees it as left. Screenshots
go to test-artifacts/ (not committed). The escaping is checked in the same browser:
hostile node ids and counter keys render as text, never as markup.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.conftest import REPO
from hivemind_ratelimit.admin import status
from hivemind_ratelimit.core.store import Counter
from hivemind_ratelimit.rules.loader import load_path
from hivemind_ratelimit.telemetry.stats import ServiceStats
from integration.hivemind_harness import HivemindProcess, http_request, wait_until

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts"
# As root in a container: no sandbox; and no calls home, which this machine's closed
# network would refuse many times over.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it when run as root)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


class Traffic:
    """Requests through Envoy in the background (about 40 a second), until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _run(self) -> None:
        while not self._stop.wait(0.025):
            try:
                with self._opener.open(self.url, timeout=2) as reply:
                    code = reply.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except OSError:
                code = 0
            self.codes[code] = self.codes.get(code, 0) + 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _cells(row: Any) -> list[str]:
    return [cell.strip() for cell in row.locator("td").all_inner_texts()]


def _member_rows(page: Any) -> dict[str, list[str]]:
    rows = page.locator("#members tbody tr").all()
    return {_cells(row)[0].split()[0]: _cells(row) for row in rows}


def _members_measured(twin: Any) -> bool:
    """Node 1 has probed both peers: each is alive with a round trip and a clock offset."""
    reply = http_request(twin.admin_urls[0] + "mesh")
    members = reply.json().get("members", []) if reply.status == 200 else []
    return len(members) == 2 and all(
        m["state"] == "alive" and m["rtt_ms"] is not None and m["clock_offset_ms"] is not None
        for m in members
    )


def test_status_page_shows_the_cluster(twin: Any, page: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    wait_until(lambda: _members_measured(twin), timeout=15, what="node 1 to probe both peers")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    url = twin.admin_urls[0]

    with Traffic(twin.envoy_url) as traffic:
        wait_until(lambda: traffic.codes.get(429, 0) >= 3, timeout=15, what="traffic over the limit")
        reply = page.goto(url)
        assert reply is not None and reply.status == 200
        counters = page.locator("#counters tbody tr")
        for _ in range(5):  # a page drawn just after a window began shows few hits: redraw
            if counters.count() and int(_cells(counters.first)[2]) > 5:
                break
            time.sleep(0.3)
            page.reload()
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

    # This node, and nothing loaded from anywhere but the page itself.
    assert page.title() == "Hivemind · hivemind-1"
    assert requests and set(requests) == {url}  # the page (maybe reloaded), nothing else
    headers = reply.all_headers()
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == str(status.REFRESH_SECONDS)
    node = page.locator("#node").inner_text()
    assert "hivemind-1" in node and "serving" in node and "hivemind 0.1.0" in node
    assert f"127.0.0.1:{twin.ports.mesh[0]}" in node

    # Every member: state, address, last heard, round trip, clock offset.
    members = _member_rows(page)
    assert set(members) == {"hivemind-1", "hivemind-2", "hivemind-3"}
    assert members["hivemind-1"][2] == "self"
    for index, name in ((1, "hivemind-2"), (2, "hivemind-3")):
        _, address, state, last_heard, rtt, offset, _lag = members[name]
        assert address == f"127.0.0.1:{twin.ports.mesh[index]}"
        assert state == "alive"
        assert re.fullmatch(r"\d+(\.\d+)? (ms|s) ago", last_heard), last_heard
        assert re.fullmatch(r"-?\d+\.\d ms", rtt), rtt
        assert re.fullmatch(r"-?\d+\.\d ms", offset), offset

    # The rules in force: the same version on every node, loaded just now.
    rules = page.locator("#rules").inner_text()
    version = re.search(r"version\s+([0-9a-f]{12})", rules)
    assert version, rules
    other = http_request(twin.admin_urls[1]).body
    assert f"<code>{version.group(1)}</code>" in other
    assert re.search(r"loaded\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(", rules), rules
    assert "hivemind.generic_key_default: 5 per second" in rules

    # The busiest counter of the current second: over its limit of 5.
    row = _cells(page.locator("#counters tbody tr").first)
    assert row[0] == "hivemind" and row[1] == "generic_key=default", row
    assert int(row[2]) > 5 and row[3] == "5" and row[5] == "1 s", row
    assert re.fullmatch(r"\d+%", row[4]) and int(row[4][:-1]) > 100, row

    # Error counts, all zero here; the answers so far include refusals.
    errors = page.locator("#errors").inner_text()
    assert re.search(r"rule reloads rejected\s+0", errors), errors
    assert re.search(r"OVER_LIMIT \d+", errors), errors


def test_status_page_shows_a_member_that_left(twin: Any, page: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    twin.nodes[2].stop()  # SIGTERM: hivemind-3 drains and announces its leave

    def left() -> bool:
        members = http_request(twin.admin_urls[0] + "mesh").json()["members"]
        return any(m["id"] == "hivemind-3" and m["state"] == "left" for m in members)

    wait_until(left, timeout=15, what="node 1 to see hivemind-3 leave")
    page.goto(twin.admin_urls[0])
    members = _member_rows(page)
    assert members["hivemind-3"][2] == "left"
    assert members["hivemind-2"][2] == "alive"
    assert "2 live of 3 known" in page.locator("#members").inner_text()
    page.screenshot(path=str(ARTIFACTS / "status-page-member-left.png"), full_page=True)


def _hostile_status() -> tuple[status.NodeStatus, Any]:
    evil = "<script>document.title='owned'</script>"
    counter = Counter(f"hivemind\x1egeneric_key=<img src=x onerror=alert(1)>\x1f{evil}\x1e1", 100, 1, 200.0)
    counter.own, counter.limit = 7, 5
    node = status.NodeStatus(
        node_id=evil,
        version="0.1.0",
        started_at=90.0,
        now=100.5,
        rules_path="config/<b>ratelimit</b>.yaml",
        rules_loaded_at=95.0,
        reload_error=f"bad.yaml: line 1: unknown key '{evil}'",
        busiest=status.busiest_counters([counter], 100.5),
    )
    mesh = {
        "node": {"id": evil, "address": "127.0.0.1:7946", "incarnation": 1},
        "members": [
            {
                "id": '"><svg onload=alert(1)>',
                "address": "10.0.0.2:7946",
                "state": "<i>alive</i>",
                "last_heard_seconds_ago": 0.2,
                "rtt_ms": 0.5,
                "clock_offset_ms": 1500.0,
                "sync_lag_ms": 3.0,
            }
        ],
        "sync": {"malformed_messages": 2},
    }
    return node, mesh


def test_status_page_escapes_every_value(page: Any) -> None:
    """Hostile values (a counter key carries whatever a client sent) show as text."""
    node, mesh = _hostile_status()
    rules = load_path(REPO / "config" / "ratelimit.yaml", merge_domains=False)
    stats = ServiceStats()
    stats.count_error("invalid_argument<br>")
    html = status.render(node, serving=True, ready=True, rules=rules, mesh=mesh, stats=stats)
    page.set_content(html)
    assert page.locator("script, img, svg, b, i, br").count() == 0
    assert page.title() == f"Hivemind · {node.node_id}"  # the text, and no script changed it
    counters = page.locator("#counters").inner_text()
    assert "generic_key=<img src=x onerror=alert(1)>, <script>" in counters
    assert '"><svg onload=alert(1)>' in page.locator("#members").inner_text()
    assert page.locator("#members .warn").inner_text() == "1500.0 ms"  # clock offset above 1 s
    assert "Last reload rejected" in page.locator("#rules").inner_text()
    assert re.search(r"malformed peer messages\s+2", page.locator("#errors").inner_text())


def test_busiest_counters_are_current_and_ordered() -> None:
    def counter(key: str, start: int, length: int, count: int, limit: int) -> Counter:
        c = Counter(f"d\x1e{key}\x1e{length}", start, length, start + length + 2.0)
        c.own, c.limit = count, limit
        return c

    now = 1000.5
    rows = status.busiest_counters(
        [
            counter("a=1", 1000, 1, 3, 10),  # 30%
            counter("b=1", 1000, 1, 9, 10),  # 90%
            counter("c=1", 999, 1, 50, 10),  # the last window: gone
            counter("d=1", 960, 60, 200, 1000),  # 20%, a minute window
            counter("e=1", 1000, 1, 0, 10),  # no hits
            counter("f=1", 1000, 1, 4, 0),  # limit not known here
        ],
        now,
        n=10,
    )
    assert [r.descriptor for r in rows] == ["b=1", "a=1", "d=1", "f=1"]
    assert rows[0].used == pytest.approx(0.9)
    assert rows[2].window_seconds == 60 and rows[2].resets_in == pytest.approx(19.5)
    assert rows[3].used is None


def test_page_is_served_at_the_root_of_the_admin_port(tmp_path: Path) -> None:
    """Without a browser: a node alone answers GET / with the page."""
    node = HivemindProcess(tmp_path, REPO / "config" / "ratelimit.yaml", name="alone")
    try:
        node.start()
        reply = node.http("/")
    finally:
        node.stop()
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.headers["cache-control"] == "no-store"
    assert "<h2>Members</h2>" in reply.body and "(this node)" in reply.body
    assert "1 live of 1 known" in reply.body
    assert "No hits in the current windows." in reply.body
