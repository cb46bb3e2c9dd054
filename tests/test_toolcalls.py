"""A model's tool calls executed as they come (issue 18 part 2): `POST /v1/calls` with a recorded chat completion,
Anthropic message, Gemini response and OpenAI Responses output, against real backends; every answer checked with
the provider's own published types (openai, anthropic, google-genai)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.translate.names import provider_name
from tests.stack import Stack
from tests.toolcalls_support import (
    FIXTURES,
    KEYS,
    MAX_BATCH_CALLS,
    ROOT,
    SLOW_BURST,
    fixture,
    http,
    start,
    stream,
    valid_anthropic_message,
    valid_gemini_content,
    valid_openai,
    valid_openai_responses,
)
from web.toolcalls import MAX_TOOL_CALLS

PNG = "image/png"


@pytest.fixture(scope="module")
def broker(own_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack: Stack | None = None
    try:
        stack, base = start(own_redis_url, tmp_path_factory.mktemp("toolcalls"))
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
    status, again = http(broker, "POST", "/v1/calls?format=openai&timeout_s=10", sent[:1])
    assert status == 200 and again["messages"][0]["content"] == "hello from gpt"


def test_strict_mode_nulls_are_dropped_for_openai_only(broker: str) -> None:
    """OpenAI strict definitions make `runs(tool="")` take `"tool": null`; the broker drops it before the
    tool's own schema (a string) sees it. Anthropic definitions are the tool's own schema: a null is an error."""
    call = [{"id": "call_n", "type": "function", "function": {"name": "echo__runs", "arguments": '{"tool": null}'}}]
    status, body = http(broker, "POST", "/v1/calls?format=openai", call)
    assert status == 200 and not body["messages"][0]["content"].startswith("Error"), body
    use = [{"type": "tool_use", "id": "toolu_n", "name": "echo__runs", "input": {"tool": None}}]
    status, body = http(broker, "POST", "/v1/calls?format=anthropic", use)
    block = body["message"]["content"][0]
    assert status == 200 and block["is_error"] is True and "invalid arguments" in block["content"][0]["text"]


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
        ("/v1/calls?format=openai&timeout_s=-1", fixture("openai_chat_completion.json")),
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


# ---------------------------------------------------------------- batch files (part 3)
JSONL = "application/x-ndjson"


def _results(base: str, submitted: dict[str, Any], key: str = "full") -> list[dict[str, Any]]:
    lines = list(stream(base, submitted["results_url"], key=key))
    assert len(lines) == submitted["total"]
    return lines


def test_openai_batch_output_file_through_the_api(broker: str) -> None:
    data = (FIXTURES / "openai_batch_output.jsonl").read_bytes()
    status, submitted = http(broker, "POST", "/v1/batches?from=openai-batch", data, ctype="application/jsonl")
    assert status == 202, submitted
    assert submitted["format"] == "openai-batch" and submitted["total"] == 5 and submitted["not_runnable"] == 2
    assert submitted["skipped_count"] == 3
    assert {(s["custom_id"], s["line"]) for s in submitted["skipped"]} == {("req-2", 2), ("req-3", 3), ("req-6", 6)}
    assert "could not be executed before the completion window expired" in str(submitted["skipped"])
    by_call = {(r["custom_id"], r["tool_call_id"]): r for r in _results(broker, submitted)}
    for line in by_call.values():
        assert line["format"] == "openai" and line["answer"]["tool_call_id"] == line["tool_call_id"]
        valid_openai(line["answer"])
    assert by_call["req-1", "call_reqOne1aaaaaaaaaaaaaaaa"]["answer"]["content"] == "batch one"
    assert by_call["req-1", "call_reqOne2bbbbbbbbbbbbbbbb"]["answer"]["content"] == "42.0"
    broken = by_call["req-4", "call_reqFour1cccccccccccccccc"]
    assert broken["is_error"] and "not valid JSON" in broken["answer"]["content"]
    vanished = by_call["req-4", "call_reqFour2dddddddddddddddd"]
    assert vanished["is_error"] and "unknown tool 'echo__vanished'" in vanished["answer"]["content"]
    mixed = by_call["req-5", "call_reqFive1eeeeeeeeeeeeeeee"]["answer"]["content"]
    assert "Multiple content types test:" in mixed and "[image" in mixed
    status, done = http(broker, "GET", submitted["status_url"])
    assert status == 200 and done["state"] == "done" and done["done"] == 3 and done["failed"] == 2, done


def test_anthropic_batch_results_file_through_the_cli(broker: str, tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    run = subprocess.run([sys.executable, "-m", "broker", "batch", "--from", "anthropic-batch",
                          str(FIXTURES / "anthropic_batch_results.jsonl"), "-o", str(out), "-q",
                          "--url", broker, "--key", KEYS["full"]], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stderr  # two of the four calls are errors
    assert "4 line(s)" in run.stderr and "msg-3" in run.stderr and "expired" in run.stderr, run.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(line["format"] == "anthropic" for line in lines)
    by_call = {(r["custom_id"], r["tool_call_id"]): r["answer"] for r in lines}
    assert by_call["msg-1", "toolu_01BatchOneAaaaaaaaaaaaa"]["content"] == [{"type": "text", "text": "anthropic batch"}]
    assert by_call["msg-1", "toolu_01BatchOneBbbbbbbbbbbbb"]["content"][0]["type"] == "image"
    assert by_call["msg-4", "toolu_01BatchFourCccccccccccc"]["is_error"] is True
    invalid = by_call["msg-4", "toolu_01BatchFourDddddddddddd"]
    assert invalid["is_error"] is True and "invalid arguments for tool echo__add" in invalid["content"][0]["text"]
    # the next request of each conversation: one user message with its tool_result blocks, in the model's order
    for custom_id in ("msg-1", "msg-4"):
        blocks = sorted((r for r in lines if r["custom_id"] == custom_id), key=lambda r: r["tool_call_id"])
        valid_anthropic_message({"role": "user", "content": [r["answer"] for r in blocks]})


def test_batch_files_follow_the_allow_list_and_are_detected(broker: str) -> None:
    """The narrow key (echo__echo only), no `?from=`: the source is told by the first line."""
    data = (FIXTURES / "anthropic_batch_results.jsonl").read_bytes()
    status, submitted = http(broker, "POST", "/v1/batches", data, key="narrow", ctype=JSONL)
    assert status == 202 and submitted["format"] == "anthropic-batch", submitted
    lines = _results(broker, submitted, key="narrow")
    ran = [r for r in lines if not r["is_error"]]
    assert [r["answer"]["content"][0]["text"] for r in ran] == ["anthropic batch"]
    assert all("unknown tool" in r["answer"]["content"][0]["text"] for r in lines if r["is_error"])


def test_gemini_and_responses_bodies_as_batches(broker: str) -> None:
    status, submitted = http(broker, "POST", "/v1/batches?format=gemini", fixture("gemini_response.json"))
    assert status == 202 and submitted["total"] == 5, submitted
    parts = {r["tool_call_id"]: r["answer"] for r in _results(broker, submitted)}
    valid_gemini_content({"role": "user", "parts": list(parts.values())})
    assert parts["gc-5d2e8c10"]["functionResponse"]["response"]["key"] == "gemini"
    lines = b"\n".join(json.dumps(fixture("openai_response.json")).encode() for _ in range(2))
    status, submitted = http(broker, "POST", "/v1/batches?format=openai-responses", lines, ctype=JSONL)
    assert status == 202 and submitted["total"] == 6, submitted
    for line in _results(broker, submitted):
        valid_openai_responses(line["answer"])
        assert line["line"] in (1, 2)


def test_batch_file_errors(broker: str) -> None:
    data = (FIXTURES / "openai_batch_output.jsonl").read_bytes()
    status, body = http(broker, "POST", "/v1/batches?from=klingon-batch", data, ctype=JSONL)
    assert status == 400 and "unknown batch source" in body["error"]["message"], body
    nothing = data.split(b"\n")[1] + b"\n" + data.split(b"\n")[2]  # no tool calls, an errored request
    status, body = http(broker, "POST", "/v1/batches?from=openai-batch", nothing, ctype=JSONL)
    assert status == 400 and body["error"]["code"] == "invalid_batch", body
    assert "no tool calls to run: 2 line(s) skipped" in body["error"]["message"]
    calls = [{"type": "tool_use", "id": f"toolu_{i}", "name": "echo__echo", "input": {"text": str(i)}}
             for i in range(MAX_BATCH_CALLS + 1)]
    status, body = http(broker, "POST", "/v1/batches?format=anthropic", calls)
    assert status == 413 and body["error"]["code"] == "batch_too_large", body
    assert f"more than {MAX_BATCH_CALLS} tool calls" in body["error"]["message"]


# ---------------------------------------------------------------- hostile messages
DEEP = "[" * 5000 + "]" * 5000  # nested past Python's recursion limit


def _openai_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_deeply_nested_arguments_are_one_calls_error(broker: str) -> None:
    """Arguments 5,000 levels deep: that call's error in the provider's shape; the others run (message, file)."""
    message = {"role": "assistant", "tool_calls": [_openai_call("c-good", "echo__echo", '{"text": "fine"}'),
                                                   _openai_call("c-deep", "echo__echo", DEEP)]}
    status, body = http(broker, "POST", "/v1/calls", message)
    assert status == 200, body
    good, deep = body["messages"]
    assert good["content"] == "fine"
    assert deep["tool_call_id"] == "c-deep" and deep["content"].startswith("Error: ") and "JSON" in deep["content"]
    lines = [{"role": "assistant", "tool_calls": [_openai_call(f"c-{n}", "echo__echo",
                                                               json.dumps({"text": f"line {n}"}))]} for n in (1, 3)]
    lines.insert(1, {"role": "assistant", "tool_calls": [_openai_call("c-2", "echo__echo", DEEP)]})
    data = "\n".join(json.dumps(line) for line in lines).encode()
    status, submitted = http(broker, "POST", "/v1/batches?format=openai", data, ctype=JSONL)
    assert status == 202 and submitted["total"] == 3 and submitted["not_runnable"] == 1, submitted
    by_line = {r["line"]: r for r in _results(broker, submitted)}
    assert by_line[1]["answer"]["content"] == "line 1" and by_line[3]["answer"]["content"] == "line 3"
    assert by_line[2]["is_error"] and "not valid JSON" in by_line[2]["answer"]["content"]


def test_tool_calls_per_message_are_capped(broker: str) -> None:
    calls = [_openai_call(f"c-{i}", "echo__echo", "{}") for i in range(MAX_TOOL_CALLS + 1)]
    status, body = http(broker, "POST", "/v1/calls?format=openai", calls)
    assert status == 413 and body["error"]["code"] == "too_many_tool_calls", body
    assert str(MAX_TOOL_CALLS) in body["error"]["message"]


def test_each_tool_call_takes_a_rate_token(broker: str) -> None:
    """The slow key has SLOW_BURST tokens: a message of SLOW_BURST + 2 calls runs SLOW_BURST of them; the
    others are answered as rate-limited, in the provider's shape."""
    calls = [_openai_call(f"c-{i}", "echo__echo", json.dumps({"text": str(i)})) for i in range(SLOW_BURST + 2)]
    status, body = http(broker, "POST", "/v1/calls?format=openai", calls, key="slow")
    assert status == 200, body
    contents = [m["content"] for m in body["messages"]]
    assert contents[:SLOW_BURST] == [str(i) for i in range(SLOW_BURST)]
    assert all(c.startswith("Error: Rate limit exceeded") for c in contents[SLOW_BURST:]), contents
    status, body = http(broker, "POST", "/v1/calls?format=openai", calls[:1], key="slow")
    assert status == 429 and body["error"]["code"] == "rate_limited", body


# ---------------------------------------------------------------- the broker's own tools (search mode)
SEARCH_MODE_CALLS = [("broker__search_tools", {"query": "current time"}),
                     ("broker__call_tool", {"name": "echo__echo", "arguments": {"text": "through call_tool"}}),
                     ("broker__search_tools", {})]  # the search's arguments are checked: a per-call error


def test_search_mode_tools_run_in_a_providers_shape(broker: str) -> None:
    """What `GET /v1/tools?tools=search` lists, a model calls; the answer runs them as `POST /v1/calls` does."""
    for provider in ("openai", "anthropic"):
        status, listed = http(broker, "GET", f"/v1/tools?format={provider}&tools=search")
        assert status == 200, listed
        names = {t.get("name") or t["function"]["name"] for t in listed["tools"]}
        assert {"broker__search_tools", "broker__call_tool"} <= names
    message = {"role": "assistant", "tool_calls": [_openai_call(f"c-{i}", name, json.dumps(arguments))
                                                   for i, (name, arguments) in enumerate(SEARCH_MODE_CALLS)]}
    status, body = http(broker, "POST", "/v1/calls", message)
    assert status == 200, body
    found, called, refused = (valid_openai(m)["content"] for m in body["messages"])
    assert "time__get_current_time" in found
    assert called == "through call_tool"
    assert refused.startswith("Error: ") and "invalid arguments" in refused
    blocks = [{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": arguments}
              for i, (name, arguments) in enumerate(SEARCH_MODE_CALLS)]
    status, body = http(broker, "POST", "/v1/calls?format=anthropic", blocks)
    assert status == 200, body
    valid_anthropic_message(body["message"])
    found, called, refused = body["message"]["content"]
    assert "time__get_current_time" in json.dumps(found["content"]) and "is_error" not in found
    assert called["content"] == [{"type": "text", "text": "through call_tool"}]
    assert refused["is_error"] is True
    status, body = http(broker, "POST", "/v1/calls?format=anthropic", blocks[1:2], key="narrow")
    assert status == 200 and body["message"]["content"][0]["content"][0]["text"] == "through call_tool"
    denied = dict(blocks[1], input={"name": "time__get_current_time", "arguments": {"timezone": "UTC"}})
    status, body = http(broker, "POST", "/v1/calls?format=anthropic", [denied], key="narrow")
    assert status == 200 and body["message"]["content"][0]["is_error"] is True  # the named tool's allow-list
    assert "Forbidden" in body["message"]["content"][0]["content"][0]["text"]
    status, submitted = http(broker, "POST", "/v1/batches?format=anthropic", blocks[:2])
    assert status == 202 and submitted["not_runnable"] == 2, submitted  # a batch runs on the workers: not these
