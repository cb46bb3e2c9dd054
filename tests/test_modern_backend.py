"""A modern-era backend behind the broker, for clients of both eras. Its own stack: one backend
(`examples/servers/stamps.py`, once with `protocol: "auto"`, once pinned to `"2026-07-28"`), a worker, a web.

- Cache directives: its `cacheScope: "public"` result with `ttlMs > 0` is kept in the shared cache and served
  to any client without running the backend again; a modern-era client is told the remaining `ttlMs`.
- Its `input_required` rounds: the worker's SDK client answers them through its callbacks, i.e. the broker's
  relay, so a handshake-era client is sent a real elicitation request and a modern-era client an
  `input_required`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import ElicitResult

from client.websocket import WebSocketTransport
from tests.stack import ROOT, Stack


@dataclass
class Backend:
    stack: Stack
    name: str  # the server's name in the config (one per era setting: the shared cache is keyed by it)

    def ws_url(self) -> str:
        return self.stack.ws_url()

    def http_url(self) -> str:
        return self.stack.http_url()


@pytest.fixture(scope="module", params=["auto", "2026-07-28"])
def stamps(request: pytest.FixtureRequest, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """`auto` discovers the backend, then speaks the modern era; a pinned `2026-07-28` adopts it without
    discovery."""
    name = "stamps" if request.param == "auto" else "stamps_pinned"
    config = tmp_path_factory.mktemp(name) / "mcp_servers.json"
    config.write_text(json.dumps({"mcpServers": {name: {
        "command": "python", "args": [str(Path(ROOT, "examples", "servers", "stamps.py"))],
        "broker": {"protocol": request.param, "timeout_s": 20}}}}))
    stack = Stack(redis_url, config_path=config)
    try:
        stack.start_worker(name)
        stack.start_web()
        stack.wait_for_catalog([name])
        yield Backend(stack, name)
    finally:
        stack.stop()


def test_a_public_result_is_served_to_another_client_from_the_cache(stamps: Backend) -> None:
    url = f"{stamps.http_url()}/servers/{stamps.name}/mcp"

    async def scenario() -> None:
        async with Client(url, mode="2026-07-28") as first:
            fresh = await first.read_resource("stamp://now")
            assert fresh.cache_scope == "public" and fresh.ttl_ms > 0
        async with Client(url, mode="legacy") as second:  # another client, another era
            again = await second.read_resource("stamp://now")
            assert again.contents[0].text == fresh.contents[0].text  # type: ignore[union-attr]
        async with Client(url, mode="2026-07-28") as third:
            cached = await third.read_resource("stamp://now")
            assert cached.contents[0].text == fresh.contents[0].text  # type: ignore[union-attr]
            assert 0 < cached.ttl_ms <= fresh.ttl_ms  # what is left of the backend's minute
            assert (await third.call_tool("reads", {})).structured_content == {"result": 1}  # ran once

    anyio.run(scenario)


def test_its_input_required_rounds_reach_clients_of_both_eras(stamps: Backend) -> None:
    asked: list[str] = []

    async def elicitation(_context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"colour": f"colour {len(asked)}"})

    async def scenario() -> None:
        # a handshake-era client on the WebSocket: the backend's question arrives as a pushed request
        async with Client(WebSocketTransport(stamps.ws_url()), elicitation_callback=elicitation) as handshake:
            assert handshake.session.initialize_result is not None
            pushed = await handshake.call_tool(f"{stamps.name}__favourite", {})
            assert pushed.structured_content == {"result": "favourite colour: colour 1"}
        # a modern-era client over HTTP: the same question arrives as an input_required round
        async with Client(f"{stamps.http_url()}/mcp", mode="2026-07-28", elicitation_callback=elicitation) as modern:
            rounds = await modern.call_tool(f"{stamps.name}__favourite", {})
            assert rounds.structured_content == {"result": "favourite colour: colour 2"}

    anyio.run(scenario)
    assert asked == ["Favourite colour?", "Favourite colour?"]
