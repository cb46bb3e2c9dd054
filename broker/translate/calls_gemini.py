"""Gemini: `functionCall` parts in, `functionResponse` parts out.

Read from a GenerateContentResponse (its first candidate), a Content (`parts`), a list of parts, or a list of
FunctionCall objects (`{"name", "args", "id"?}`); `args` is an object. The answer is a part
`{"functionResponse": {"name", "response", "id"?, "parts"?}}` (`google-genai` 3.6.1 `FunctionResponse`): the
name is the one the model used, the id is echoed when the call had one (Gemini 3 and Vertex AI send ids), and
`response` is the result's `structuredContent` object when there is one, else `{"output": text}`, or
`{"error": text}` on any error — the keys the Gemini docs name. Images, audio and files go in the response's
own `parts` as `inlineData` (multimodal function responses); Gemini reads them, where the other APIs describe.
"""

from __future__ import annotations

from typing import Any

from broker.translate.toolcalls import CallFormat, Rendered, ShapeError, ToolCall, dicts, located, named


def _parts(body: Any) -> list[dict[str, Any]] | None:
    if isinstance(body, dict) and isinstance(body.get("candidates"), list):
        candidates = dicts(body["candidates"])
        content = candidates[0].get("content") if candidates else None
        return dicts(content.get("parts")) if isinstance(content, dict) else None
    if isinstance(body, dict) and isinstance(body.get("parts"), list):
        return dicts(body["parts"])
    items = dicts(body)
    if items and all("name" in i and "args" in i for i in items):
        return [{"functionCall": i} for i in items]
    return items if any("functionCall" in i for i in items) else None


def _calls(parts: list[dict[str, Any]]) -> list[ToolCall]:
    calls = []
    for part in parts:
        function_call = part.get("functionCall", part.get("function_call"))
        if function_call is None:
            continue
        if not isinstance(function_call, dict):
            raise ShapeError("functionCall must be an object")
        calls.append(named(function_call, "name", function_call.get("id"), function_call.get("args")))
    return calls


recognize, read = located(_parts, "a GenerateContentResponse, a Content, or a list of functionCall parts", _calls)


def answer(call: ToolCall, rendered: Rendered) -> dict[str, Any]:
    if rendered.is_error:
        response: dict[str, Any] = {"error": rendered.text().removeprefix("Error: ")}
    elif rendered.structured is not None:
        response = rendered.structured
    else:
        response = {"output": rendered.text()}
    function_response: dict[str, Any] = {"name": call.name, "response": response}
    if call.call_id:
        function_response["id"] = call.call_id
    media = [{"inlineData": {"mimeType": p.mime, "data": p.data}} for p in rendered.media() if p.data]
    if media:
        function_response["parts"] = media
    return {"functionResponse": function_response}


FORMAT = CallFormat("gemini", "gemini", recognize, read, answer,
                    lambda answers: {"content": {"role": "user", "parts": answers}})
