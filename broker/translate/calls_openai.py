"""OpenAI Chat Completions: `tool_calls` in, `{"role": "tool"}` messages out.

Read from a chat completion (its first choice), an assistant message, or its `tool_calls` list; each call's
`function.arguments` is a JSON string (a model can write one that does not parse: that call is answered with
the error, the others run). A tool message's content is text only (`ChatCompletionToolMessageParam` in
`openai` 3.63.0 takes a string or text parts), so text parts are joined, images and other media are described
in a line of text instead of inlined (a base64 data URL read as text costs ~1.3 tokens a byte and the model
cannot see it), and a tool error is marked with "Error: " since the message has no error flag.
"""

from __future__ import annotations

from typing import Any

from broker.translate.toolcalls import CallFormat, Rendered, ShapeError, ToolCall, dicts, named

MEDIA_NOTE = "a Chat Completions tool message carries text only"


def _is_tool_calls(value: Any) -> bool:
    items = dicts(value)
    return bool(items) and all(isinstance(i.get("function"), dict) for i in items)


def _message(body: Any) -> dict[str, Any] | None:
    """The assistant message of a chat completion (first choice) or the message itself."""
    if isinstance(body, dict) and isinstance(body.get("choices"), list):
        choices = dicts(body["choices"])
        return choices[0].get("message") if choices and isinstance(choices[0].get("message"), dict) else None
    if isinstance(body, dict) and ("tool_calls" in body or (body.get("role") == "assistant"
                                                          and not isinstance(body.get("content"), list))):
        return body
    return None


def recognize(body: Any) -> bool:
    return _is_tool_calls(body) or _message(body) is not None


def read(body: Any) -> list[ToolCall]:
    if isinstance(body, list):
        items = body
    else:
        message = _message(body)
        if message is None:
            raise ShapeError("not a chat completion, an assistant message or a tool_calls list")
        items = message.get("tool_calls") or []
    if not isinstance(items, list):
        raise ShapeError("tool_calls must be a list")
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("function"), dict):
            raise ShapeError("each tool call must be an object with a 'function' object")
        function = item["function"]
        calls.append(named(function, "name", item.get("id"), function.get("arguments")))
    return calls


def answer(call: ToolCall, rendered: Rendered) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.call_id or "", "content": rendered.text(MEDIA_NOTE)}


FORMAT = CallFormat("openai", "openai", recognize, read, answer, lambda answers: {"messages": answers},
                    strict_nulls=True)
