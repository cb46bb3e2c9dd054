"""What enters and leaves the broker, on every path (issue 13, findings 1, 7 and 8), on the real stack.

- A lone surrogate (`"\\ud800"`, legal as a JSON escape, not encodable as UTF-8) is refused at the edge on
  every transport and in every forwarded field, and the shared backend never sees it: its pid is the same
  afterwards and another client's calls keep working.
- Non-finite numbers (`NaN`, `Infinity`, `1e400`) are refused as parse errors and never echoed; nothing
  the broker writes is invalid JSON.
- The size limits hold on every path: message/body size, argument size, and a backend's result size
  (`max_result_bytes`, checked in the worker).
- Paths no route matches, methods a route does not take and requests gunicorn itself refuses are answered
  in JSON, never an HTML page.
"""

from __future__ import annotations

import json
import math
import socket
from typing import Any

import httpx2
import pytest
from flask import Flask, jsonify

from broker import wire
from broker.config import ConfigError, parse_config
from tests.stack import Stack
from tests.test_http_mcp import ACCEPT, open_session, sse_messages
from tests.test_modern import ENVELOPE, MODERN
from tests.wsclient import RawClient
from web.errors import WireJSONProvider

POISON = "\ud800"  # json.dumps writes it as the escape \ud800: exactly what a hostile client sends
MiB = 1024 * 1024


def strict_json(text: str | bytes) -> Any:
    """JSON as RFC 8259 has it: a NaN or Infinity token in what the broker sends fails the test."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"the broker sent {token}, which is not JSON: {text[:300]!r}")

    return json.loads(text, parse_constant=refuse)


def backend_pid(stack: Stack) -> int:
    with RawClient(stack.ws_url()) as client:
        return int(client.call("echo__whoami")["result"]["structuredContent"]["pid"])


def call_message(name: str, arguments: Any, rid: Any = 1, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def http_session_answer(http: httpx2.Client, url: str, session: str, message: dict[str, Any]) -> dict[str, Any]:
    response = http.post(url, content=json.dumps(message), headers={**ACCEPT, "Mcp-Session-Id": session})
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        [(_, answer)] = [m for m in sse_messages(response.text) if "id" in m[1] and "method" not in m[1]]
        return answer
    return strict_json(response.text)  # type: ignore[no-any-return]


def modern_post(http: httpx2.Client, url: str, message: dict[str, Any]) -> httpx2.Response:
    body = {**message, "params": {**message["params"], "_meta": {**ENVELOPE, **message["params"].get("_meta", {})}}}
    headers = {"Accept": "application/json", "Content-Type": "application/json", "MCP-Protocol-Version": MODERN,
               "Mcp-Method": message["method"]}
    if message["method"] == "tools/call":
        headers["Mcp-Name"] = message["params"]["name"]
    return http.post(url, content=json.dumps(body), headers=headers)


def post_json(http: httpx2.Client, url: str, body: Any) -> httpx2.Response:
    """POST `body` as json.dumps writes it (httpx would refuse to encode a lone surrogate itself)."""
    return http.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})


def refused_surrogate(answer: dict[str, Any], code: int = -32602) -> None:
    assert answer["error"]["code"] == code, answer
    assert "lone UTF-16 surrogate" in answer["error"]["message"], answer


# ---------------------------------------------------------------- finding 1: lone surrogates
def test_a_lone_surrogate_is_refused_on_every_path_and_the_shared_backend_lives_on(stack: Stack) -> None:
    pid = backend_pid(stack)
    base = stack.http_url()
    poisoned = {"text": f"a{POISON}b"}
    with RawClient(stack.ws_url()) as client:
        refused_surrogate(client.call("echo__echo", poisoned))
        answer = client.call("echo__echo", {"text": "ok"})  # the socket and the session go on
        assert answer["result"]["structuredContent"]["result"] == "ok"
    with RawClient(f"ws://127.0.0.1:{stack.web_ports[0]}/servers/echo/mcp") as client:
        refused_surrogate(client.call("echo", poisoned))
    with httpx2.Client(timeout=30) as http:
        for path, name in (("/mcp", "echo__echo"), ("/servers/echo/mcp", "echo")):
            session = open_session(http, base + path)
            refused_surrogate(http_session_answer(http, base + path, session, call_message(name, poisoned)))
            response = modern_post(http, base + path, call_message(name, poisoned))
            assert response.status_code == 400, response.text
            refused_surrogate(strict_json(response.text))
        response = post_json(http, f"{base}/v1/calls", {"tool": "echo__echo", "arguments": poisoned})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_call", response.text
        assert "arguments.text" in response.json()["error"]["message"]
        raw = b'{"tool": "echo__echo", "arguments": {"text": "\xed\xa0\x80"}}'  # a surrogate as raw UTF-8 bytes
        response = http.post(f"{base}/v1/calls", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"], response.text
        good = {"tool": "echo__echo", "arguments": {"text": "fine"}}
        response = post_json(http, f"{base}/v1/batches", {"calls": [good, {"tool": "echo__echo",
                                                                           "arguments": poisoned}]})
        assert response.status_code == 400 and "calls[1].arguments.text" in response.json()["error"]["message"]
        ndjson = json.dumps(good) + "\n" + json.dumps({"tool": "echo__echo", "arguments": poisoned}) + "\n"
        response = http.post(f"{base}/v1/batches", content=ndjson,
                             headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 400 and response.json()["error"]["message"].startswith("line 2: ")
    assert backend_pid(stack) == pid  # the warm session never saw the poison


def test_every_forwarded_field_is_checked_not_only_tool_arguments(stack: Stack) -> None:
    pid = backend_pid(stack)
    with RawClient(stack.ws_url()) as client:
        refused_surrogate(client.request("tools/call", {"name": "echo__echo", "arguments": {"text": "x"},
                                                        "_meta": {"trace": POISON}}))
        refused_surrogate(client.request("resources/read", {"uri": f"notes+notes://{POISON}"}))
        refused_surrogate(client.request("prompts/get", {"name": "notes__summarize",
                                                         "arguments": {"style": POISON}}))
        refused_surrogate(client.request("completion/complete", {
            "ref": {"type": "ref/prompt", "name": "notes__summarize"},
            "argument": {"name": "style", "value": POISON}}))
        refused_surrogate(client.request("tools/call", {"name": f"echo__{POISON}", "arguments": {}}))
        # a key, not a value; a method name; an id: refused too (outside params: -32600, and the id not echoed)
        refused_surrogate(client.call("echo__echo", {POISON: "x"}))
        client.send({"jsonrpc": "2.0", "id": 77, "method": f"tools/{POISON}"})
        refused_surrogate(client.response(), -32600)
        client.send({"jsonrpc": "2.0", "id": f"id{POISON}", "method": "ping"})
        answer = client.response()
        refused_surrogate(answer, -32600)
        assert answer["id"] is None
        client.notify("notifications/cancelled", {"requestId": POISON})  # a notification: dropped
        assert client.request("ping")["result"] == {}
    assert backend_pid(stack) == pid


def test_a_client_answer_with_a_lone_surrogate_reaches_the_backend_as_an_error(stack: Stack) -> None:
    """The client's answer to a backend's sampling request goes back to that backend: refused, the backend's
    call gets an error instead of a string that would break its session's writer."""
    pid = backend_pid(stack)
    sampling = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
                "clientInfo": {"name": "tests", "version": "1"}}
    with RawClient(stack.ws_url(), initialize=False) as client, RawClient(stack.ws_url()) as other:
        client.request("initialize", sampling)
        client.send(call_message("echo__ask_model", {"question": "colour?"}, rid="q"))
        asked = client.recv()
        assert asked["method"] == "sampling/createMessage"
        client.send({"jsonrpc": "2.0", "id": asked["id"], "result": {
            "role": "assistant", "content": {"type": "text", "text": f"blue{POISON}"}, "model": "m"}})
        answer = client.response()
        assert answer["id"] == "q"
        failed = answer.get("error") or answer["result"]
        assert "error" in answer or failed.get("isError"), answer
        assert "lone UTF-16 surrogate" in json.dumps(failed), answer
        assert other.call("echo__echo", {"text": "still here"})["result"]["structuredContent"]["result"] == \
            "still here"
    assert backend_pid(stack) == pid


# ---------------------------------------------------------------- finding 7: non-finite numbers
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused_and_never_echoed(stack: Stack, token: str) -> None:
    base = stack.http_url()
    frame = ('{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo__slow","arguments":'
             '{"seconds":0.2,"steps":2},"_meta":{"progressToken":TOKEN}}}').replace("TOKEN", token)
    call = '{"tool":"echo__add","arguments":{"a":TOKEN,"b":1}}'.replace("TOKEN", token)
    with RawClient(stack.ws_url()) as client:
        client.ws.send(frame)
        client.send({"jsonrpc": "2.0", "id": "after", "method": "ping"})
        seen = []
        while True:
            message = strict_json(client.ws.recv(timeout=15))  # a NaN/Infinity token would fail here
            if message.get("id") == "after":
                break
            seen.append(message)
        assert [m["error"]["code"] for m in seen] == [-32700], seen  # no progress echoing the token
    with httpx2.Client(timeout=30) as http:
        session = open_session(http, base + "/mcp")
        response = http.post(base + "/mcp", content=frame, headers={**ACCEPT, "Mcp-Session-Id": session})
        assert response.status_code == 400 and strict_json(response.text)["error"]["code"] == -32700
        response = http.post(base + "/mcp", content=frame.replace('"_meta":{', '"_meta":{"io.modelcontextprotocol/'
                                                                              'protocolVersion":"2026-07-28",'),
                             headers={"Accept": "application/json", "Content-Type": "application/json",
                                      "MCP-Protocol-Version": MODERN})
        assert response.status_code == 400 and strict_json(response.text)["error"]["code"] == -32700
        response = http.post(f"{base}/v1/calls", content=call,
                             headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and strict_json(response.text)["error"]["code"] == "invalid_call"
        response = http.post(f"{base}/v1/batches", content=call + "\n",
                             headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 400 and "line 1" in strict_json(response.text)["error"]["message"]


def test_an_infinite_result_still_leaves_as_valid_json(stack: Stack) -> None:
    """1e308 + 1e308 is infinity in the backend; whatever reaches the broker, what it sends is JSON."""
    with RawClient(stack.ws_url()) as client:
        client.send(call_message("echo__add", {"a": 1e308, "b": 1e308}, rid="inf"))
        raw = client.ws.recv(timeout=15)
        strict_json(raw)
    with httpx2.Client(timeout=30) as http:
        response = http.post(f"{stack.http_url()}/v1/calls", json={"tool": "echo__add",
                                                                    "arguments": {"a": 1e308, "b": 1e308}})
        strict_json(response.text)


# ---------------------------------------------------------------- finding 7: sizes
def test_a_streamable_http_body_over_the_frame_limit_is_refused_in_both_eras(stack: Stack) -> None:
    base = stack.http_url()
    big = call_message("echo__echo", {"text": "x" * (5 * MiB)})
    with httpx2.Client(timeout=60) as http:
        for path in ("/mcp", "/servers/echo/mcp"):
            session = open_session(http, base + path)
            response = http.post(base + path, content=json.dumps(big), headers={**ACCEPT, "Mcp-Session-Id": session})
            assert response.status_code == 413, response.text[:300]
            error = strict_json(response.text)["error"]
            assert error["code"] == -32600 and "limit of 4194304 bytes" in error["message"]
            response = modern_post(http, base + path, big)
            assert response.status_code == 413 and "limit of 4194304" in strict_json(response.text)["error"]["message"]
        # just under the frame limit, but over the argument limit: refused as arguments, the session still fine
        session = open_session(http, base + "/mcp")
        answer = http_session_answer(http, base + "/mcp", session,
                                     call_message("echo__echo", {"text": "x" * (2 * MiB)}))
        assert answer["error"]["code"] == -32602 and "over the limit of 1048576" in answer["error"]["message"]


def test_v1_calls_and_batches_hold_the_argument_and_body_limits(stack: Stack) -> None:
    base = stack.http_url()
    with httpx2.Client(timeout=60) as http:
        response = http.post(f"{base}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": "x" * (2 * MiB)}})
        assert response.status_code == 413, response.text[:300]
        assert response.json()["error"]["code"] == "arguments_too_large"
        assert "MCP_BROKER_MAX_ARGUMENT_BYTES" in response.json()["error"]["message"]
        response = http.post(f"{base}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": "x" * (5 * MiB)}})
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        calls = [{"tool": "echo__echo", "arguments": {"text": "fine"}},
                 {"tool": "echo__echo", "arguments": {"text": "x" * (2 * MiB)}}]
        response = http.post(f"{base}/v1/batches", json={"calls": calls})
        assert response.status_code == 400, response.text[:300]
        assert response.json()["error"]["message"].startswith("calls[1].arguments: arguments of ")
        response = http.post(f"{base}/v1/calls", json={"tool": "echo__echo", "arguments": {"text": "x" * 1000}})
        assert response.status_code == 200


def test_a_result_over_max_result_bytes_is_an_error_that_says_so(stack: Stack) -> None:
    pid = backend_pid(stack)
    with RawClient(stack.ws_url()) as client:
        # the backend answers with text and structuredContent: twice 5 MiB, over the default 8 MiB
        error = client.request("tools/call", {"name": "echo__blob", "arguments": {"size": 5 * MiB},
                                              "_meta": {"io.mcp-broker/timeoutS": 60}}, timeout=70)["error"]
        assert error["data"]["reason"] == "result_too_large" and error["data"]["limit"] == 8 * MiB
        assert "Result too large" in error["message"] and "max_result_bytes" in error["message"]
        small = client.call("echo__blob", {"size": 1000})["result"]
        assert small["content"][0]["text"] == "x" * 1000
    with httpx2.Client(timeout=90) as http:
        response = http.post(f"{stack.http_url()}/v1/calls",
                             json={"tool": "echo__blob", "arguments": {"size": 5 * MiB}, "timeout_s": 60})
        assert response.status_code == 502 and "max_result_bytes" in response.json()["error"]["message"]
    assert backend_pid(stack) == pid  # an oversized result is that call's error, not the session's


def test_max_result_bytes_is_validated_in_the_config() -> None:
    entry = {"command": "python", "args": ["x.py"]}
    assert parse_config({"mcpServers": {"a": entry}}).server("a").settings.max_result_bytes == 8 * MiB
    config = parse_config({"mcpServers": {"a": {**entry, "broker": {"max_result_bytes": 65536}}}})
    assert config.server("a").settings.max_result_bytes == 65536
    for bad in (0, -1, "big", 10**12):
        with pytest.raises(ConfigError, match="max_result_bytes"):
            parse_config({"mcpServers": {"a": {**entry, "broker": {"max_result_bytes": bad}}}})


# ---------------------------------------------------------------- finding 8: every error is JSON
def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request over a plain socket (no client library normalising the path), the answer read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("request_line, headers, status", [
    ("GET /servers/%2e%2e/mcp HTTP/1.1", "", 404),
    ("GET /nowhere HTTP/1.1", "", 404),
    ("GET /v1/nowhere HTTP/1.1", "", 404),
    ("PUT /mcp HTTP/1.1", "", 405),
    ("POST /healthz HTTP/1.1", "Content-Length: 0\r\n", 405),
    (f"GET /servers/{'a' * 5000}/mcp HTTP/1.1", "", 414),
    ("GET /healthz HTTP/1.1", f"X-Big: {'b' * 9000}\r\n", 431),
    ("GET /healthz HTTP/1.1", "".join(f"X-H{i}: 1\r\n" for i in range(150)), 431),
    ("GET /healthz HTTP/9.9", "", 400),
])
def test_unmatched_routes_and_refused_requests_answer_json(stack: Stack, request_line: str, headers: str,
                                                           status: int) -> None:
    request = f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n".encode("latin-1")
    got, answer_headers, body = raw_request(stack.web_ports[0], request)
    assert got == status, body[:300]
    assert answer_headers.get("content-type", "").startswith("application/json"), (answer_headers, body[:300])
    decoded = strict_json(body)
    error = decoded["error"]
    assert isinstance(error["message"], str) and error["message"]
    if request_line.startswith("PUT /mcp"):
        assert decoded["jsonrpc"] == "2.0" and error["code"] == -32600  # an MCP endpoint: a JSON-RPC error


def test_what_the_broker_writes_is_json_whatever_it_holds() -> None:
    """`broker.wire.dumps` and Flask's `jsonify` through it: a non-finite number from a backend becomes null, a
    lone surrogate its escape; what comes out always parses as strict JSON and encodes as UTF-8."""
    held = {"nan": math.nan, "inf": [math.inf, -math.inf], "text": f"a{POISON}", "ok": "é"}
    written = wire.dumps(held)
    assert strict_json(written.encode("utf-8")) == {"nan": None, "inf": [None, None], "text": f"a{POISON}", "ok": "é"}
    assert wire.dumps({"ok": "é"}) == '{"ok":"é"}'  # the common case stays compact UTF-8
    app = Flask("wire-test")
    app.json = WireJSONProvider(app)
    with app.app_context():
        body = jsonify(held).get_data()
    assert strict_json(body)["nan"] is None
    with pytest.raises(ValueError, match="not a JSON number"):
        wire.loads('{"a": NaN}')
    assert wire.lone_surrogate({"a": [{"b": f"x{POISON}"}]}, "params") == "params.a[0].b"


@pytest.mark.parametrize("params", [
    {"name": "echo__echo", "arguments": {"text": "x", "n": [1, {"a": None}]}},
    {"name": "echo__echo"},
    {"name": "echo__echo", "arguments": None, "_meta": None},
    {"name": "e", "arguments": {}, "_meta": {"progressToken": 7}, "task": {"ttl": 5}, "other": 1},
    {"name": "x" * 300, "arguments": {}},
    {"name": "x" * 301, "arguments": {}},
    {"name": "", "arguments": {}},
    {"name": 3, "arguments": {}},
    {"arguments": {}},
    {"name": "echo__echo", "arguments": [1, 2]},
    {"name": "echo__echo", "arguments": "text"},
    {"name": "echo__echo", "_meta": 5},
    {"name": True},
    [],
    "params",
])
def test_the_quick_load_of_tools_call_params_is_the_schema_s(params: Any) -> None:
    """tools/call params load without marshmallow for the usual shapes (`quick_call_tool_params`), exactly as
    the schema loads them, and anything else goes to the schema (its result or its own error message)."""
    from marshmallow import ValidationError

    from broker.protocol.registry import METHODS, quick_call_tool_params
    from broker.schemas import CallToolParamsSchema

    quick = quick_call_tool_params(params)
    try:
        schema_says: Any = CallToolParamsSchema().load(params)
    except ValidationError as err:
        schema_says = err
    if quick is not None:
        assert quick == schema_says
        if isinstance(params, dict) and isinstance(params.get("arguments"), dict):
            assert quick["arguments"] is not params["arguments"]  # a copy, as the schema's
    elif not isinstance(schema_says, ValidationError):  # only errors and odd shapes go to the schema
        assert any(not isinstance(params.get(key, {}), dict | None) for key in ("arguments", "_meta")), params
    spec = METHODS["tools/call"]
    if isinstance(schema_says, ValidationError):
        with pytest.raises(Exception, match="Invalid params"):
            spec.load(params)
    else:
        assert spec.load(params) == schema_says


@pytest.mark.parametrize("message", [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo__echo"}},
    {"jsonrpc": "2.0", "id": "a", "method": "ping"},
    {"jsonrpc": "2.0", "method": "notifications/initialized", "params": None},
    {"jsonrpc": "2.0", "id": 2**70, "method": "ping", "extra": [1]},
    {"jsonrpc": "2.0", "id": True, "method": "ping"},
    {"jsonrpc": "2.0", "id": None, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1.5, "method": "ping"},
    {"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1, "method": ""},
    {"jsonrpc": "2.0", "id": 1, "method": 7},
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]},
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "x"},
    {"jsonrpc": "1.0", "id": 1, "method": "ping"},
    {"jsonrpc": 2.0, "id": 1, "method": "ping"},
    {"id": 1, "method": "ping"},
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "result": {}},
    {"jsonrpc": "2.0", "id": 1, "method": "ping", "error": 5},
    {"jsonrpc": "2.0", "id": 1, "result": {}},
    {"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}},
    {"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}},
    {"jsonrpc": "2.0", "result": {}},
    {},
])
def test_the_quick_envelope_check_passes_only_what_the_schema_passes(message: dict[str, Any]) -> None:
    """`is_plain_request` lets the usual request through without marshmallow; whatever it passes, the
    envelope schema passes too, and `message_error` answers every message as the schema alone did."""
    from broker.protocol.framing import _message_schema, is_plain_request, message_error

    schema_errors = _message_schema.validate(message)
    if is_plain_request(message):
        assert not schema_errors, message
    assert (message_error(message) is None) == (not schema_errors), message


def test_the_usual_requests_take_the_quick_envelope_check() -> None:
    from broker.protocol.framing import is_plain_request

    for message in ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo__echo"}},
                    {"jsonrpc": "2.0", "id": "a", "method": "ping"},
                    {"jsonrpc": "2.0", "method": "notifications/initialized"}):
        assert is_plain_request(message), message
