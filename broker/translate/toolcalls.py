"""A model's tool calls and the broker's answers to them, independent of any one LLM API.

Each provider module (`calls_openai`, `calls_openai_responses`, `calls_anthropic`, `calls_gemini`) reads that
API's tool calls into `ToolCall`s and writes an answer from a `Rendered` outcome; `call_formats` holds them in
one table. What lies between is shared: a call that cannot run (arguments that are not JSON, a name no
visible tool has) carries its `problem` and is answered as a tool error in the provider's shape, like a
backend's error or an MCP result with `isError` — one bad call never fails the others.

An MCP result is reduced to `Piece`s (text, image, audio, file) plus its `structuredContent`, the common
ground every provider module renders from: what each API accepts of them is that module's choice, written
in the README's table ("Executing a model's tool calls").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ShapeError(ValueError):
    """The body is not (a valid instance of) the shape it was read as."""


@dataclass
class ToolCall:
    """One tool call as a model wrote it, and what the broker made of it."""

    call_id: str | None  # the provider's id (tool_call id, tool_use id, Gemini's optional id)
    name: str  # the function name the model used (a provider name, see `broker.translate.names`)
    arguments: dict[str, Any] | None = None
    problem: str | None = None  # why it cannot run; answered as a tool error
    tool: str | None = None  # the MCP tool (namespaced) it resolved to
    custom_id: str | None = None  # a batch file's request id
    line: int | None = None  # the JSON Lines line it came from
    format: str = ""  # the call format it was read in (a batch file may hold chat completions and Responses)


@dataclass(frozen=True)
class Piece:
    """One part of a result: kind `text` (text), or `image` / `audio` / `file` (mime, base64 data, uri)."""

    kind: str
    text: str = ""
    mime: str = ""
    data: str = ""
    uri: str = ""

    def describe(self, why: str) -> str:
        """A media part as text, for an API that cannot carry it: what it was, and why it is not here."""
        size = len(self.data) * 3 // 4
        where = f" {self.uri}" if self.uri else ""
        return f"[{self.kind}{where} ({self.mime or 'unknown type'}, {size} bytes) not included: {why}]"


@dataclass(frozen=True)
class Rendered:
    """An outcome in neutral form: whether the model should read it as an error, its parts, its structure."""

    is_error: bool
    pieces: list[Piece] = field(default_factory=list)
    structured: dict[str, Any] | None = None

    def texts(self) -> list[str]:
        return [p.text for p in self.pieces if p.kind == "text" and p.text]

    def media(self) -> list[Piece]:
        return [p for p in self.pieces if p.kind != "text"]

    def text(self, describe_media: str | None = None) -> str:
        """All text parts joined by blank lines; media described with `describe_media` as the reason (left out
        without one); the structured content as JSON when there is no text at all; "Error: " before an error."""
        parts = [p.text if p.kind == "text" else p.describe(describe_media or "") for p in self.pieces
                 if (p.kind == "text" and p.text) or (p.kind != "text" and describe_media)]
        if not any(p.kind == "text" and p.text for p in self.pieces) and self.structured is not None:
            parts.insert(0, json.dumps(self.structured, ensure_ascii=False))
        text = "\n\n".join(parts)
        return f"Error: {text}" if self.is_error and not text.startswith("Error") else text


def _text(block: dict[str, Any]) -> Piece:
    return Piece("text", str(block.get("text", "")))


def _media(block: dict[str, Any]) -> Piece:
    return Piece(str(block["type"]), mime=str(block.get("mimeType", "")), data=str(block.get("data", "")))


def _resource_link(block: dict[str, Any]) -> Piece:
    title = block.get("title") or block.get("name") or ""
    return Piece("text", f"[resource {title}: {block.get('uri', '')}]".replace("  ", " "))


def _resource(block: dict[str, Any]) -> Piece:
    resource = block.get("resource")
    if not isinstance(resource, dict):
        return _as_json(block)
    uri, mime = str(resource.get("uri", "")), str(resource.get("mimeType", ""))
    if "text" in resource:
        return Piece("text", f"[resource {uri}]\n{resource['text']}", mime=mime, uri=uri)
    return Piece("file", mime=mime, data=str(resource.get("blob", "")), uri=uri)


def _as_json(block: Any) -> Piece:
    return Piece("text", json.dumps(block, ensure_ascii=False))


PIECE_READERS: dict[str, Callable[[dict[str, Any]], Piece]] = {  # MCP content block type → its `Piece`
    "text": _text,
    "image": _media,
    "audio": _media,
    "resource_link": _resource_link,
    "resource": _resource,
}


def _piece(block: Any) -> Piece:
    """One MCP content block (text, image, audio, resource_link, embedded resource) as a `Piece`; anything
    else as its JSON text."""
    if not isinstance(block, dict):
        return _as_json(block)
    reader = PIECE_READERS.get(block.get("type"))  # type: ignore[arg-type]
    return reader(block) if reader is not None else _as_json(block)


def render(outcome: dict[str, Any] | None, problem: str | None = None) -> Rendered:
    """A worker's outcome (`{"result": CallToolResult}` or `{"error": {code, message}}`), or a call that never
    ran because of `problem`, in neutral form."""
    if problem is not None:
        return Rendered(True, [Piece("text", problem)])
    outcome = outcome or {}
    if "result" not in outcome:
        error = outcome.get("error") or {}
        return Rendered(True, [Piece("text", str(error.get("message", "the call failed")))])
    result = outcome["result"] if isinstance(outcome["result"], dict) else {}
    structured = result.get("structuredContent")
    return Rendered(bool(result.get("isError")), [_piece(b) for b in result.get("content") or []],
                    structured if isinstance(structured, dict) else None)


def parse_arguments(call: ToolCall, raw: Any) -> ToolCall:
    """`raw` as the call's arguments: a JSON object, or a string holding one (OpenAI's form; "" is no
    arguments); anything else makes the call's `problem`."""
    if isinstance(raw, str):
        if not raw.strip():
            raw = "{}"
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than Python's stack allows
            call.problem = f"the arguments of {call.name!r} are not valid JSON: {err}"
            return call
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        call.problem = f"the arguments of {call.name!r} must be a JSON object, not {type(raw).__name__}"
        return call
    call.arguments = raw
    return call


def named(item: dict[str, Any], key: str, call_id: Any, raw_arguments: Any) -> ToolCall:
    """A `ToolCall` from a provider's item whose name is at `key`; a missing name or id is the call's problem."""
    name = item.get(key)
    call = ToolCall(call_id if isinstance(call_id, str) else None, name if isinstance(name, str) else "")
    if not call.name:
        call.problem = "the tool call has no function name"
        return call
    return parse_arguments(call, raw_arguments)


Items = list[dict[str, Any]]
Recognize = Callable[[Any], bool]
Read = Callable[[Any], list[ToolCall]]


def located(locate: Callable[[Any], Items | None], expected: str,
            calls_of: Callable[[Items], list[ToolCall]]) -> tuple[Recognize, Read]:
    """A format's `recognize` and `read` from where its items are in a body (`locate`: None when the body is not
    this shape; `expected` names what would be) and how its items make tool calls (`calls_of`)."""

    def recognize(body: Any) -> bool:
        return locate(body) is not None

    def read(body: Any) -> list[ToolCall]:
        items = locate(body)
        if items is None:
            raise ShapeError(f"not {expected}")
        return calls_of(items)

    return recognize, read


@dataclass(frozen=True)
class CallFormat:
    """How one LLM API writes tool calls and wants their answers.

    `recognize` says whether a body is unmistakably this shape (the convenience when no `format` is given);
    `read` returns its tool calls or raises `ShapeError`; `answer` writes one call's answer; `reply` wraps a
    message's answers as `POST /v1/calls` returns them (the next message, ready to append); `strict_nulls`: the
    arguments go through `broker.translate.arguments.drop_strict_nulls` before they are checked."""

    name: str
    provider: str  # the name rule of `broker.translate.names` its function names follow
    recognize: Recognize
    read: Read
    answer: Callable[[ToolCall, Rendered], dict[str, Any]]
    reply: Callable[[list[dict[str, Any]]], dict[str, Any]]
    strict_nulls: bool = False  # its tools are offered in OpenAI strict form: drop the nulls it made a model send


def dicts(value: Any) -> list[dict[str, Any]]:
    """`value` if it is a list of JSON objects, else []."""
    return value if isinstance(value, list) and all(isinstance(i, dict) for i in value) else []
