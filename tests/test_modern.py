"""MCP 2026-07-28 (stateless per-request envelope) over Streamable HTTP, beside the handshake era.

The era is chosen per request by the `MCP-Protocol-Version` header, as the SDK's own server does. The
backends behind the broker speak the handshake era; the broker translates: results gain `resultType` and
cache directives, and a backend's mid-call sampling request becomes an `input_required` result whose signed
`requestState` brings the client's answer back to the suspended call.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp_types import CreateMessageResult, TextContent

from cli.devrun import free_port
from client.websocket import WebSocketTransport
from tests.stack import Stack
from tests.wsclient import RawClient

MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
            "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "1"}}


def post(http: httpx2.Client, url: str, method: str, params: dict[str, Any] | None = None, rid: Any = 1,
         headers: dict[str, str] | None = None, meta: dict[str, Any] | None = None) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": rid, "method": method,
            "params": {**(params or {}), "_meta": ENVELOPE if meta is None else meta}}
    sent = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": MODERN,
            "Mcp-Method": method}
    if params and method == "tools/call":
        sent["Mcp-Name"] = params["name"]
    return http.post(url, content=json.dumps(body), headers={**sent, **(headers or {})})


def test_sdk_client_pinned_to_2026_on_both_endpoints(stack: Stack) -> None:
    async def scenario() -> None:
        async with Client(f"{stack.http_url()}/mcp", mode=MODERN) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"echo__echo", "time__get_current_time"} <= names
            added = await client.call_tool("echo__add", {"a": 2, "b": 3})
            assert added.structured_content == {"result": 5}
            now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})  # a third-party backend
            assert json.loads(now.content[0].text)["timezone"] == "UTC"  # type: ignore[union-attr]
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            slow = await client.call_tool("echo__slow", {"seconds": 0.2, "steps": 2}, progress_callback=on_progress)
            assert slow.structured_content == {"result": "slept 0.2s"} and seen == [1, 2]
        async with Client(f"{stack.http_url()}/servers/notes/mcp", mode=MODERN) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"add_note", "list_notes", "clear_notes",
                                                                            "broker__read_result"}  # + the page tool
            await client.call_tool("add_note", {"text": "stateless"})
            read = await client.read_resource("notes://all")
            assert "stateless" in read.contents[0].text  # type: ignore[union-attr]
            prompt = await client.get_prompt("summarize", {"style": "long"})
            assert "long style" in prompt.messages[0].content.text  # type: ignore[union-attr]

    anyio.run(scenario)


def test_envelope_and_header_rules(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=20) as http:
        discover = post(http, url, "server/discover")
        assert discover.status_code == 200 and "mcp-session-id" not in discover.headers
        result = discover.json()["result"]
        assert result["supportedVersions"] == [MODERN] and "tools" in result["capabilities"]
        assert result["resultType"] == "complete" and result["cacheScope"] == "private"
        listed = post(http, url, "tools/list").json()["result"]
        assert listed["resultType"] == "complete" and listed["_meta"]["io.modelcontextprotocol/serverInfo"]

        mismatch = post(http, url, "tools/list", rid=7, headers={"Mcp-Method": "prompts/list"})
        assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
        assert mismatch.json()["id"] == 7
        wrong_name = post(http, url, "tools/call", {"name": "echo__echo", "arguments": {"text": "x"}},
                          headers={"Mcp-Name": "echo__add"})
        assert wrong_name.json()["error"]["code"] == -32020
        future = post(http, url, "tools/list", headers={"MCP-Protocol-Version": "2099-01-01"},
                      meta={**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"})
        assert future.status_code == 400 and future.json()["error"]["code"] == -32022
        assert future.json()["error"]["data"]["supported"] == [MODERN]
        bare = post(http, url, "tools/list", meta={})
        assert bare.status_code == 400 and bare.json()["error"]["code"] == -32602
        for removed in ("initialize", "ping", "logging/setLevel"):
            gone = post(http, url, removed)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == -32601
        note = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {}},
                         headers={"Accept": "application/json", "MCP-Protocol-Version": MODERN})
        assert note.status_code == 202


def test_backend_sampling_becomes_an_input_required_round_trip(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    call = {"name": "echo__ask_model", "arguments": {"question": "favourite colour?"}}
    with httpx2.Client(timeout=30) as http:
        first = post(http, url, "tools/call", call, rid="q").json()
        assert first["id"] == "q" and first["result"]["resultType"] == "input_required"
        (key, asked), = first["result"]["inputRequests"].items()
        assert asked["method"] == "sampling/createMessage"
        assert asked["params"]["messages"][0]["content"]["text"] == "favourite colour?"
        state = first["result"]["requestState"]

        altered = state[:-1] + ("1" if state[-1] == "0" else "0")  # always a different signature
        tampered = post(http, url, "tools/call", {**call, "requestState": altered,
                                                   "inputResponses": {key: {}}}).json()
        assert tampered["error"]["code"] == -32602
        unanswered = post(http, url, "tools/call", {**call, "requestState": state}).json()["result"]
        assert unanswered["resultType"] == "input_required" and key in unanswered["inputRequests"]

        answer = {"role": "assistant", "content": {"type": "text", "text": "blue"}, "model": "test-model"}
        final = post(http, url, "tools/call", {**call, "requestState": state, "inputResponses": {key: answer}},
                     rid="q2").json()
        assert final["id"] == "q2" and final.get("result", {}).get("resultType") == "complete", final
        assert final["result"]["structuredContent"] == {"result": "blue"}

        no_capability = post(http, url, "tools/call", call,
                             meta={**ENVELOPE, "io.modelcontextprotocol/clientCapabilities": {}}).json()
        # MissingRequiredClientCapability, naming it (the backend heard what such a client answers)
        assert no_capability["error"]["code"] == -32021
        assert no_capability["error"]["data"]["requiredCapabilities"] == {"sampling": {}}


def test_sdk_client_answers_input_requests_automatically(stack: Stack) -> None:
    async def sampling(_context: Any, params: Any) -> CreateMessageResult:
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="green"), model="m")

    async def scenario() -> None:
        async with Client(f"{stack.http_url()}/mcp", mode=MODERN, sampling_callback=sampling) as client:
            result = await client.call_tool("echo__ask_model", {"question": "?"})
            assert result.structured_content == {"result": "green"}

    anyio.run(scenario)


def test_sdk_client_pinned_to_2026_over_the_websocket(stack: Stack) -> None:
    """On the WebSocket the era is read from each request's envelope: a pinned 2026 client is served statelessly
    on the same socket (an `auto` client still gets method-not-found for server/discover and shakes hands)."""
    async def sampling(_context: Any, params: Any) -> CreateMessageResult:
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="red"), model="m")

    async def scenario() -> None:
        async with Client(WebSocketTransport(stack.ws_url()), mode=MODERN, sampling_callback=sampling) as client:
            assert "echo__echo" in {t.name for t in (await client.list_tools()).tools}
            echoed = await client.call_tool("echo__echo", {"text": "over ws"})
            assert echoed.structured_content == {"result": "over ws"}
            asked = await client.call_tool("echo__ask_model", {"question": "?"})  # an input_required round
            assert asked.structured_content == {"result": "red"}
            prompt = await client.get_prompt("notes__summarize", {"style": "brief"})
            assert "brief style" in prompt.messages[0].content.text  # type: ignore[union-attr]
            # notes://all is a handshake-era backend's read: "private" with no ttl, so never served from a cache
            before = await client.read_resource("notes+notes://all")
            assert before.cache_scope == "private" and before.ttl_ms == 0
            await client.call_tool("notes__add_note", {"text": "read me fresh"})
            after = await client.read_resource("notes+notes://all")
            assert "read me fresh" in after.contents[0].text  # type: ignore[union-attr]
            assert after.contents[0].text != before.contents[0].text  # type: ignore[union-attr]

    anyio.run(scenario)


def test_a_handshake_era_http_client_still_gets_the_pushed_request(stack: Stack) -> None:
    """The other era on the same endpoint: a `legacy` HTTP client is sent the backend's sampling request itself
    (on the call's SSE stream) and its answer travels back, exactly as before the 2026 era existed."""
    asked: list[str] = []

    async def sampling(_context: Any, params: Any) -> CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="pushed"), model="m")

    async def scenario() -> None:
        async with Client(f"{stack.http_url()}/mcp", mode="legacy", sampling_callback=sampling) as client:
            assert client.session.initialize_result is not None
            result = await client.call_tool("echo__ask_model", {"question": "legacy?"})
            assert result.structured_content == {"result": "pushed"}

    anyio.run(scenario)
    assert asked == ["legacy?"]


def test_subscriptions_listen_carries_list_changes_and_resource_updates(stack: Stack) -> None:
    """2026-07-28's standing stream: acknowledged first, then only what it asked for, tagged with its id."""
    url = f"{stack.http_url()}/mcp"
    body = {"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen", "params": {
        "notifications": {"resourceSubscriptions": ["notes+notes://all"], "toolsListChanged": True},
        "_meta": ENVELOPE}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": MODERN, "Mcp-Method": "subscriptions/listen"}
    frames: list[dict[str, Any]] = []
    with httpx2.Client(timeout=30) as http, http.stream("POST", url, content=json.dumps(body),
                                                         headers=headers) as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
                break
        ack = frames[0]
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"] == {"toolsListChanged": True,
                                                  "resourceSubscriptions": ["notes+notes://all"]}
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1"
        with RawClient(stack.ws_url()) as writer:
            writer.call("notes__add_note", {"text": "heard on the listen stream"})
        for line in lines:
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
                break
    update = frames[1]
    assert update["method"] == "notifications/resources/updated"
    assert update["params"]["uri"] == "notes+notes://all"
    assert update["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1"


def test_a_retry_taken_by_another_web_process_still_resumes_the_call(stack: Stack) -> None:
    """Stateless means any web process may take the retry: the one that started the call passes the call's
    outcome (and any later question) on to the one that resumed it."""
    port = free_port()
    proc = stack.start_web(port)
    try:
        stack.wait_web_ready(port)  # the retry must not wait out the new process's boot (the token's clock runs)
        call = {"name": "echo__ask_model", "arguments": {"question": "which process?"}}
        with httpx2.Client(timeout=30) as http:
            first = post(http, f"{stack.http_url()}/mcp", "tools/call", call).json()["result"]
            (key, _), = first["inputRequests"].items()
            answer = {"role": "assistant", "content": {"type": "text", "text": "the other one"}, "model": "m"}
            final = post(http, f"http://127.0.0.1:{port}/mcp", "tools/call",
                         {**call, "requestState": first["requestState"], "inputResponses": {key: answer}}).json()
        assert final["result"]["structuredContent"] == {"result": "the other one"}
    finally:
        proc.stop()
        stack.web_ports.remove(port)


def test_bad_2026_input_gets_structured_errors(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    headers = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": MODERN,
               "Mcp-Method": "tools/list"}
    with httpx2.Client(timeout=20) as http:
        for body, code in ((b"{nope", -32700), (b"[]", -32600), (b'{"jsonrpc": "2.0", "id": true, "method": "x"}',
                                                                      -32600),
                           (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": []}', -32602)):
            answer = http.post(url, content=body, headers=headers)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == code, body
        listen = post(http, url, "subscriptions/listen", {"notifications": {}})  # JSON only: not acceptable
        assert listen.status_code == 406
