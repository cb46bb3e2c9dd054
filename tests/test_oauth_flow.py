"""A hosted connector's sign-in, end to end, with clients no one here wrote: the official TypeScript SDK's OAuth
client provider (npm `@modelcontextprotocol/sdk`, pinned in tests/oauth_client/package.json, installed into
the git-ignored tests/.oauth-node) against the broker and a real authorization server (Authlib,
tests/oauth_server.py), the browser step done by Debian's chromium, headless, driven by Playwright.

The flow: POST /mcp → 401 with `resource_metadata` → the broker's Protected Resource Metadata → the
authorization server's metadata → dynamic client registration → PKCE authorization code flow in the browser
(consent granted at once, so the page is a redirect chain back to the client's loopback redirect URI) →
token (audience: the broker's /mcp) → initialize, tools/list, tools/call. Then the same flow for a user
whose groups map to a profile that may use only `time__*`: the broker lists only those, and refuses echo.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import sync_playwright

from tests.installs import OAUTH_NODE, installed
from tests.oauth_server import AuthServer
from tests.stack import Stack
from tests.test_status_page import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).parent
SCRIPT = HERE / "oauth_client" / "client.mjs"
FLOW_TIMEOUT_S = 90


def install_client() -> Path:
    """The pinned SDK npm-installed into tests/.oauth-node once (tests/installs.py), the client script beside it."""
    node_dir = installed("oauth-node")
    shutil.copyfile(SCRIPT, node_dir / "client.mjs")  # beside its node_modules, where ESM resolves packages
    return node_dir / "client.mjs"


@pytest.fixture(scope="module")
def flow_broker(stack: Stack) -> Iterator[tuple[str, AuthServer]]:
    script = install_client()
    assert script.exists()
    with AuthServer() as server:
        block = {"issuers": [server.issuer], "scopes_required": ["mcp"],
                 "profiles": {"staff": {"allow": ["*"]}, "timekeeper": {"allow": ["time__*"]}},
                 "rules": [{"match": {"groups": "staff"}, "profile": "staff"},
                           {"match": {"groups": "time-only"}, "profile": "timekeeper"}]}
        with stack.extra_webs({"MCP_BROKER_OAUTH": json.dumps(block)}, count=1) as (port,):
            stack.wait_web_ready(port)
            yield f"http://127.0.0.1:{port}", server


def run_flow(url: str, tool: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the SDK client; open its authorization URL in headless chromium; its events, in order."""
    node = shutil.which("node") or "node"
    proc = subprocess.Popen([node, str(OAUTH_NODE / "client.mjs"), url, tool, json.dumps(arguments)], cwd=OAUTH_NODE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    events: list[dict[str, Any]] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                while True:
                    line = lines.get(timeout=FLOW_TIMEOUT_S)
                    if line is None:
                        break
                    event = json.loads(line)
                    events.append(event)
                    if event["event"] == "authorize":
                        page = browser.new_page()
                        page.goto(event["url"], timeout=FLOW_TIMEOUT_S * 1000)
                        page.wait_for_selector("#done", timeout=FLOW_TIMEOUT_S * 1000)  # back at the client
                        events.append({"event": "browser", "landed": page.url.split("?")[0]})
                        page.close()
            finally:
                browser.close()
        assert proc.wait(FLOW_TIMEOUT_S) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(10)
    return events


def first(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(e for e in events if e["event"] == name)


def test_sdk_client_signs_in_through_the_browser_and_calls_a_tool(flow_broker: tuple[str, AuthServer]) -> None:
    base, server = flow_broker
    events = run_flow(f"{base}/mcp", "echo__echo", {"text": "hello over oauth"})
    http = [e for e in events if e["event"] == "http"]
    # 401 with the challenge, then discovery through the broker's metadata to the authorization server
    assert http[0]["url"] == f"{base}/mcp" and http[0]["status"] == 401
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"' in http[0]["www_authenticate"]
    urls = [(e["method"], e["url"], e["status"]) for e in http]
    assert ("GET", f"{base}/.well-known/oauth-protected-resource/mcp", 200) in urls
    assert ("GET", f"{server.issuer}/.well-known/oauth-authorization-server", 200) in urls
    assert ("POST", f"{server.issuer}/register", 201) in urls
    assert ("POST", f"{server.issuer}/token", 200) in urls
    order = [u for _, u, _ in urls]
    assert order.index(f"{server.issuer}/register") < order.index(f"{server.issuer}/token")
    assert first(events, "browser")["landed"].startswith("http://127.0.0.1:")
    assert "code_challenge_method=S256" in first(events, "authorize")["url"]
    assert "mcp" in first(events, "token")["scope"].split()
    assert "echo__echo" in first(events, "tools")["names"]
    result = first(events, "result")["result"]
    assert result.get("isError") is not True and "hello over oauth" in json.dumps(result)
    # after the token: the broker answered the MCP requests themselves
    assert any(e["url"] == f"{base}/mcp" and e["status"] == 200 for e in http[order.index(f"{server.issuer}/token"):])


def test_a_users_groups_map_to_a_restricted_profile(flow_broker: tuple[str, AuthServer]) -> None:
    base, server = flow_broker
    server.user = {"sub": "tim", "groups": ["time-only"]}
    try:
        events = run_flow(f"{base}/mcp", "echo__echo", {"text": "not for tim"})
    finally:
        server.user = {"sub": "alice", "groups": ["staff"]}
    names = first(events, "tools")["names"]
    assert names and all(n.startswith("time__") for n in set(names) - {"broker__read_result"})
    refused = first(events, "call_error")
    assert refused["code"] == -32003 and "oauth:timekeeper:tim@" in refused["message"]


def test_a_per_server_endpoint_has_its_own_resource(flow_broker: tuple[str, AuthServer]) -> None:
    """`/servers/echo/mcp`: the client follows the path-suffixed metadata and gets a token for that endpoint."""
    base, server = flow_broker
    events = run_flow(f"{base}/servers/echo/mcp", "echo", {"text": "one server"})
    http = [e for e in events if e["event"] == "http"]
    metadata = f"{base}/.well-known/oauth-protected-resource/servers/echo/mcp"
    assert f'resource_metadata="{metadata}"' in http[0]["www_authenticate"]
    assert ("GET", metadata, 200) in [(e["method"], e["url"], e["status"]) for e in http]
    assert "resource=" + quote(f"{base}/servers/echo/mcp", safe="") in first(events, "authorize")["url"]
    assert "one server" in json.dumps(first(events, "result")["result"])
    assert server.issued[-1]["aud"] == f"{base}/servers/echo/mcp"  # RFC 8707: bound to that endpoint
