"""The whole data path with real components: WebSocket → Celery queue per server → warm MCP session → Redis → socket."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from tests.stack import Stack
from tests.wsclient import RawClient

TOOL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def structured(response: dict) -> object:
    return response["result"]["structuredContent"]["result"]


def test_catalog_aggregates_every_server_namespaced(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        tools = client.request("tools/list")["result"]["tools"]
    names = {t["name"] for t in tools}
    assert {"echo__echo", "echo__slow", "notes__add_note", "time__get_current_time", "time__convert_time"} <= names
    assert all(TOOL_NAME.match(n) for n in names)
    assert {n.split("__", 1)[0] for n in names} == {*stack.servers, "broker"}  # + the page tool, broker__read_result
    by_name = {t["name"]: t for t in tools}
    assert by_name["echo__add"]["inputSchema"]["required"] == ["a", "b"]
    assert "outputSchema" in by_name["echo__add"]
    # the catalog lives in Redis, one document per server, so every web process sees the same
    stored = json.loads(stack.redis().get("mcpb:catalog:time"))
    assert {t["name"] for t in stored["tools"]} == {n.split("__", 1)[1] for n in names if n.startswith("time__")}


def test_initialize_negotiates_handshake_revisions(stack: Stack) -> None:
    for version in ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"):
        with RawClient(stack.ws_url(), version=version) as client:
            assert client.init_result is not None
            assert client.init_result["protocolVersion"] == version
            assert client.init_result["capabilities"]["tools"] is not None
            assert client.init_result["serverInfo"]["name"] == "mcp-broker"
    with RawClient(stack.ws_url(), version="1999-01-01") as client:
        assert client.init_result is not None
        assert client.init_result["protocolVersion"] == "2025-11-25"
        assert client.request("ping")["result"] == {}
        # server/discover is the 2026 era's probe: a handshake-only server answers method-not-found
        assert client.request("server/discover", {})["error"]["code"] == -32601


def test_a_call_to_each_server(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        assert structured(client.call("echo__echo", {"text": "héllo"})) == "héllo"
        assert structured(client.call("echo__add", {"a": 2, "b": 40})) == 42
        count = client.call("notes__add_note", {"text": "first"})["result"]["structuredContent"]["result"]
        assert isinstance(count, int) and count >= 1
        now = client.call("time__get_current_time", {"timezone": "UTC"})["result"]
        assert now["isError"] is False
        payload = json.loads(now["content"][0]["text"])
        assert payload["timezone"] == "UTC" and payload["datetime"].startswith(time.strftime("%Y-", time.gmtime()))
        # the stdio backend got the env the config gave it
        assert client.call("echo__whoami")["result"]["structuredContent"]["marker"] == "from-config"


def test_fifty_concurrent_calls_on_one_socket_match_their_requests(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        client.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                     "params": {"name": "echo__slow", "arguments": {"seconds": 1.0, "steps": 1}}})
        expected = {}
        for i in range(49):
            request_id = f"req-{i}"
            if i % 2:
                expected[request_id] = f"text {i} {uuid.uuid4()}"
                params = {"name": "echo__echo", "arguments": {"text": expected[request_id]}}
            else:
                expected[request_id] = float(i * 1000 + 7)
                params = {"name": "echo__add", "arguments": {"a": i * 1000, "b": 7}}
            client.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        order = []
        results = {}
        for _ in range(50):
            message = client.response(timeout=30)
            order.append(message["id"])
            results[message["id"]] = message
        assert set(results) == {"slow", *expected}
        for request_id, value in expected.items():
            assert structured(results[request_id]) == value, request_id
        assert structured(results["slow"]) == "slept 1.0s"
        assert order[-1] == "slow"  # answered as they finish, not in request order


def test_tool_errors_are_results_not_protocol_errors(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        result = client.call("echo__fail", {"message": "boom"})["result"]
        assert result["isError"] is True
        assert "fail" in result["content"][0]["text"]


def test_progress_notifications_arrive_in_order_before_the_result(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        client.send({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
            "name": "echo__slow", "arguments": {"seconds": 0.6, "steps": 3}, "_meta": {"progressToken": "tok-1"}}})
        seen = []
        while True:
            message = client.recv()
            if message.get("id") == 9:
                break
            if message["method"] == "notifications/progress":  # (a list_changed may come in between)
                seen.append(message["params"])
        assert [p["progress"] for p in seen] == [1, 2, 3]
        assert all(p["progressToken"] == "tok-1" and p["total"] == 3 for p in seen)
        assert structured(message) == "slept 0.6s"


BAD_FRAMES = [
    ("not json", "{this is not json", -32700),
    ("truncated", '{"jsonrpc": "2.0", "id": 1, "method": "ping"', -32700),
    ("not an object", "42", -32600),
    ("empty batch", "[]", -32600),
    ("no jsonrpc", json.dumps({"id": 1, "method": "ping"}), -32600),
    ("wrong jsonrpc", json.dumps({"jsonrpc": "1.0", "id": 1, "method": "ping"}), -32600),
    ("params not object", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}), -32600),
    ("bad id type", json.dumps({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}), -32600),
    ("unknown method", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/explode"}), -32601),
    ("unknown tool", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": {"name": "echo__nope", "arguments": {}}}), -32602),
    ("unknown server", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                   "params": {"name": "nope__echo", "arguments": {}}}), -32602),
    ("no tool name", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}), -32602),
    ("arguments not object", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                         "params": {"name": "echo__echo", "arguments": "hi"}}), -32602),
    ("bad cursor", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                               "params": {"cursor": "zzz"}}), -32602),
]


@pytest.mark.parametrize(("case", "frame", "code"), BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
def test_bad_input_gets_its_error_and_the_socket_still_serves(stack: Stack, case: str, frame: str, code: int) -> None:
    with RawClient(stack.ws_url()) as client:
        client.send(frame)
        error = client.response()
        assert error["jsonrpc"] == "2.0"
        assert error["error"]["code"] == code, error
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]
        assert structured(client.call("echo__echo", {"text": "still here"})) == "still here"


def test_binary_frame_that_is_not_utf8(stack: Stack) -> None:
    with RawClient(stack.ws_url()) as client:
        client.ws.send(b"\xff\xfe\x00garbage")
        assert client.response()["error"]["code"] == -32700
        assert structured(client.call("echo__echo", {"text": "ok"})) == "ok"


def test_schema_invalid_arguments_follow_the_negotiated_revision(stack: Stack) -> None:
    # up to 2025-06-18, invalid arguments are a protocol error (-32602) ...
    with RawClient(stack.ws_url(), version="2025-06-18") as client:
        error = client.call("echo__add", {"a": "one", "b": 2})["error"]
        assert error["code"] == -32602 and "a: 'one' is not of type 'number'" in error["message"]
        assert structured(client.call("echo__add", {"a": 1, "b": 2})) == 3
    # ... from 2025-11-25 (SEP-1303) they are a tool execution error the model can read
    with RawClient(stack.ws_url(), version="2025-11-25") as client:
        result = client.call("echo__add", {"b": 2})["result"]
        assert result["isError"] is True and "'a' is a required property" in result["content"][0]["text"]
        assert structured(client.call("echo__add", {"a": 1, "b": 2})) == 3
