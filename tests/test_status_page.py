"""The status page in a real headless browser (Debian's chromium, driven by Playwright): it loads, refreshes
itself, and the live numbers of real calls appear.

`MCP_BROKER_STATUS_SCREENSHOT=docs/status.png` keeps a screenshot (the README's). Playwright's own browser
download (`playwright install`) is never used: the system chromium is (`apt-get install chromium`, which
.ci/run does); without it the test is skipped locally and fails under CI.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.stack import Stack
from tests.wsclient import RawClient

CHROMIUM = os.environ.get("MCP_BROKER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"no chromium at {CHROMIUM}: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("no chromium: apt-get install -y chromium", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402 — only once a browser is known to exist

ECHO = 'tr[data-server="echo"]'
WIDTH = 1280


def number(page: Page, selector: str) -> float:
    text = (page.text_content(selector) or "").replace(",", "").replace("%", "").strip()
    return float(text) if text not in ("", "\u2013") else 0.0


def wait_for_number(page: Page, selector: str, at_least: float, timeout_ms: int = 30_000) -> None:
    page.wait_for_function(
        """([selector, atLeast]) => {
             const el = document.querySelector(selector);
             const text = el ? el.textContent.replace(/[,%\\s]/g, "") : "";
             return text !== "" && text !== "\\u2013" && Number(text) >= atLeast;
           }""",
        arg=[selector, at_least], timeout=timeout_ms)


def test_status_page_shows_live_numbers_after_real_calls(stack: Stack, tmp_path: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 800})  # a laptop screen
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"{stack.http_url()}/status?every=0.5")
            page.wait_for_selector(ECHO, timeout=30_000)
            assert page.text_content('[data-field="readiness"]') == "ready"
            before = number(page, f'{ECHO} td[data-field="calls_total"]')
            updates = int(page.evaluate("Number(document.body.dataset.updates || 0)"))
            key = f"page-{time.time_ns()}"
            with RawClient(stack.ws_url()) as client:
                for i in range(8):
                    assert client.call("echo__echo", {"text": f"page {i}"})["result"]["isError"] is False
                client.call("echo__stamp", {"key": key})
                client.call("echo__stamp", {"key": key})  # answered from the cache
                assert client.call("echo__fail", {})["result"]["isError"] is True  # a tool error, not a failure
                # while the socket is open: the page shows it, and the calls, without a reload
                wait_for_number(page, f'{ECHO} td[data-field="calls_total"]', before + 10)
                wait_for_number(page, '.card [data-field="open_sockets"]', 1)
                wait_for_number(page, '.card [data-field="open_sessions"]', 1)
                wait_for_number(page, f'{ECHO} td[data-field="calls_per_s"]', 0.01)
                wait_for_number(page, f'{ECHO} td[data-field="execution_mean"]', 0.0)
                wait_for_number(page, f'{ECHO} td[data-field="cache_hit_rate"]', 0.1)
                wait_for_number(page, '.card [data-field="calls_per_s"]', 0.01)
                wait_for_number(page, f'{ECHO} td[data-field="tool_errors_per_s"]', 0.01)
                wait_for_number(page, f'{ECHO} td[data-field="execution_p95"]', 0.0)
                shot = os.environ.get("MCP_BROKER_STATUS_SCREENSHOT") or str(tmp_path / "status.png")
                page.screenshot(path=shot, full_page=True)
            assert int(page.evaluate("Number(document.body.dataset.updates || 0)")) > updates  # it refreshed itself
            for server in stack.servers:
                row = f'tr[data-server="{server}"]'
                assert (page.text_content(f'{row} td[data-field="health"]') or "").startswith("healthy")
                assert number(page, f'{row} td[data-field="workers"]') >= 1
            # the whole table fits the width: no horizontal scrolling, the last columns in view
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            for field in ("retries_total", "backend_restarts_total", "execution_p95", "failures_per_s"):
                box = page.locator(f'{ECHO} td[data-field="{field}"]').bounding_box()
                assert box is not None and box["x"] + box["width"] <= WIDTH, (field, box)
            header = page.text_content("thead") or ""
            assert "≤" not in header and "<=" not in header and "Tool errors/s" in header and "Failures/s" in header
            p95 = page.text_content(f'{ECHO} td[data-field="execution_p95"]') or ""
            assert p95.replace(",", "").replace(".", "", 1).isdigit(), p95  # a number of milliseconds, no bound
            legend = page.text_content(".legend") or ""
            assert "Answered" in legend and "Runs" in legend and "cache hit" in legend
            assert not errors, errors
            assert Path(shot).stat().st_size > 10_000
        finally:
            browser.close()


def test_p95_is_interpolated_within_its_bucket_over_all_tools_of_a_server() -> None:
    """Not the bucket's bound: 20 runs of two tools between 0.5 s and 1 s give a p95 of 0.975 s (the 19th of 20
    runs, spread evenly over the bucket), where the old upper-bound reading said "<= 1000 ms"; with one run
    slower, the max over tools' bounds said "<= 60000"."""
    from broker.metrics import LATENCY_BUCKETS, Snapshot

    low, high = (b for b in LATENCY_BUCKETS if b in (0.5, 1.0))
    name = "mcp_broker_execution_seconds"
    snapshot = Snapshot(counters={}, sums={}, gauges={}, buckets={
        (name, ("echo", "a", "ok")): {repr(high): 10.0},
        (name, ("echo", "b", "ok")): {repr(high): 10.0}})
    both = [("echo", "a", "ok"), ("echo", "b", "ok")]
    p95 = snapshot.quantile(name, both, 0.95)
    assert p95 is not None and low < p95 < high and abs(p95 - 0.975) < 1e-9
    snapshot.buckets[(name, ("echo", "b", "ok"))] = {repr(high): 9.0, "+Inf": 1.0}
    assert snapshot.quantile(name, both, 0.95) == high  # the 19th of 20 is the last of that bucket
    assert snapshot.quantile(name, [("echo", "c", "ok")], 0.95) is None
