"""Every answer is JSON or empty (issue 17 part 4): across paths that exist and paths that do not, every method.

An empty answer has no Content-Type at all (Flask labels an empty Response `text/html`: its automatic OPTIONS
answers and the 202s of notifications did). The deliberate exceptions: `/status` is an HTML page and
`/metrics` Prometheus' text format, on GET and HEAD.
"""

from __future__ import annotations

import itertools
import json

import httpx2
import pytest

from tests.stack import Stack

PATHS = ("/", "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration",
         "/.well-known/mcp.json", "/.well-known/security.txt", "/favicon.ico", "/robots.txt", "/mcp",
         "/servers/echo/mcp", "/servers/nope/mcp", "/v1", "/v1/calls", "/v1/batches", "/v1/batches/nope",
         "/status", "/status.json", "/metrics", "/readyz", "/healthz", "/admin/reload", "/register", "/authorize",
         "/token", "/sse", "/messages", "/mcp/extra")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
NOT_JSON = {("GET", "/status"): "text/html", ("HEAD", "/status"): "text/html",
            ("GET", "/metrics"): "text/plain", ("HEAD", "/metrics"): "text/plain"}


def check(response: httpx2.Response, method: str, path: str) -> None:
    content_type = response.headers.get("content-type", "")
    where = f"{method} {path} -> {response.status_code} {content_type!r} {response.content[:120]!r}"
    expected = NOT_JSON.get((method, path))
    if expected is not None:
        assert content_type.startswith(expected), where
        return
    if method == "HEAD" or not response.content:
        assert not response.content or method == "HEAD", where
        if content_type:  # a HEAD may name the type its GET would have (JSON), an empty answer names none
            assert method == "HEAD" and "json" in content_type, where
        return
    assert content_type.split(";")[0].strip() in ("application/json", "text/event-stream"), where
    if content_type.startswith("application/json"):
        json.loads(response.content)


def test_every_path_and_method_answers_json_or_nothing(stack: Stack) -> None:
    base = stack.http_url()
    with httpx2.Client(timeout=30) as http:
        for path, method in itertools.product(PATHS, METHODS):
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            response = http.request(method, base + path, content=body, headers={
                "Accept": "application/json, text/event-stream", "Content-Type": "application/json"})
            check(response, method, path)


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28"])
def test_a_notification_is_answered_202_with_nothing(stack: Stack, version: str) -> None:
    url = f"{stack.http_url()}/mcp"
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": version}
    with httpx2.Client(timeout=30) as http:
        if version == "2026-07-28":
            meta = {"io.modelcontextprotocol/protocolVersion": version,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "types", "version": "1"}}
            notification = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": "nothing-of-ours", "_meta": meta}}
        else:
            init = http.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "types", "version": "1"}}})
            headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
            notification = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        answer = http.post(url, headers={**headers, "Mcp-Method": notification["method"]}, json=notification)
        assert answer.status_code == 202 and answer.content == b"", answer.text
        assert "content-type" not in answer.headers, answer.headers
        if "Mcp-Session-Id" in headers:
            ended = http.delete(url, headers=headers)
            assert ended.status_code == 200 and ended.content == b"" and "content-type" not in ended.headers
