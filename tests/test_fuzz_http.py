"""Fuzzing `/mcp` over Streamable HTTP: random and mutated bodies, POSTed to a handshake-era session and as
stateless 2026-07-28 requests, against the real web process.

The oracle, per body: the answer is never a 5xx; every JSON-RPC message in it (a JSON body, or each
`data:` line of an event stream) is well-formed (as `tests.test_fuzz.well_formed` defines it: no
"Internal error" either); a body that is not JSON gets a -32700 error. At the end the web process is
still up and the session still answers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
from hypothesis import given

from broker import wire
from tests.stack import Stack
from tests.test_fuzz import (
    FUZZ_SETTINGS,
    _web_still_fine,
    frames_mutated,
    frames_random,
    strict_loads,
    well_formed,
)

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
BASE_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
EXAMPLES = 600  # per test: an HTTP request costs more than a WebSocket frame


def messages_of(response: httpx2.Response) -> list[Any]:
    """The JSON-RPC messages an answer carries (none for a 202)."""
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        found = []
        for line in response.text.split("\n"):  # SSE lines end at LF (or CR LF); not splitlines(): U+0085 is data
            line = line.removesuffix("\r")
            if line.startswith("data:") and line[5:].strip():
                found.append(strict_loads(line[5:]))
        return found
    if not response.content:
        return []
    assert kind.startswith("application/json"), (response.status_code, kind, response.text[:300])
    body = strict_loads(response.content)
    return body if isinstance(body, list) else [body]


def parses(frame: str | bytes) -> bool:
    try:
        wire.loads(frame)  # JSON as RFC 8259 has it: NaN and Infinity are not
        return True
    except (ValueError, RecursionError):
        return False


class HttpFuzzer:
    def __init__(self, url: str, era: str) -> None:
        self.url = url
        self.http = httpx2.Client(timeout=30)
        self.headers = {**BASE_HEADERS, "MCP-Protocol-Version": era}
        self.sent = 0
        self.parse_errors = 0
        if era == LEGACY:
            init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {"protocolVersion": LEGACY, "capabilities": {},
                               "clientInfo": {"name": "fuzz", "version": "1"}}}
            response = self.http.post(url, content=json.dumps(init), headers=BASE_HEADERS)
            assert response.status_code == 200, response.text
            self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert self.http.post(url, content=json.dumps(initialized), headers=self.headers).status_code == 202

    def send(self, frame: str | bytes) -> None:
        self.sent += 1
        body = frame.encode() if isinstance(frame, str) else frame
        response = self.http.post(self.url, content=body, headers=self.headers)
        assert response.status_code < 500, (frame[:200], response.status_code, response.text[:300])
        found = messages_of(response)
        for message in found:
            problem = well_formed(message)
            assert problem is None, (problem, frame[:200], message)
        if not parses(frame):
            assert any((m.get("error") or {}).get("code") == -32700 for m in found), (frame[:200], found)
            self.parse_errors += 1

    def finish(self) -> None:
        ping = {"jsonrpc": "2.0", "id": "last", "method": "ping"}
        if "Mcp-Session-Id" in self.headers:
            [answer] = messages_of(self.http.post(self.url, content=json.dumps(ping), headers=self.headers))
            assert answer == {"jsonrpc": "2.0", "id": "last", "result": {}}
        print(f"http fuzz: {self.sent} bodies, {self.parse_errors} parse errors")
        self.http.close()


def run(stack: Stack, era: str, strategy: Any) -> None:
    fuzzer = HttpFuzzer(f"{stack.http_url()}/mcp", era)

    @FUZZ_SETTINGS.__class__(FUZZ_SETTINGS, max_examples=EXAMPLES)
    @given(frame=strategy)
    def one(frame: str | bytes) -> None:
        fuzzer.send(frame)

    one()
    fuzzer.finish()
    assert fuzzer.sent >= EXAMPLES
    _web_still_fine(stack)


def test_random_bodies_on_a_session_get_well_formed_answers(stack: Stack) -> None:
    run(stack, LEGACY, frames_random)


def test_mutated_bodies_as_2026_requests_get_well_formed_answers(stack: Stack) -> None:
    run(stack, MODERN, frames_mutated())
