"""Every kind of MCP result part, rendered for each LLM API and checked with that API's own types (no stack:
the parts the test backends cannot produce — audio, a PDF resource, an unsupported image type, a resource link,
structured content without text — are built here as a worker would store them)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from broker.translate.batch_files import read_file
from broker.translate.call_formats import CALL_FORMATS, UnknownShape, find_format
from broker.translate.toolcalls import ToolCall, render
from tests.toolcalls_support import (
    valid_anthropic_block,
    valid_gemini_part,
    valid_openai,
    valid_openai_responses,
)

DATA = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
PDF = base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()
EVERY_PART: dict[str, Any] = {"result": {"content": [
    {"type": "text", "text": "all the parts"},
    {"type": "image", "data": DATA, "mimeType": "image/png"},
    {"type": "image", "data": DATA, "mimeType": "image/tiff"},
    {"type": "audio", "data": DATA, "mimeType": "audio/wav"},
    {"type": "resource_link", "uri": "file:///tmp/report.txt", "name": "report"},
    {"type": "resource", "resource": {"uri": "test://doc.pdf", "mimeType": "application/pdf", "blob": PDF}},
    {"type": "resource", "resource": {"uri": "test://notes.md", "mimeType": "text/markdown", "text": "# notes"}},
], "structuredContent": {"parts": 7}}}
STRUCTURED_ONLY: dict[str, Any] = {"result": {"content": [], "structuredContent": {"temperature": 21.5}}}
TOOL_ERROR: dict[str, Any] = {"result": {"content": [{"type": "text", "text": "disk full"}], "isError": True}}
BACKEND_ERROR: dict[str, Any] = {"error": {"code": -32001, "message": "Request timed out"}}
VALIDATE = {"openai": valid_openai, "openai-responses": valid_openai_responses,
            "anthropic": valid_anthropic_block, "gemini": valid_gemini_part}
OUTCOMES = {"every part": EVERY_PART, "structured only": STRUCTURED_ONLY, "tool error": TOOL_ERROR,
            "backend error": BACKEND_ERROR}


@pytest.mark.parametrize("format_name", list(CALL_FORMATS))
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_every_outcome_is_a_valid_answer(format_name: str, outcome: str) -> None:
    answer = CALL_FORMATS[format_name].answer(ToolCall("call_x", "echo__echo"), render(OUTCOMES[outcome]))
    VALIDATE[format_name](answer)


def _answer(format_name: str, outcome: dict[str, Any]) -> Any:
    return CALL_FORMATS[format_name].answer(ToolCall("call_x", "echo__echo"), render(outcome))


def test_openai_chat_describes_media_in_text() -> None:
    text = _answer("openai", EVERY_PART)["content"]
    assert text.startswith("all the parts")
    assert "[image (image/png, 72 bytes) not included: a Chat Completions tool message carries text only]" in text
    assert "[resource report: file:///tmp/report.txt]" in text and "[resource test://notes.md]\n# notes" in text
    assert DATA not in text
    assert _answer("openai", STRUCTURED_ONLY)["content"] == '{"temperature": 21.5}'
    assert _answer("openai", TOOL_ERROR)["content"] == "Error: disk full"
    assert _answer("openai", BACKEND_ERROR)["content"] == "Error: Request timed out"


def test_responses_inline_images_and_files() -> None:
    output = _answer("openai-responses", EVERY_PART)["output"]
    kinds = [p["type"] for p in output]
    assert kinds == ["input_text", "input_image", "input_image", "input_file"]
    assert output[3]["file_data"] == f"data:application/pdf;base64,{PDF}" and output[3]["filename"] == "doc.pdf"
    assert "[audio (audio/wav" in output[0]["text"]


def test_anthropic_blocks() -> None:
    block = _answer("anthropic", EVERY_PART)
    assert [b["type"] for b in block["content"]] == ["text", "image", "text", "text", "text", "document", "text"]
    assert "image/tiff" in block["content"][2]["text"] and "is_error" not in block
    assert _answer("anthropic", STRUCTURED_ONLY)["content"] == [{"type": "text", "text": '{"temperature": 21.5}'}]
    error = _answer("anthropic", BACKEND_ERROR)
    assert error["is_error"] is True and error["content"][0]["text"] == "Request timed out"


def test_gemini_function_response() -> None:
    response = _answer("gemini", EVERY_PART)["functionResponse"]
    assert response["response"] == {"parts": 7}  # the structured content, as the object
    assert [p["inlineData"]["mimeType"] for p in response["parts"]] == ["image/png", "image/tiff", "audio/wav",
                                                                       "application/pdf"]
    text_only = {"result": {"content": [{"type": "text", "text": "plain"}]}}
    assert _answer("gemini", text_only)["functionResponse"]["response"] == {"output": "plain"}
    assert _answer("gemini", TOOL_ERROR)["functionResponse"]["response"] == {"error": "disk full"}
    no_id = CALL_FORMATS["gemini"].answer(ToolCall(None, "echo__echo"), render(text_only))
    assert "id" not in no_id["functionResponse"]


def test_shapes_are_told_apart() -> None:
    assert find_format({"tool": "echo__echo"}) is None
    assert find_format({"role": "assistant", "content": "no tools"}).name == "openai"  # type: ignore[union-attr]
    assert find_format({"role": "assistant", "content": [{"type": "text", "text": "hi"}]}).name == "anthropic"  # type: ignore[union-attr]
    assert find_format({"role": "model", "parts": [{"text": "hi"}]}).name == "gemini"  # type: ignore[union-attr]
    assert find_format([{"type": "function_call", "call_id": "c", "name": "n", "arguments": "{}"}]).name == (  # type: ignore[union-attr]
        "openai-responses")
    assert find_format({"unrelated": True}) is None
    with pytest.raises(UnknownShape):
        find_format({}, "klingon")
    arguments = CALL_FORMATS["openai"].read([{"id": "c", "type": "function",
                                              "function": {"name": "n", "arguments": "[1, 2]"}}])
    assert arguments[0].problem == "the arguments of 'n' must be a JSON object, not list"


def test_every_content_block_kind_has_a_piece() -> None:
    rendered = render({"result": {"content": [
        {"type": "text", "text": "t"}, {"type": "image", "mimeType": "image/png", "data": "AAAA"},
        {"type": "audio", "mimeType": "audio/wav", "data": "AAAA"},
        {"type": "resource_link", "uri": "file:///a", "name": "a"},
        {"type": "resource", "resource": {"uri": "file:///b", "text": "bee"}},
        {"type": "resource", "resource": {"uri": "file:///c.pdf", "mimeType": "application/pdf", "blob": "AAAA"}},
        {"type": "resource", "resource": "not an object"}, {"type": "hologram"}, 7]}})
    assert [p.kind for p in rendered.pieces] == ["text", "image", "audio", "text", "text", "file", "text", "text",
                                                 "text"]
    assert rendered.pieces[3].text == "[resource a: file:///a]" and rendered.pieces[4].text == "[resource file:///b]\nbee"
    assert rendered.pieces[7].text == '{"type": "hologram"}' and rendered.pieces[8].text == "7"


@pytest.mark.parametrize("source", ["anthropic", "openai", "openai-responses", "gemini"])
def test_a_line_of_another_shape_is_named_with_its_article(source: str) -> None:
    found = read_file([(1, '{"role": "user", "content": "hi"}')], source, 10)
    reason = found.skipped[0]["reason"]
    article = "an" if source[0] in "ao" else "a"
    assert reason.startswith(f"not {article} {source} line: "), reason
