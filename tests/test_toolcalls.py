"""A model's tool calls executed as they come (issue 18 part 2): `POST /v1/calls` with a recorded chat completion,
Anthropic message, Gemini response and OpenAI Responses output, against real backends; every answer checked with
the provider's own published types (openai, anthropic, google-genai)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from broker.translate.names import provider_name
from tests.stack import Stack
from tests.toolcalls_support import (
    fixture,
    http,
    start,
    valid_anthropic_message,
    valid_gemini_content,
    valid_openai,
    valid_openai_responses,
)

PNG = "image/png"


@pytest.fixture(scope="module")
def broker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack: Stack | None = None
    try:
        stack, base = start(redis_url, tmp_path_factory.mktemp("toolcalls"))
        yield base
    finally:
        if stack is not None:
            stack.stop()


def _names(calls: list[tuple[str, str]], provider: str) -> None:
    """The recorded responses name tools as GET /v1/tools?format=<provider> shows them."""
    for mcp_name, written in calls:
        assert provider_name(mcp_name, provider) == written


def test_openai_chat_completion(broker: str) -> None:
    completion = fixture("openai_chat_completion.json")
    _names([("echo__echo", "echo__echo"), ("time__get_current_time", "time__get_current_time"),
            ("conformance__test_multiple_content_types", "conformance__test_multiple_content_types")], "openai")
    status, body = http(broker, "POST", "/v1/calls", completion)
    assert status == 200, body
    assert body["format"] == "openai"
    messages = [valid_openai(m) for m in body["messages"]]
    sent = completion["choices"][0]["message"]["tool_calls"]
    assert [m["tool_call_id"] for m in messages] == [c["id"] for c in sent]  # one answer per call, in order
    echo, now, bad_json, unknown, failed, mixed = (m["content"] for m in messages)
    assert echo == "hello from gpt"
    assert json.loads(now)["timezone"] == "UTC"
    assert bad_json.startswith("Error: ") and "not valid JSON" in bad_json
    assert unknown.startswith("Error: unknown tool 'echo__no_such_tool'")
    assert failed == "Error executing tool fail"  # the tool's isError result, as the backend words it
    assert "Multiple content types test:" in mixed and "[image" in mixed and PNG in mixed
    assert "test://mixed-content-resource" in mixed
    # the same message, its tool_calls list alone, with the format named
    status, again = http(broker, "POST", "/v1/calls?format=openai", sent[:1])
    assert status == 200 and again["messages"][0]["content"] == "hello from gpt"


def test_openai_responses_output(broker: str) -> None:
    response = fixture("openai_response.json")
    status, body = http(broker, "POST", "/v1/calls", response)
    assert status == 200, body
    assert body["format"] == "openai-responses"
    echo, image, broken = (valid_openai_responses(i) for i in body["input"])
    assert [i["call_id"] for i in body["input"]] == [o["call_id"] for o in response["output"][1:]]
    assert echo["output"] == "hello from responses"
    assert [p["type"] for p in image["output"]] == ["input_image"]
    assert image["output"][0]["image_url"].startswith(f"data:{PNG};base64,")
    assert broken["output"].startswith("Error: ") and "not valid JSON" in broken["output"]


def test_anthropic_message(broker: str) -> None:
    message = fixture("anthropic_message.json")
    status, body = http(broker, "POST", "/v1/calls", message)
    assert status == 200, body
    assert body["format"] == "anthropic"
    reply = valid_anthropic_message(body["message"])
    assert reply["role"] == "user"
    blocks = reply["content"]
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    assert [b["tool_use_id"] for b in blocks] == [u["id"] for u in uses]
    echo, added, failed, bad_args, mixed, image = blocks
    assert echo["content"] == [{"type": "text", "text": "hello from claude"}] and "is_error" not in echo
    assert added["content"][0]["text"] == "5.5"
    assert failed["is_error"] is True and failed["content"] == [{"type": "text", "text": "Error executing tool fail"}]
    assert bad_args["is_error"] is True and "invalid arguments" in bad_args["content"][0]["text"]
    assert [b["type"] for b in mixed["content"]] == ["text", "image", "text"]
    assert mixed["content"][1]["source"]["media_type"] == PNG
    assert "test://mixed-content-resource" in mixed["content"][2]["text"]
    assert image["content"][0]["type"] == "image"
    # the tool_use blocks alone
    status, again = http(broker, "POST", "/v1/calls?format=anthropic", uses[:1])
    assert status == 200 and again["message"]["content"][0]["content"][0]["text"] == "hello from claude"


def test_gemini_response(broker: str) -> None:
    response = fixture("gemini_response.json")
    status, body = http(broker, "POST", "/v1/calls", response)
    assert status == 200, body
    assert body["format"] == "gemini"
    content = valid_gemini_content(body["content"])
    assert content.role == "user"
    echo, stamp, image, failed, unknown = (p["functionResponse"] for p in body["content"]["parts"])
    calls = [p["functionCall"] for p in response["candidates"][0]["content"]["parts"]]
    assert [r["id"] for r in (echo, stamp, image, failed, unknown)] == [c["id"] for c in calls]
    assert [r["name"] for r in (echo, stamp, image, failed, unknown)] == [c["name"] for c in calls]
    assert echo["response"] == {"result": "hello from gemini"}  # the tool's structuredContent (a wrapped str)
    assert stamp["response"]["key"] == "gemini" and isinstance(stamp["response"]["run"], int)  # structuredContent
    assert image["parts"][0]["inlineData"]["mimeType"] == PNG
    assert "error" in failed["response"] and "error" in unknown["response"]
    # a bare FunctionCall list, without ids
    status, again = http(broker, "POST", "/v1/calls", [{"name": "echo__echo", "args": {"text": "bare"}}])
    assert status == 200, again
    part = again["content"]["parts"][0]
    valid_gemini_content(again["content"])
    assert part["functionResponse"] == {"name": "echo__echo", "response": {"result": "bare"}}


def test_allow_list_applies_per_call(broker: str) -> None:
    """A key allowed only echo__echo: its other calls are answered as errors, its echo runs."""
    message = fixture("anthropic_message.json")
    status, body = http(broker, "POST", "/v1/calls", message, key="narrow")
    assert status == 200, body
    blocks = valid_anthropic_message(body["message"])["content"]
    assert "is_error" not in blocks[0] and blocks[0]["content"][0]["text"] == "hello from claude"
    assert all(b["is_error"] is True and "unknown tool" in b["content"][0]["text"] for b in blocks[1:])


def test_bad_bodies_are_400(broker: str) -> None:
    cases: list[tuple[str, Any]] = [
        ("/v1/calls?format=openai", {"role": "user", "content": [{"type": "text", "text": "hi"}]}),
        ("/v1/calls?format=gemini", {"something": "else"}),
        ("/v1/calls?format=klingon", {"tool_calls": []}),
        ("/v1/calls", {"neither": "native nor a model's message"}),
        ("/v1/calls?format=openai", [{"type": "function", "function": "not an object"}]),
    ]
    for path, body in cases:
        status, answer = http(broker, "POST", path, body)
        assert status == 400, (path, body, answer)
        assert answer["error"]["code"] == "invalid_call" and answer["error"]["message"]


def test_native_calls_still_take_their_own_path(broker: str) -> None:
    status, body = http(broker, "POST", "/v1/calls", {"tool": "echo__echo", "arguments": {"text": "native"}})
    assert status == 200 and body["result"]["content"][0]["text"] == "native", body
    status, body = http(broker, "POST", "/v1/calls", {"tool": "echo__add", "arguments": {"a": 1, "b": 2}}, key="narrow")
    assert status == 403 and body["error"]["code"] == "forbidden", body
    status, body = http(broker, "POST", "/v1/calls", {"tool": "echo__add", "arguments": {"a": "x", "b": 2}})
    assert status == 400 and body["error"]["code"] == "invalid_arguments", body
