"""The Streamable HTTP front end and the per-server endpoints, on the same sessions, queues and cache."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from websockets.exceptions import InvalidStatus

from tests.stack import Stack
from tests.wsclient import RawClient

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def sse_messages(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("id", ""), json.loads(fields["data"])))
    return events


def open_session(http: httpx2.Client, url: str) -> str:
    response = http.post(url, json=INIT, headers=ACCEPT)
    assert response.status_code == 200
    session_id = response.headers["Mcp-Session-Id"]
    http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
              headers={**ACCEPT, "Mcp-Session-Id": session_id})
    return session_id


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_sdk_streamable_http_client_on_aggregate_and_per_server_endpoints(stack: Stack, mode: str) -> None:
    async def scenario() -> None:
        async with Client(f"{stack.http_url()}/mcp", mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"echo__echo", "time__get_current_time", "notes__add_note"} <= names
            result = await client.call_tool("echo__add", {"a": 1, "b": 2})
            assert result.structured_content == {"result": 3}
            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            slow = await client.call_tool("echo__slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
            assert slow.structured_content == {"result": "slept 0.3s"} and seen == [1, 2, 3]
        async with Client(f"{stack.http_url()}/servers/notes/mcp", mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {"add_note", "list_notes", "clear_notes", "broker__read_result"}  # + the page tool
            await client.call_tool("add_note", {"text": "via the per-server endpoint"})
            read = await client.read_resource("notes://all")
            assert "via the per-server endpoint" in read.contents[0].text  # type: ignore[union-attr]
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert prompts == {"summarize"}

    anyio.run(scenario)


def test_per_server_websocket_endpoint_is_unprefixed(stack: Stack) -> None:
    with RawClient(stack.ws_url().replace("/mcp", "/servers/echo/mcp")) as client:
        tools = {t["name"] for t in client.request("tools/list")["result"]["tools"]}
        assert "echo" in tools and not any("__" in t for t in tools if not t.startswith("broker__"))
        assert client.call("echo", {"text": "scoped"})["result"]["structuredContent"]["result"] == "scoped"
        assert client.call("echo__echo", {"text": "x"})["error"]["code"] == -32602
    with pytest.raises(InvalidStatus) as refused:
        RawClient(stack.ws_url().replace("/mcp", "/servers/nope/mcp"))
    assert refused.value.response.status_code == 404


def test_transport_rules(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=20) as http:
        assert http.post(url, json=INIT, headers={"Accept": "text/html", "Content-Type": "application/json"}
                         ).status_code == 406
        assert http.post(url, content=b"x=1", headers={**ACCEPT, "Content-Type": "text/plain"}).status_code == 415
        parse = http.post(url, content=b"{nope", headers=ACCEPT)
        assert parse.status_code == 400 and parse.json()["error"]["code"] == -32700
        missing = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=ACCEPT)
        assert missing.status_code == 400 and "Missing session" in missing.json()["error"]["message"]
        unknown = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={**ACCEPT, "Mcp-Session-Id": "nope"})
        assert unknown.status_code == 404
        session_id = open_session(http, url)
        headers = {**ACCEPT, "Mcp-Session-Id": session_id}
        accepted = http.post(url, json={"jsonrpc": "2.0", "method": "notifications/cancelled",
                                        "params": {"requestId": 99}}, headers=headers)
        assert accepted.status_code == 202
        bad_version = http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"},
                                headers={**headers, "MCP-Protocol-Version": "1999-01-01"})
        assert bad_version.status_code == 400
        # JSON-only clients get one JSON body instead of a stream
        plain = http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                     "params": {"name": "echo__echo", "arguments": {"text": "json"}}},
                          headers={**headers, "Accept": "application/json"})
        assert plain.headers["content-type"].startswith("application/json")
        assert plain.json()["result"]["structuredContent"]["result"] == "json"
        foreign = http.post(url, json=INIT, headers={**ACCEPT, "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert http.post(url, json=INIT, headers={**ACCEPT, "Origin": "http://localhost:3000"}).status_code == 200
        assert http.post(f"{stack.http_url()}/servers/nope/mcp", json=INIT, headers=ACCEPT).status_code == 404
        assert http.delete(url, headers={"Mcp-Session-Id": session_id}).status_code == 200
        gone = http.post(url, json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers=headers)
        assert gone.status_code == 404
    with pytest.raises(InvalidStatus) as refused:
        RawClient(stack.ws_url(), additional_headers={"Origin": "http://evil.example"})
    assert refused.value.response.status_code == 403


def test_http_session_lives_in_the_same_store_and_resumes_over_websocket(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=20) as http:
        session_id = open_session(http, url)
    assert stack.redis().exists(f"mcpb:session:{session_id}")
    with RawClient(stack.ws_url(), initialize=False, additional_headers={"Mcp-Session-Id": session_id}) as ws:
        assert ws.ws.response.headers["Mcp-Session-Id"] == session_id
        assert ws.call("echo__echo", {"text": "same session"})["result"]["structuredContent"]["result"] == (
            "same session")


def slow_call(rid: str, seconds: float, steps: int) -> dict[str, Any]:
    """A `tools/call` of echo's `slow`, which sends `steps` progress notices before its answer."""
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
            "params": {"name": "echo__slow", "arguments": {"seconds": seconds, "steps": steps},
                       "_meta": {"progressToken": "p"}}}


def first_event(http: httpx2.Client, url: str, call: dict[str, Any], headers: dict[str, str]
                ) -> tuple[str, dict[str, Any]]:
    """POST `call` and cut its SSE stream after the first event: that event's id and message."""
    with http.stream("POST", url, json=call, headers=headers) as response:
        buffer = ""
        for chunk in response.iter_text():
            buffer += chunk
            events = sse_messages(buffer)
            if events:
                return events[0]
    raise AssertionError("the stream ended before its first event")


def test_a_cut_sse_stream_resumes_with_last_event_id_and_loses_nothing(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http:
        session_id = open_session(http, url)
        headers = {**ACCEPT, "Mcp-Session-Id": session_id}
        first_id, first = first_event(http, url, slow_call("cut", 1.2, 4), headers)  # the stream is cut after it
        assert first["method"] == "notifications/progress" and first["params"]["progress"] == 1
        resumed = http.get(url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": session_id,
                                         "Last-Event-ID": first_id})
        assert resumed.status_code == 200
        rest = [message for _, message in sse_messages(resumed.text)]
        assert [m["params"]["progress"] for m in rest if m.get("method") == "notifications/progress"] == [2, 3, 4]
        assert rest[-1]["id"] == "cut" and rest[-1]["result"]["structuredContent"]["result"] == "slept 1.2s"


def test_a_stream_resumed_after_its_answer_was_written_replays_the_rest(stack: Stack) -> None:
    """A POST stream cut before its answer and resumed once the answer is in its event log: the resumed
    stream sends what came after Last-Event-ID, answer included (its list of unanswered requests takes
    the answers already in the stream, not only the requests still routed, which had none)."""
    from broker import keys

    url = f"{stack.http_url()}/mcp"
    r = stack.redis()
    with httpx2.Client(timeout=30) as http:
        session_id = open_session(http, url)
        headers = {**ACCEPT, "Mcp-Session-Id": session_id}
        first_id, _ = first_event(http, url, slow_call("late", 0.3, 3), headers)  # cut after the first progress event
        stream = keys.sse_stream(session_id, first_id.partition(".")[0])
        deadline = time.monotonic() + 30
        while not any(json.loads(f["data"]).get("id") == "late" for _, f in r.xrange(stream) if "data" in f):
            assert time.monotonic() < deadline, "the answer never reached the stream"
            time.sleep(0.05)
        resumed = http.get(url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": session_id,
                                         "Last-Event-ID": first_id}, timeout=30)
        assert resumed.status_code == 200
        rest = [message for _, message in sse_messages(resumed.text)]
        assert [m["params"]["progress"] for m in rest if m.get("method") == "notifications/progress"] == [2, 3]
        assert rest[-1]["id"] == "late" and rest[-1]["result"]["structuredContent"]["result"] == "slept 0.3s"


def test_a_request_is_routed_or_answered_in_its_stream_at_every_moment(redis_url: str) -> None:
    """`HttpSession.route` drops a request's route only once its answer is in the stream, so a resume
    (which reads the routes, then the stream) always finds it. Checked on the real event log in Redis at
    the write itself: the route is still there while the XADD runs and gone once it is in."""
    import threading
    import uuid

    import redis

    from broker import keys
    from broker.events import EventLog
    from web.transports.http_handshake import HttpSession

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    seen: list[tuple[bool, int]] = []

    class Watched(EventLog):
        def append(self, session_id: str, stream_id: str, message: dict) -> None:
            routed = '"r1"' in session.unanswered(stream_id)
            super().append(session_id, stream_id, message)
            still_routed = '"r1"' in session.unanswered(stream_id)
            seen.append((routed and still_routed, r.xlen(keys.sse_stream(session_id, stream_id))))

    session = HttpSession.__new__(HttpSession)  # its routing alone: no conversation needed
    session.events, session.session_id = Watched(r), uuid.uuid4().hex
    session._routes, session._tokens, session._lock, session.streams = {}, {}, threading.Lock(), {"get"}
    session._appending, session._live = threading.Lock(), {}
    session.expect("p1", {"jsonrpc": "2.0", "id": "r1", "method": "tools/call"})
    try:
        session.route({"jsonrpc": "2.0", "id": "r1", "result": {}})
        assert seen == [(True, 1)]  # written while still routed
        assert session.unanswered("p1") == set()  # and dropped once written
    finally:
        r.delete(keys.sse_stream(session.session_id, "p1"))


def test_a_quiet_sse_stream_outlives_redis_py_read_timeout(stack: Stack) -> None:
    """A POST stream that has nothing to send for longer than redis-py's default 5 s read timeout stays
    open and ends with the answer (its blocking XREAD once died with that timeout, cutting the stream)."""
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http:
        session_id = open_session(http, url)
        call = {"jsonrpc": "2.0", "id": "quiet", "method": "tools/call",
                "params": {"name": "crashy__slow", "arguments": {"seconds": 6.5, "steps": 1}}}
        response = http.post(url, json=call, headers={**ACCEPT, "Mcp-Session-Id": session_id})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        [(_, answer)] = sse_messages(response.text)
        assert answer["id"] == "quiet" and answer["result"]["structuredContent"] == {"result": "slept 6.5s"}


def test_a_request_with_an_id_json_rpc_forbids_is_answered_on_its_post(stack: Stack) -> None:
    """Found by the HTTP fuzzer: such a request is answered with id null, and its POST used to wait for
    an answer carrying the forbidden id, forever."""
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http:
        session_id = open_session(http, url)
        for bad_id in (False, 1.5, {"a": 1}):
            body = {"jsonrpc": "2.0", "id": bad_id, "method": "initialize"}
            for accept in (ACCEPT, {**ACCEPT, "Accept": "application/json"}):
                response = http.post(url, json=body, headers={**accept, "Mcp-Session-Id": session_id})
                answers = ([m for _, m in sse_messages(response.text)]
                           if response.headers["content-type"].startswith("text/event-stream") else [response.json()])
                assert [(a["id"], a["error"]["code"]) for a in answers] == [(None, -32600)], (bad_id, answers)


def test_malformed_params_of_a_request_get_a_json_rpc_error_not_a_500(stack: Stack) -> None:
    """Found by the HTTP fuzzer: `_meta` (or params) that is not an object crashed the POST handler."""
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http:
        session_id = open_session(http, url)
        for params in ({"name": "echo__echo", "_meta": True}, [1, 2], "x"):
            body = {"jsonrpc": "2.0", "id": "m", "method": "tools/call", "params": params}
            response = http.post(url, json=body, headers={**ACCEPT, "Accept": "application/json",
                                                          "Mcp-Session-Id": session_id})
            assert response.status_code == 200 and response.json()["error"]["code"] in (-32600, -32602), response.text


def test_deleting_the_session_ends_its_open_get_stream(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http, httpx2.Client(timeout=30) as other:
        session_id = open_session(http, url)
        with http.stream("GET", url, headers={"Accept": "text/event-stream", "Mcp-Session-Id": session_id}) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("id: ")  # the priming event: the stream is live
            assert other.delete(url, headers={"Mcp-Session-Id": session_id}).status_code == 200
            deadline = time.monotonic() + 10  # well before the first keepalive (15 s)
            for line in lines:
                assert time.monotonic() < deadline, f"the stream went on after DELETE: {line!r}"
        # the stream has ended by itself; the session is gone
        gone = http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                         headers={**ACCEPT, "Mcp-Session-Id": session_id})
        assert gone.status_code == 404


def test_a_post_stream_slower_than_its_in_process_wait_loses_and_repeats_nothing(stack: Stack) -> None:
    """A POST's events are handed over in-process, then read from Redis once none came for a second
    (`web/transports/post_stream.py`): progress 2 s apart crosses that switch; every event arrives once."""
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http:
        session_id = open_session(http, url)
        response = http.post(url, json=slow_call("switch", 4.0, 2), headers={**ACCEPT, "Mcp-Session-Id": session_id})
        events = sse_messages(response.text)
        messages = [message for _, message in events]
        assert [m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"] == [1, 2]
        assert [m["id"] for m in messages if "id" in m] == ["switch"]
        ids = [event_id for event_id, _ in events]
        assert len(ids) == len(set(ids))


def test_deleting_the_session_ends_its_open_post_stream(stack: Stack) -> None:
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http, httpx2.Client(timeout=30) as other:
        session_id = open_session(http, url)
        headers = {**ACCEPT, "Mcp-Session-Id": session_id}
        with http.stream("POST", url, json=slow_call("long", 20.0, 20), headers=headers) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("id: ")  # the priming event: the stream is live
            assert other.delete(url, headers={"Mcp-Session-Id": session_id}).status_code == 200
            deadline = time.monotonic() + 10  # the call would run 20 s
            for line in lines:
                assert time.monotonic() < deadline, f"the stream went on after DELETE: {line!r}"
                assert '"id":"long"' not in line.replace(" ", ""), "answered after its session was deleted"


def test_a_json_only_post_is_answered_with_an_error_when_its_session_ends(stack: Stack) -> None:
    """A client that accepts only JSON waits on its POST; the session deleted meanwhile ends that wait with
    an error for its request (it waited up to an hour, then failed with a 500)."""
    url = f"{stack.http_url()}/mcp"
    with httpx2.Client(timeout=30) as http, httpx2.Client(timeout=30) as other:
        session_id = open_session(http, url)
        answer: dict[str, Any] = {}

        def post() -> None:
            answer["response"] = http.post(url, json=slow_call("json", 20.0, 2),
                                           headers={**ACCEPT, "Accept": "application/json",
                                                    "Mcp-Session-Id": session_id})

        with anyio.from_thread.start_blocking_portal() as portal:
            waiting = portal.start_task_soon(anyio.to_thread.run_sync, post)
            time.sleep(1.0)  # the call is running on the worker
            assert other.delete(url, headers={"Mcp-Session-Id": session_id}).status_code == 200
            waiting.result(timeout=15)
        response = answer["response"]
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == "json" and body["error"]["code"] == -32600
        assert "session ended" in body["error"]["message"]


def test_a_session_ending_does_not_wait_on_a_response_too_slow_to_read_its_events() -> None:
    """`HttpSession.end_streams` with a POST's in-process queue full (its reader that far behind) returns at
    once: that reader goes on from Redis, where the end is marked (a blocking put hung the DELETE)."""
    import queue
    import threading
    from types import SimpleNamespace

    from web.transports.http_handshake import HttpSession
    from web.transports.post_stream import LIVE_MAX

    full: queue.Queue[Any] = queue.Queue(maxsize=LIVE_MAX)
    for i in range(LIVE_MAX):
        full.put_nowait((str(i), {}))
    session = SimpleNamespace(_lock=threading.Lock(), _live={"p1": full})
    ending = threading.Thread(target=HttpSession.end_streams, args=(session,), daemon=True)
    ending.start()
    ending.join(5)
    assert not ending.is_alive(), "end_streams waited for a slow reader"


def client_port(response: httpx2.Response) -> int:
    """The local port of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_answers_read_to_their_end_leave_the_connection_to_the_next_call(stack: Stack) -> None:
    """A handshake POST's SSE answer read to its end (a client that reads each stream through) and the
    modern era's JSON answers (the SDK client in that mode) leave their kept-alive connection to the next call.
    (The SDK's handshake client stops reading at its answer's event and so closes each: see `sse_response`.)"""
    url = f"{stack.http_url()}/servers/echo/mcp"
    call = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "k"}}}
    with httpx2.Client(timeout=30) as http:
        headers, ports = {**ACCEPT, "Mcp-Session-Id": open_session(http, url)}, set()
        for i in range(10):
            answered = http.post(url, json={**call, "id": i}, headers=headers)
            assert answered.headers["content-type"].startswith("text/event-stream")
            assert sse_messages(answered.text)[-1][1]["result"]["structuredContent"] == {"result": "k"}
            ports.add(client_port(answered))
        assert len(ports) == 1

    async def modern() -> set[int]:
        used: set[int] = set()

        async def seen(response: httpx2.Response) -> None:
            used.add(client_port(response))

        async with (httpx2.AsyncClient(timeout=30, event_hooks={"response": [seen]}) as http,
                    Client(streamable_http_client(url, http_client=http), mode="2026-07-28") as client):
            for _ in range(10):
                assert (await client.call_tool("echo", {"text": "k"})).structured_content == {"result": "k"}
        return used

    assert len(anyio.run(modern)) == 1
