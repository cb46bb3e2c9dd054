"""OpenAI Responses: `function_call` output items in, `function_call_output` input items out.

Read from a Response (its `output`) or a list of output items; items other than `function_call` (messages,
reasoning) are passed over. `arguments` is a JSON string as in Chat Completions. The output is the text
when the result is text only, else a list of `input_text`, `input_image` (a data URL) and `input_file`
(a data URL) parts, which the Responses API takes in a function call's output (`openai` 3.63.0
`FunctionCallOutput.output`); audio is described in text (no input part takes it there).
"""

from __future__ import annotations

from typing import Any

from broker.translate.toolcalls import CallFormat, Piece, Rendered, ToolCall, dicts, located, named

MEDIA_NOTE = "a function_call_output takes text, images and files"


def _items(body: Any) -> list[dict[str, Any]] | None:
    if isinstance(body, dict) and isinstance(body.get("output"), list):
        return dicts(body["output"])
    items = dicts(body)
    return items if any(i.get("type") == "function_call" for i in items) else None


recognize, read = located(
    _items, "a Response or a list of output items with function_call items",
    lambda items: [named(i, "name", i.get("call_id"), i.get("arguments")) for i in items
                   if i.get("type") == "function_call"])


def _part(piece: Piece) -> dict[str, Any]:
    url = f"data:{piece.mime};base64,{piece.data}"
    if piece.kind == "text":
        return {"type": "input_text", "text": piece.text}
    if piece.kind == "image":
        return {"type": "input_image", "image_url": url}
    if piece.kind == "file":
        return {"type": "input_file", "file_data": url, "filename": piece.uri.rsplit("/", 1)[-1] or "file"}
    return {"type": "input_text", "text": piece.describe(MEDIA_NOTE)}


def answer(call: ToolCall, rendered: Rendered) -> dict[str, Any]:
    media = [p for p in rendered.media() if p.kind in ("image", "file")]
    if not media:
        output: Any = rendered.text(MEDIA_NOTE)
    else:
        text = Rendered(rendered.is_error, [p for p in rendered.pieces if p.kind not in ("image", "file")],
                        rendered.structured).text(MEDIA_NOTE)
        output = ([{"type": "input_text", "text": text}] if text else []) + [_part(p) for p in media]
    return {"type": "function_call_output", "call_id": call.call_id or "", "output": output}


FORMAT = CallFormat("openai-responses", "openai-responses", recognize, read, answer,
                    lambda answers: {"input": answers}, strict_nulls=True)
