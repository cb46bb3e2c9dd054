"""Batch files of model outputs: every tool call in them, as one broker batch, answered per call.

Sources (`POST /v1/batches?from=<source>`, `python -m broker batch --from <source>`):

    openai-batch      an OpenAI Batch API output file: `{"id", "custom_id", "response": {"status_code", "body"},
                      "error"}` a line, the body a chat completion (or a Response, from /v1/responses)
    anthropic-batch   an Anthropic Message Batches results file: `{"custom_id", "result": {"type": "succeeded",
                      "message"}}` a line
    openai, openai-responses, anthropic, gemini
                      one model output of that API a line (JSON Lines), or a single one (a JSON body)

A line that holds no tool call, errored, expired or was cancelled at the provider, or is not JSON is skipped
and reported with its reason; a tool call that cannot run is kept and answered as a tool error, so each
request of the file gets one answer per tool call, which is what its next request needs. Each result line is
`{"custom_id", "line", "tool_call_id", "name", "format", "is_error", "answer", "seq", "index"}`, `answer` in the
provider's shape (`broker.translate.call_formats`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker import wire
from broker.translate.call_formats import CALL_FORMATS, UnknownShape, find_format
from broker.translate.toolcalls import CallFormat, ShapeError, ToolCall, render

MAX_SKIPPED_LISTED = 100  # skipped lines named in the submit answer (`skipped_count` says how many in all)
YIELD_EVERY = 200  # lines read between two cooperative yields


class Skip(Exception):
    """A line with nothing to run, and why."""


@dataclass
class FileCalls:
    """What a batch file holds: its tool calls in file order, and the lines skipped."""

    source: str
    calls: list[ToolCall] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    skipped_count: int = 0

    def skip(self, line: int, custom_id: Any, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            entry: dict[str, Any] = {"line": line, "reason": reason}
            if isinstance(custom_id, str):
                entry["custom_id"] = custom_id
            self.skipped.append(entry)


def _openai_batch_line(obj: dict[str, Any]) -> tuple[Any, CallFormat]:
    """The body of a successful request of an OpenAI Batch API output line."""
    error = obj.get("error")
    if error:
        detail = error.get("message", error) if isinstance(error, dict) else error
        raise Skip(f"the request errored at OpenAI: {detail}")
    response = obj.get("response")
    if not isinstance(response, dict) or not isinstance(response.get("body"), dict):
        raise Skip("no response body")
    if response.get("status_code") != 200:
        raise Skip(f"the request failed at OpenAI with status {response.get('status_code')}")
    body = response["body"]
    return body, CALL_FORMATS["openai-responses" if "output" in body else "openai"]


def _anthropic_batch_line(obj: dict[str, Any]) -> tuple[Any, CallFormat]:
    """The message of a succeeded request of an Anthropic Message Batches results line."""
    result = obj.get("result")
    kind = result.get("type") if isinstance(result, dict) else None
    if kind != "succeeded":
        error = result.get("error") if isinstance(result, dict) else None
        detail = f": {error.get('error', error)}" if isinstance(error, dict) else ""
        raise Skip(f"the request {kind or 'has no result'} at Anthropic{detail}")
    return result.get("message"), CALL_FORMATS["anthropic"]


def _per_line(shape: CallFormat) -> Callable[[dict[str, Any]], tuple[Any, CallFormat]]:
    return lambda obj: (obj, shape)


BATCH_FILES: dict[str, Callable[[dict[str, Any]], tuple[Any, CallFormat]]] = {
    "openai-batch": _openai_batch_line,
    "anthropic-batch": _anthropic_batch_line,
}
SOURCES = (*BATCH_FILES, *CALL_FORMATS)


def detect_source(first: Any) -> str | None:
    """The source of a JSON Lines body from its first line; None when it is a native call (or nothing known)."""
    if isinstance(first, dict) and "custom_id" in first:
        if "response" in first or ("error" in first and "result" not in first):
            return "openai-batch"
        if "result" in first:
            return "anthropic-batch"
    try:
        shape = find_format(first)
    except UnknownShape:
        return None
    return shape.name if shape is not None else None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _line_reader(source: str) -> Callable[[Any], tuple[Any, CallFormat]]:
    if source in BATCH_FILES:
        return BATCH_FILES[source]
    if source in CALL_FORMATS:
        return _per_line(CALL_FORMATS[source])
    raise UnknownShape(f"unknown batch source {source!r}; use one of: {', '.join(SOURCES)}")


def read_file(lines: list[tuple[int, str]], source: str, max_calls: int,
              cooperate: Callable[[], None] = lambda: None) -> FileCalls:
    """Every tool call of the numbered lines; raises `UnknownShape` for an unknown source and `OverflowError`
    when there are more than `max_calls` tool calls."""
    reader = _line_reader(source)
    found = FileCalls(source)
    for i, (number, text) in enumerate(lines):
        if i and i % YIELD_EVERY == 0:
            cooperate()
        try:
            obj = wire.loads(text)
        except (ValueError, RecursionError) as err:
            found.skip(number, None, f"not valid JSON: {err}")
            continue
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        try:
            if source in BATCH_FILES and not isinstance(obj, dict):
                raise Skip("a line must be a JSON object")
            body, shape = reader(obj)
            calls = shape.read(body)
        except (Skip, ShapeError) as err:
            reason = str(err) if isinstance(err, Skip) else f"not {_article(source)} {source} line: {err}"
            found.skip(number, custom_id, reason)
            continue
        if not calls:
            found.skip(number, custom_id, "no tool calls")
            continue
        for call in calls:
            call.custom_id = custom_id if isinstance(custom_id, str) else None
            call.line, call.format = number, shape.name
        found.calls += calls
        if len(found.calls) > max_calls:
            raise OverflowError(f"the file has more than {max_calls} tool calls (MCP_BROKER_MAX_BATCH_CALLS)")
    return found


# ---------------------------------------------------------------- answers
def call_context(call: ToolCall) -> str:
    """What the results stream needs to answer a call, stored per call index in `keys.batch_calls`."""
    return json.dumps([call.format, call.custom_id, call.line, call.call_id, call.name], separators=(",", ":"))


def result_line(outcome: dict[str, Any], context: str | None) -> dict[str, Any]:
    """A worker's batch outcome line (`seq`, `index`, `result`|`error`) as the provider's answer to the call."""
    if context is None:  # not one of ours (cannot happen unless the hash expired first): pass it on as it is
        return outcome
    format_name, custom_id, line, call_id, name = json.loads(context)
    shape = CALL_FORMATS[format_name]
    call = ToolCall(call_id, name, custom_id=custom_id, line=line, format=format_name)
    rendered = render(outcome)
    answer = {"custom_id": custom_id, "line": line, "tool_call_id": call_id, "name": name, "format": format_name,
              "is_error": rendered.is_error, "answer": shape.answer(call, rendered)}
    if outcome.get("cancelled"):
        answer["cancelled"] = True
    return {**answer, "seq": outcome.get("seq"), "index": outcome.get("index")}
