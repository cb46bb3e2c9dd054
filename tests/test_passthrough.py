"""Full passthrough: a backend's log messages, sampling and elicitation requests reach the client mid-call,
and the client's answers travel back to the waiting backend call (worker → Redis → web → client → back)."""

from __future__ import annotations

from typing import Any

import anyio
from mcp import Client
from mcp_types import CreateMessageResult, ElicitResult, TextContent

from client.websocket import WebSocketTransport
from tests.stack import Stack
from tests.wsclient import RawClient

SAMPLING = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "tests", "version": "1"}}


def test_sampling_request_reaches_a_websocket_client_and_the_answer_returns(stack: Stack) -> None:
    with RawClient(stack.ws_url(), initialize=False) as client:
        client.request("initialize", SAMPLING)
        client.send({"jsonrpc": "2.0", "id": "q", "method": "tools/call",
                     "params": {"name": "echo__ask_model", "arguments": {"question": "favourite colour?"}}})
        asked = client.recv()
        assert asked["method"] == "sampling/createMessage"
        assert asked["params"]["messages"][0]["content"]["text"] == "favourite colour?"
        client.send({"jsonrpc": "2.0", "id": asked["id"], "result": {
            "role": "assistant", "content": {"type": "text", "text": "blue"}, "model": "test-model"}})
        answer = client.response()
        assert answer["id"] == "q" and answer["result"]["structuredContent"]["result"] == "blue"


def test_a_client_without_the_capability_gets_the_prescribed_error(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:  # declares no capabilities
        error = client.call("echo__ask_model", {"question": "?"})["error"]
        # the backend's create_message got the error a client without sampling answers, and passed it on
        assert error["code"] == -32601 and "did not declare the 'sampling' capability" in error["message"]
        assert all(n.get("method") != "sampling/createMessage" for n in client.notifications)


def test_sdk_clients_answer_sampling_and_elicitation_over_both_transports(stack: Stack) -> None:
    async def sampling(_context: Any, params: Any) -> CreateMessageResult:
        question = params.messages[0].content.text
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=f"answer to {question}"),
                                   model="test-model")

    async def elicitation(_context: Any, params: Any) -> ElicitResult:
        assert "colour" in params.requested_schema["properties"]
        return ElicitResult(action="accept", content={"colour": "green"})

    async def scenario(transport: Any) -> None:
        async with Client(transport, sampling_callback=sampling, elicitation_callback=elicitation) as client:
            sampled = await client.call_tool("echo__ask_model", {"question": "why?"})
            assert sampled.structured_content == {"result": "answer to why?"}
            elicited = await client.call_tool("echo__ask_user", {"question": "which colour?"})
            assert elicited.structured_content == {"result": "accept: green"}

    anyio.run(scenario, WebSocketTransport(stack.ws_url()))
    anyio.run(scenario, f"{stack.http_url()}/mcp")


def test_log_messages_pass_through_filtered_by_the_client_level(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        assert client.init_result is not None and "logging" in client.init_result["capabilities"]
        assert client.request("logging/setLevel", {"level": "warning"})["result"] == {}
        assert client.call("echo__chatty", {"count": 3})["result"]["structuredContent"]["result"] == "sent 3"
        logs = [n["params"] for n in client.notifications if n.get("method") == "notifications/message"]
        assert [(m["level"], m["data"]) for m in logs] == [("warning", "message 3 of 3")]
        client.notifications.clear()
        client.request("logging/setLevel", {"level": "debug"})
        client.call("echo__chatty", {"count": 2})
        logs = [n["params"] for n in client.notifications if n.get("method") == "notifications/message"]
        assert [m["data"] for m in logs] == ["message 1 of 2", "message 2 of 2"]
        assert logs[0]["logger"] == "chatty"
        assert client.request("logging/setLevel", {"level": "loud"})["error"]["code"] == -32602
