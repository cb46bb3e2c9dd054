"""The official SDK's `mcp.Client`, over our WebSocket transport, against the real broker."""

from __future__ import annotations

import json

import anyio
from mcp import Client

from client.async_broker_client import AsyncMCPBrokerClient, text
from client.broker_client import MCPBrokerClient
from client.websocket import WebSocketTransport
from tests.stack import Stack


def test_sdk_client_lists_every_server_and_calls_through_the_broker(stack: Stack) -> None:
    async def scenario() -> None:
        async with Client(WebSocketTransport(stack.ws_url())) as client:
            # auto mode probed server/discover, got method-not-found, and fell back to the handshake
            assert client.session.initialize_result is not None
            assert client.session.initialize_result.protocol_version == "2025-11-25"
            tools = (await client.list_tools()).tools
            assert {t.name.split("__", 1)[0] for t in tools} == {*stack.servers, "broker"}  # + the page tool
            added = await client.call_tool("echo__add", {"a": 20, "b": 22})
            assert added.structured_content == {"result": 42} and not added.is_error
            now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert json.loads(now.content[0].text)["timezone"] == "UTC"  # type: ignore[union-attr]
            failed = await client.call_tool("echo__fail", {})
            assert failed.is_error

    anyio.run(scenario)


def test_async_client_runs_many_calls_concurrently(stack: Stack) -> None:
    async def scenario() -> list[str]:
        async with AsyncMCPBrokerClient(stack.ws_url()) as client:
            results = await client.call_many([("echo__echo", {"text": f"n{i}"}) for i in range(100)])
            return [text(r) for r in results]

    assert anyio.run(scenario) == [f"n{i}" for i in range(100)]


def test_sync_one_liner(stack: Stack) -> None:
    result = MCPBrokerClient(stack.ws_url()).call("time__get_current_time", {"timezone": "Europe/Paris"})
    assert json.loads(text(result))["timezone"] == "Europe/Paris"
    with MCPBrokerClient(stack.ws_url()) as client:
        assert {t.name for t in client.list_tools()} >= {"echo__echo", "notes__add_note"}
        assert text(client.call("echo__echo", {"text": "sync"})) == "sync"
