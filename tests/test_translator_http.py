"""The translator's routes on the real stack (issue 18 parts 1 and 4): `GET /v1/tools` in every format,
`/openapi.json`, `POST /v1/tools/<name>`, over real backends (echo, time, the conformance fixtures), with keys whose
allow-lists differ; every definition checked with the providers' own types, the document with
openapi-spec-validator."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from broker.translate.names import provider_name
from broker.translate.schemas import inline_refs
from cli.devrun import free_port
from tests.provider_types import CHECKS
from tests.stack import Stack
from tests.toolcalls_support import config

KEYS = {"admin": "td-admin-key", "full": "td-full-key", "narrow": "td-narrow-key"}
SERVERS = ("echo", "time", "conformance")
FORMATS = ("mcp", "openai", "openai-responses", "anthropic", "gemini")


@pytest.fixture(scope="module")
def broker(own_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("translator")
    path = config(folder / "mcp_servers.json")
    document = json.loads(path.read_text())
    document["mcpServers"]["time"].setdefault("broker", {})["pin"] = ["get_current_time"]
    for server in SERVERS:  # a backend's start is bounded by its call time limit: room for a loaded machine
        document["mcpServers"][server].setdefault("broker", {})["timeout_s"] = 30
    path.write_text(json.dumps(document))
    stack = Stack(own_redis_url, config_path=path)
    try:
        for server in SERVERS:
            stack.start_worker(server)
        port = free_port()
        keys = f"admin:{KEYS['admin']},full:{KEYS['full']}:*__*,narrow:{KEYS['narrow']}:echo__echo"
        stack.start_web(port, env={"MCP_BROKER_API_KEYS": keys})
        stack.wait_for_catalog(list(SERVERS))
        stack.wait_web_ready(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stack.stop()


def http(base: str, method: str, path: str, body: Any = None, key: str | None = "full",
         ctype: str | None = "application/json") -> tuple[int, Any, dict[str, str]]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEYS[key]}"} if key else {}
    if data is not None and ctype:
        headers["Content-Type"] = ctype
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _entries(answer: dict[str, Any]) -> list[dict[str, Any]]:
    if answer["format"] == "gemini":
        return [d for tool in answer["tools"] for d in tool["functionDeclarations"]]
    return [t.get("function", t) for t in answer["tools"]]


def _mcp_names(answer: dict[str, Any]) -> list[str]:
    return [answer["renamed"].get(e["name"], e["name"]) for e in _entries(answer)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_lists_the_visible_tools(broker: str, fmt: str) -> None:
    status, listed, _ = http(broker, "GET", "/v1/tools?format=mcp")
    assert status == 200, listed
    mcp_names = [t["name"] for t in listed["tools"]]
    assert {"echo__echo", "time__get_current_time", "conformance__test_simple_text"} <= set(mcp_names)
    status, answer, headers = http(broker, "GET", f"/v1/tools?format={fmt}")
    assert status == 200, answer
    assert headers["Content-Type"] == "application/json"
    for tool in answer["tools"]:
        CHECKS[fmt](tool)
    unsupported = {u["name"] for u in answer["unsupported"]}
    assert sorted(_mcp_names(answer) + sorted(unsupported)) == sorted(mcp_names)  # each tool in, or reported
    assert _mcp_names(answer) == sorted(_mcp_names(answer))  # deterministic order
    assert all(e["name"] == provider_name(n, fmt) for e, n in zip(_entries(answer), _mcp_names(answer), strict=True))
    assert http(broker, "GET", f"/v1/tools?format={fmt}")[1] == answer  # the same answer again


def test_definitions_shapes(broker: str) -> None:
    status, answer, _ = http(broker, "GET", "/v1/tools?format=openai")
    assert status == 200, answer
    chat = {e["function"]["name"]: e for e in answer["tools"]}
    add = chat["echo__add"]["function"]
    assert add["strict"] is True
    assert add["parameters"]["required"] == ["a", "b"] and add["parameters"]["additionalProperties"] is False
    slow = chat["echo__slow"]["function"]["parameters"]["properties"]
    assert slow["seconds"]["type"] == ["number", "null"]  # optional: nullable and required in strict mode
    loose = {e["function"]["name"]: e for e in http(broker, "GET", "/v1/tools?format=openai&strict=false")[1]["tools"]}
    assert loose["echo__slow"]["function"]["strict"] is False
    assert "null" not in json.dumps(loose["echo__slow"]["function"]["parameters"]["properties"]["seconds"])
    responses = {e["name"]: e for e in http(broker, "GET", "/v1/tools?format=openai-responses")[1]["tools"]}
    assert responses["echo__add"] == {"type": "function", **add}
    anthropic = {e["name"]: e for e in http(broker, "GET", "/v1/tools?format=anthropic")[1]["tools"]}
    assert anthropic["echo__add"]["input_schema"]["required"] == ["a", "b"]
    gemini = http(broker, "GET", "/v1/tools?format=gemini")[1]["tools"]
    declarations = {d["name"]: d for d in gemini[0]["functionDeclarations"]}
    assert declarations["echo__add"]["parameters"]["properties"]["a"]["type"] == "NUMBER"
    assert declarations["echo__whoami"].get("parameters") is None  # no arguments: no parameters


def test_a_strict_definition_round_trip(broker: str) -> None:
    """What a model writes against a strict definition (null for an optional argument it leaves out) runs."""
    chat = {e["function"]["name"]: e for e in http(broker, "GET", "/v1/tools?format=openai")[1]["tools"]}
    runs = chat["echo__runs"]["function"]
    assert runs["strict"] is True and runs["parameters"]["properties"]["tool"]["type"] == ["string", "null"]
    calls = [{"id": "call_1", "type": "function", "function": {"name": "echo__runs", "arguments": '{"tool": null}'}}]
    status, answer, _ = http(broker, "POST", "/v1/calls?format=openai", calls)
    assert status == 200, answer
    message = answer["messages"][0]
    assert message["tool_call_id"] == "call_1" and not message["content"].startswith("Error"), message


def test_allow_lists_apply_everywhere(broker: str) -> None:
    for fmt in FORMATS:
        status, answer, _ = http(broker, "GET", f"/v1/tools?format={fmt}", key="narrow")
        assert status == 200 and _mcp_names(answer) == ["echo__echo"], answer
    status, document, _ = http(broker, "GET", "/openapi.json", key="narrow")
    assert status == 200
    assert [p for p in document["paths"] if p.startswith("/v1/tools/")] == ["/v1/tools/echo__echo"]
    assert "/v1/admin/reload" not in document["paths"]
    status, answer, _ = http(broker, "POST", "/v1/tools/time__get_current_time", {"timezone": "UTC"}, key="narrow")
    assert status == 403 and answer["error"]["code"] == "forbidden"
    status, answer, _ = http(broker, "POST", "/v1/tools/echo__echo", {"text": "narrow"}, key="narrow")
    assert status == 200 and answer["content"][0]["text"] == "narrow"
    status, answer, _ = http(broker, "GET", "/v1/tools?format=openai", key=None)
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert http(broker, "GET", "/openapi.json", key=None)[0] == 401


def test_bad_queries_get_json_errors(broker: str) -> None:
    status, answer, _ = http(broker, "GET", "/v1/tools?format=cohere")
    assert status == 400 and answer["error"]["code"] == "unknown_format"
    assert answer["error"]["formats"] == list(FORMATS)
    assert "mcp, openai, openai-responses, anthropic, gemini" in answer["error"]["message"]
    status, answer, _ = http(broker, "GET", "/v1/tools?format=openai&strict=maybe")
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    status, answer, _ = http(broker, "GET", "/v1/tools?tools=some")
    assert status == 400 and "full, search" in answer["error"]["message"]


def test_search_mode_lists_pinned_and_search_tools(broker: str) -> None:
    status, answer, _ = http(broker, "GET", "/v1/tools?format=anthropic&tools=search")
    assert status == 200, answer
    assert _mcp_names(answer) == ["broker__call_tool", "broker__search_tools", "time__get_current_time"]
    for tool in answer["tools"]:
        CHECKS["anthropic"](tool)


def test_search_mode_tools_run_over_v1(broker: str) -> None:
    """A model given the search-mode definitions calls the broker's tools like any other: /v1 runs them."""
    status, result, headers = http(broker, "POST", "/v1/tools/broker__search_tools", {"query": "current time"})
    assert status == 200, result
    assert "X-Call-Id" not in headers  # a search is no call of a backend: no call record
    found = [t["name"] for t in result["structuredContent"]["tools"]]
    assert "time__get_current_time" in found
    status, result, _ = http(broker, "POST", "/v1/tools/broker__search_tools", {"query": "current time"},
                             key="narrow")
    assert status == 200 and set(t["name"] for t in result["structuredContent"]["tools"]) <= {"echo__echo"}
    status, result, _ = http(broker, "POST", "/v1/tools/broker__call_tool",
                             {"name": "echo__add", "arguments": {"a": 1, "b": 2}})
    assert status == 200 and result["structuredContent"]["result"] == 3
    status, answer, _ = http(broker, "POST", "/v1/calls",
                             {"tool": "broker__call_tool", "arguments": {"name": "time__get_current_time",
                                                                         "arguments": {"timezone": "UTC"}}},
                             key="narrow")
    assert status == 403 and answer["error"]["code"] == "forbidden"  # the named tool's allow-list applies
    status, answer, _ = http(broker, "POST", "/v1/calls", {"tool": "broker__search_tools", "arguments": {}})
    assert status == 400 and answer["error"]["code"] == "invalid_arguments"
    status, document, _ = http(broker, "GET", "/openapi.json?tools=search")
    validate(document)
    assert sorted(p for p in document["paths"] if p.startswith("/v1/tools/")) == [
        "/v1/tools/broker__call_tool", "/v1/tools/broker__search_tools", "/v1/tools/time__get_current_time"]


def test_openapi_document(broker: str) -> None:
    status, document, _ = http(broker, "GET", "/openapi.json", key="admin")
    assert status == 200
    validate(document)  # openapi-spec-validator: OpenAPI 3.1 and the JSON Schemas in it
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": broker}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "/v1/admin/reload" in document["paths"] and "/v1/calls" in document["paths"]
    tools = {t["name"]: t for t in http(broker, "GET", "/v1/tools?format=mcp", key="admin")[1]["tools"]}
    operations = {p[len("/v1/tools/"):]: item["post"] for p, item in document["paths"].items()
                  if p.startswith("/v1/tools/")}
    assert sorted(operations) == sorted(tools)
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for name, operation in operations.items():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", operation["operationId"])
        assert operation["operationId"] == provider_name(name, "openai")
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        original = {k: v for k, v in tools[name]["inputSchema"].items() if k != "$schema"}
        assert schema == inline_refs(original)
        assert operation.get("description") == tools[name].get("description")
    # the same document for a key that sees everything but is not an admin, minus the admin operation
    status, full, _ = http(broker, "GET", "/openapi.json", key="full")
    assert "/v1/admin/reload" not in full["paths"]
    assert {p for p in full["paths"] if p.startswith("/v1/tools/")} == {f"/v1/tools/{n}" for n in operations}


def test_post_tool(broker: str) -> None:
    status, result, headers = http(broker, "POST", "/v1/tools/echo__add", {"a": 2, "b": 40})
    assert status == 200, result
    assert result["structuredContent"]["result"] == 42 and result.get("isError") is not True
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Call-Id"])
    status, result, _ = http(broker, "POST", "/v1/tools/echo__fail", {})
    assert status == 200 and result["isError"] is True  # the tool's own error is a result the model reads
    status, result, _ = http(broker, "POST", "/v1/tools/conformance__test_image_content", b"")
    assert status == 200 and result["content"][0]["type"] == "image"  # an empty body is no arguments
    cases = [
        (b"{not json", "application/json", 400, "invalid_arguments"),
        (b"[1, 2]", "application/json", 400, "invalid_arguments"),
        (json.dumps({"a": "two"}).encode(), "application/json", 400, "invalid_arguments"),
        (json.dumps({"a": 1, "b": 2}).encode(), "text/plain", 415, "unsupported_media_type"),
    ]
    for body, ctype, expected, code in cases:
        status, answer, _ = http(broker, "POST", "/v1/tools/echo__add", body, ctype=ctype)
        assert (status, answer["error"]["code"]) == (expected, code), (body, answer)
    status, answer, _ = http(broker, "POST", "/v1/tools/echo__nope", {})
    assert status == 404 and answer["error"]["code"] == "unknown_tool"
    status, answer, _ = http(broker, "POST", "/v1/tools/echo__add?timeout_s=-1", {"a": 1, "b": 1})
    assert status == 400 and answer["error"]["code"] == "invalid_request"


def test_readme_section_names_the_routes() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## LLM APIs and OpenAPI", 1)[1].split("\n## ", 1)[0]
    for needed in ("### Tool definitions", "### OpenAPI", "/v1/tools?format=", "/openapi.json", "POST /v1/tools/"):
        assert needed in section, needed
